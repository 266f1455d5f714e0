"""The artifact file format: one TorchScript archive with its metadata inside (docs/deployment.md).

File format: a TorchScript archive (a zip, written by ``torch.jit.save``) whose module maps a
preprocessed batch float32 ``[B, n_frames, ro_size, e1_size]`` (default ``[B, 64, 64, 48]``) to
probabilities float32 ``[B, C, ro_size, e1_size]``: C = 1, ``sigmoid`` = P(LV) for 2CS; C = 3,
``softmax`` over background/LV/RV for 3CS. The record ``extra/metadata.json`` (``_extra_files``)
holds the metadata (keys in :data:`METADATA_KEYS`): task, classes, input shape, preprocessing
parameters, threshold rule, torch version, the resolved training config, test metrics and
``weights_sha256``.

``weights_sha256`` is the SHA-256 of every record of the archive except ``extra/`` and
``.data/serialization_id`` (tensor data, constants and the TorchScript code that uses them), each
as ``name\\0size\\0bytes`` in name order. The metadata cannot hash itself, and the serialization
id is a random number ``torch.jit.save`` draws anew for every save; everything that decides the
model's output is covered.

This module reads the file (metadata, hash) without loading the model; :mod:`deployment.artifact`
loads and verifies it, :mod:`deployment.artifact_index` lists and deploys versions. Imports torch
nothing but the standard library: no torch, Lightning, Hydra or W&B.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import struct
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "AIF_TASK",
    "FORMAT",
    "METADATA_KEYS",
    "METADATA_NAME",
    "MYOCARDIUM_TASK",
    "ArtifactError",
    "quiet_torchscript_deprecation",
    "read_metadata",
    "weights_sha256",
]

AIF_TASK = "aif_lv_detection"
"""``metadata["task"]`` of the AIF LV detection models."""

MYOCARDIUM_TASK = "myocardium_segmentation"
"""``metadata["task"]`` of the myocardium segmentation models."""

FORMAT = "inline-cmr/torchscript-artifact/1"
"""Value of ``metadata["format"]``; a loader refuses other formats."""

METADATA_NAME = "metadata.json"
"""Name of the metadata record (``_extra_files`` key; stored as ``<archive>/extra/<name>``)."""

METADATA_KEYS = (
    "format",
    "task",
    "model",
    "classes",
    "n_classes",
    "output",
    "input_shape",
    "preprocessing",
    "threshold_rule",
    "torch_version",
    "config",
    "test_metrics",
    "weights_sha256",
    "source_checkpoint",
    "parity_max_abs_diff",
    "created_utc",
)
"""Keys every artifact's metadata has (values may be ``null`` where noted in the README)."""


# torch 2.13 marks every torch.jit entry point as deprecated ("`torch.jit.script` is deprecated.
# Please switch to ..."). These are the only warnings silenced, by category and message.
_JIT_DEPRECATION = r"`torch\.jit\.(script|freeze|save|load|trace|trace_method)` is deprecated"


@contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence exactly the DeprecationWarnings torch 2.13 emits from ``torch.jit`` calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        yield


class ArtifactError(ValueError):
    """An artifact file is missing, truncated, changed or not an artifact; names the file."""


def _records(archive: zipfile.ZipFile, path: Any) -> dict[str, zipfile.ZipInfo]:
    """Archive records by name relative to the archive's root folder."""
    records = {}
    for info in archive.infolist():
        root, sep, name = info.filename.partition("/")
        if not sep:
            raise ArtifactError(f"{path}: not a TorchScript archive (record {info.filename!r})")
        records[name] = info
    return records


def _open_archive(data: bytes | mmap.mmap, path: Any) -> zipfile.ZipFile:
    try:
        # A memory map is the file at `path`: zipfile reads its directory from the file itself.
        return zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else path)
    except zipfile.BadZipFile as exc:
        raise ArtifactError(
            f"{path}: not a readable TorchScript archive ({exc}); the file is truncated, "
            "damaged or not an exported model"
        ) from exc


def _read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Any) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArtifactError(
            f"{path}: record {info.filename!r} is damaged ({exc}); the file was changed or "
            "truncated after export"
        ) from exc


_UNHASHED = frozenset({".data/serialization_id"})  # random per torch.jit.save call


def _record_span(data: bytes | mmap.mmap, info: zipfile.ZipInfo, path: Any) -> tuple[int, int]:
    """``(start, end)`` of an uncompressed record's bytes in the archive file."""
    header = data[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ArtifactError(f"{path}: record {info.filename!r} is damaged (bad local header)")
    name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.file_size > len(data):
        raise ArtifactError(f"{path}: record {info.filename!r} is cut short; the file is truncated")
    return start, start + info.file_size


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header (30 bytes)


def weights_sha256(data: bytes | mmap.mmap, path: Any = "<bytes>") -> str:
    """SHA-256 (hex) of every record of a TorchScript archive except ``extra/`` (module docstring).

    Records are hashed in place (views of ``data``, no copies or CRC passes: the SHA-256 covers
    their integrity); ~15 ms for the 26 MB default model with the CPU's SHA instructions.

    Args:
        data: the whole archive file, as bytes or a read-only memory map.
        path: file name used in error messages.

    Raises:
        ArtifactError: not a zip archive, or a record lies outside the file.
    """
    with _open_archive(data, path) as archive:
        records = sorted(_records(archive, path).items())
        digest = hashlib.sha256()
        with memoryview(data) as view:
            for name, info in records:
                if name.startswith("extra/") or name in _UNHASHED:
                    continue
                if info.compress_type == zipfile.ZIP_STORED:
                    start, end = _record_span(data, info, path)
                    record: bytes | memoryview = view[start:end]
                else:
                    record = _read_record(archive, info, path)
                digest.update(f"{name}\0{len(record)}\0".encode())
                digest.update(record)
                del record  # release the view before the map can be closed
    return digest.hexdigest()


def metadata_from_archive(data: bytes, path: Any) -> dict[str, Any]:
    with _open_archive(data, path) as archive:
        info = _records(archive, path).get(f"extra/{METADATA_NAME}")
        if info is None:
            raise ArtifactError(f"{path}: no extra/{METADATA_NAME} record; not an exported model")
        text = _read_record(archive, info, path)
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: {METADATA_NAME} is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ArtifactError(f"{path}: metadata format {found!r}, expected {FORMAT!r}")
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ArtifactError(f"{path}: metadata lacks {missing}")
    return metadata


@contextmanager
def mapped_file(path: Path) -> Iterator[mmap.mmap]:
    """The file as a read-only memory map (no copy: ~13 ms less than reading 26 MB)."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise ArtifactError(f"{path}: the file is empty; not an exported model")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an artifact file, without loading the model or checking the hash."""
    path = Path(path)
    with mapped_file(path) as data:
        return metadata_from_archive(data, path)
