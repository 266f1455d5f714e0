"""A small JPEG lossless encoder (ITU T.81 process 14, first-order prediction, selection value 1)
for writing test DICOM files in transfer syntax 1.2.840.10008.1.2.4.70, the one scanners and
PACS use most for lossless export and which pydicom can decode but not encode.

One component, 16-bit samples, point transform 0, one Huffman table in which the 17 difference
categories (SSSS 0..16) all get a 5-bit code; vectorised with NumPy (no Python loop per pixel).
"""

from __future__ import annotations

import struct

import numpy as np

PRECISION = 16
CODE_BITS = 5


def _marker(code: int, payload: bytes) -> bytes:
    return struct.pack(">HH", code, len(payload) + 2) + payload


def _predicted(image: np.ndarray) -> np.ndarray:
    """Selection value 1: left neighbour; first column: the pixel above; first pixel: 2^(P-1)."""
    x = image.astype(np.int64)
    prediction = np.empty_like(x)
    prediction[:, 1:] = x[:, :-1]
    prediction[1:, 0] = x[:-1, 0]
    prediction[0, 0] = 1 << (PRECISION - 1)
    return prediction


def _entropy_coded(image: np.ndarray) -> bytes:
    diff = (image.astype(np.int64) - _predicted(image)) % (1 << PRECISION)
    diff = np.where(diff >= 1 << (PRECISION - 1), diff - (1 << PRECISION), diff).ravel()
    magnitude = np.abs(diff)
    category = np.zeros(diff.size, np.int64)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    category[diff == -(1 << (PRECISION - 1))] = 16  # -32768: category 16, no extra bits
    extra_bits = np.where(category == 16, 0, category)
    extra = np.where(diff >= 0, diff, diff + (1 << extra_bits) - 1) & ((1 << extra_bits) - 1)
    values = (category << extra_bits) | extra  # code of category k is k itself (5 bits)
    lengths = CODE_BITS + extra_bits
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = np.repeat(np.arange(values.size), lengths)
    offset = np.arange(int(lengths.sum())) - starts[owner]
    bits = (values[owner] >> (lengths[owner] - 1 - offset)) & 1
    bits = np.concatenate([bits, np.ones(-bits.size % 8, np.int64)]).astype(np.uint8)
    data = np.packbits(bits)
    stuffed = np.insert(data, np.flatnonzero(data == 0xFF) + 1, 0)
    return stuffed.tobytes()


def encode_jpeg_lossless(image: np.ndarray) -> bytes:
    """One JPEG lossless (SV1) codestream of a uint16 [rows, columns] image."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"expected uint16 [rows, columns]; found {image.dtype} {image.shape}")
    rows, columns = image.shape
    counts = bytes(CODE_BITS - 1) + bytes([17]) + bytes(16 - CODE_BITS)
    huffman = bytes([0x00]) + counts + bytes(range(17))
    frame = struct.pack(">BHHB", PRECISION, rows, columns, 1) + bytes([1, 0x11, 0])
    scan = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component: table 0; Ss = predictor 1; Se; Ah/Al
    return (
        b"\xff\xd8"
        + _marker(0xFFC3, frame)
        + _marker(0xFFC4, huffman)
        + _marker(0xFFDA, scan)
        + _entropy_coded(image)
        + b"\xff\xd9"
    )
