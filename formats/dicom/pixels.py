"""Pixel values of DICOM images in real-world units.

Decoding: native and compressed transfer syntaxes (JPEG lossless, JPEG-LS, JPEG 2000, RLE) with
pydicom's pixel handlers and the pylibjpeg / pyjpegls plugins; a syntax with no decoder installed
is an error that names the file, the transfer syntax and the missing package.

Scaling, per image (the decision and its reason are in the README):

- weighted images: ``RescaleSlope * stored + RescaleIntercept`` (the standard modality LUT);
  for Philips images with the private scale slope ``SS`` (2005,100E) the Philips floating-point
  value ``(stored * RS + RI) / (RS * SS)`` instead. Philips rescales every image of a series with
  its own RS and SS for display; only the floating-point value is proportional to the MR signal
  across the images of a series, and a T1 or T2 fit compares exactly those images. (It is what
  dcm2niix calls "Philips precise float scaling", its default.)
- the scanner's maps (T1 MAP, T2 MAP): ``RescaleSlope * stored + RescaleIntercept`` only: the map
  is stored so that its rescaled value is the quantity in ms, as the scanner displays it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder

from formats.dicom.timing import float_of

__all__ = ["PHILIPS_SCALE_SLOPE", "PixelError", "Scaling", "read_pixels", "scaling_of"]

PHILIPS_SCALE_SLOPE = (0x2005, 0x100E)


class PixelError(ValueError):
    """An image's pixel data cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class Scaling:
    """``value = stored * slope + intercept``; ``rule`` names the rule used."""

    slope: float
    intercept: float
    rule: str


def scaling_of(header: Dataset, vendor: str, is_map: bool) -> Scaling:
    """The stored -> real-world mapping of one image (module docstring).

    Example:
        >>> from pydicom import Dataset
        >>> ds = Dataset()
        >>> ds.RescaleSlope, ds.RescaleIntercept = "2.0", "0"
        >>> ds.add_new((0x2005, 0x100E), "FL", 0.5)
        >>> scaling_of(ds, "philips", is_map=False)  # (stored * 2 + 0) / (2 * 0.5)
        Scaling(slope=2.0, intercept=0.0, rule='Philips floating point (2005,100E)')
        >>> scaling_of(ds, "philips", is_map=True).slope
        2.0
    """
    slope = float_of(header, "RescaleSlope")
    intercept = float_of(header, "RescaleIntercept")
    slope = 1.0 if slope is None or slope == 0 else slope
    intercept = 0.0 if intercept is None else intercept
    scale_slope = float_of(header, PHILIPS_SCALE_SLOPE) if vendor == "philips" else None
    if scale_slope and not is_map:
        return Scaling(
            slope=1.0 / scale_slope,
            intercept=intercept / (slope * scale_slope),
            rule="Philips floating point (2005,100E)",
        )
    rule = "RescaleSlope/RescaleIntercept" if "RescaleSlope" in header else "stored values"
    return Scaling(slope=slope, intercept=intercept, rule=rule)


def _check_decoder(path: Path, dataset: Dataset) -> None:
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise PixelError(
            f"{path}: no decoder for transfer syntax {syntax} ({syntax.name})"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise PixelError(
            f"{path}: no decoder installed for {syntax.name} ({syntax}); install one of: {missing}"
        )


def read_pixels(path: str | Path, header: Dataset, vendor: str, is_map: bool) -> np.ndarray:
    """float32 [rows, columns] real-world values of one single-frame grey-scale image.

    Args:
        path: the file.
        header: its header (from the folder scan), for the matrix size and the scaling.
        vendor: :func:`formats.dicom.timing.vendor_of` of the series.
        is_map: the image is one of the scanner's maps (scaling rule of the module docstring).

    Raises:
        PixelError: unreadable, truncated or undecodable pixel data, a multi-frame or colour
            image, or a matrix other than the header's ``Rows`` x ``Columns``.
    """
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure: damaged file
        raise PixelError(f"{path}: unreadable DICOM file ({exc})") from exc
    if "PixelData" not in dataset:
        raise PixelError(f"{path}: no pixel data (truncated file?)")
    _check_decoder(path, dataset)
    try:
        stored = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on bad data
        raise PixelError(f"{path}: pixel data cannot be decoded ({exc})") from exc
    shape = (int(header.Rows), int(header.Columns))
    if stored.shape != shape:
        raise PixelError(
            f"{path}: pixel array of shape {stored.shape}; expected one grey-scale frame of "
            f"{shape[0]} x {shape[1]}"
        )
    scaling = scaling_of(dataset, vendor, is_map)
    values = stored.astype(np.float64) * scaling.slope + scaling.intercept
    return values.astype(np.float32)
