"""The exported model artifact: one TorchScript file with its metadata inside (DESIGN.md).

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
model's output is covered. :func:`load_artifact` recomputes it and refuses a file whose records were
changed, and a truncated file (no zip directory, or a record cut short) as well.

Imports torch and NumPy only (no Lightning, Hydra or W&B): this is the scanner-side loader.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantification.aif_preprocessing import AIFPreprocessing
from quantification.lv_mask import lv_mask_from_probability

__all__ = [
    "FORMAT",
    "METADATA_KEYS",
    "METADATA_NAME",
    "THRESHOLD_RULE",
    "Artifact",
    "ArtifactError",
    "load_artifact",
    "quiet_torchscript_deprecation",
    "read_metadata",
    "weights_sha256",
]

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


def _threshold_rule() -> dict[str, Any]:
    defaults = inspect.signature(lv_mask_from_probability).parameters
    return {
        "start": defaults["start"].default,
        "step": defaults["step"].default,
        "stop": defaults["stop"].default,
        "relative_to": "max of the LV probability over the LV candidates",
        "connectivity": 8,
        "lv_candidates": "pixels decided LV: argmax == LV (softmax) or p > 0.5 (sigmoid)",
        "until": "the mask p > t * max(p) is one connected blob",
        "fallback": "largest blob at the start threshold",
        "rv": "largest 8-connected blob of argmax == RV outside the LV mask (3CS)",
        "implementation": "quantification.lv_mask.masks_from_probabilities",
    }


THRESHOLD_RULE: dict[str, Any] = _threshold_rule()
"""Post-processing of SPEC A6 as implemented by ``quantification.lv_mask`` (read from the code's
defaults, so metadata and implementation cannot drift). An artifact exported with another rule is
refused by :func:`load_artifact`."""

# torch 2.13 marks every torch.jit entry point as deprecated ("`torch.jit.script` is deprecated.
# Please switch to ..."). These are the only warnings silenced, by category and message.
_JIT_DEPRECATION = r"`torch\.jit\.(script|freeze|save|load|trace)` is deprecated"


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


def _open_archive(data: bytes, path: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
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


def weights_sha256(data: bytes, path: Any = "<bytes>") -> str:
    """SHA-256 (hex) of every record of a TorchScript archive except ``extra/`` (module docstring).

    Args:
        data: the whole archive file.
        path: file name used in error messages.

    Raises:
        ArtifactError: not a zip archive, or a record fails its CRC check.
    """
    with _open_archive(data, path) as archive:
        digest = hashlib.sha256()
        for name, info in sorted(_records(archive, path).items()):
            if name.startswith("extra/") or name in _UNHASHED:
                continue
            record = _read_record(archive, info, path)
            digest.update(f"{name}\0{len(record)}\0".encode())
            digest.update(record)
        return digest.hexdigest()


def _metadata_from_archive(data: bytes, path: Any) -> dict[str, Any]:
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


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    return path.read_bytes()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an artifact file, without loading the model or checking the hash."""
    path = Path(path)
    return _metadata_from_archive(_read_file(path), path)


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact: keep it and call :meth:`probabilities` as often as needed.

    Attributes:
        path: the file it was loaded from.
        module: the TorchScript module (eval mode, CPU), resident in memory.
        metadata: the parsed ``metadata.json`` (keys in :data:`METADATA_KEYS`).
        preprocessing: the preprocessing parameters the model was trained with.
    """

    path: Path
    module: torch.jit.ScriptModule
    metadata: dict[str, Any]
    preprocessing: AIFPreprocessing = field(init=False)

    def __post_init__(self) -> None:
        params = AIFPreprocessing(**self.metadata["preprocessing"])
        object.__setattr__(self, "preprocessing", params)

    @property
    def n_classes(self) -> int:
        """2 (2CS: background/LV, one sigmoid channel) or 3 (3CS: softmax background/LV/RV)."""
        return int(self.metadata["n_classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(n_frames, ro_size, e1_size)`` of one preprocessed series."""
        return tuple(int(n) for n in self.metadata["input_shape"][1:])  # type: ignore[return-value]

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Model output for preprocessed series.

        Args:
            images: float [B, n_frames, ro_size, e1_size] or one series [n_frames, ro, e1].

        Returns:
            float32 [B, C, ro_size, e1_size] (or [C, ro, e1] for one series); C = 1 (2CS, P(LV))
            or 3 (3CS, P(background), P(LV), P(RV)).
        """
        x = torch.as_tensor(images, dtype=torch.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.path.name} expects [B, {', '.join(map(str, self.input_shape))}], "
                f"got shape {tuple(images.shape)}"
            )
        # The frozen graph is convolutions only: the graph executor's profiling runs and JIT
        # passes gain nothing at steady state but double the first calls (126 vs 66 ms measured).
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            out = self.module(x.contiguous()).numpy()
        return out[0] if single else out


def load_artifact(path: str | os.PathLike, expected_task: str | None = None) -> Artifact:
    """Read an artifact file, verify it and load its model (once; keep the returned object).

    Checks, in order: the file exists and is a readable archive (a truncated file fails here),
    the metadata is complete and in :data:`FORMAT`, every model record passes its CRC and the
    recomputed ``weights_sha256`` equals the stored one (a changed file fails here), the threshold
    rule is the one this runtime implements, and the task matches ``expected_task`` when given.
    Only then does TorchScript load the model (CPU, eval mode) from the path: its C++ reader
    takes ~42 ms for the 26 MB default model against ~70 ms from an in-memory buffer; the hash
    costs ~45 ms (read + SHA-256). The check guards against damage and edits of the file, not a
    writer replacing it between the two reads.

    Raises:
        ArtifactError: any failed check; the message names the file and what is wrong.
    """
    path = Path(path)
    data = _read_file(path)
    metadata = _metadata_from_archive(data, path)
    actual = weights_sha256(data, path)
    del data
    if actual != metadata["weights_sha256"]:
        raise ArtifactError(
            f"{path}: weights sha256 {actual} differs from the exported "
            f"{metadata['weights_sha256']}; the file was changed after export, refusing to load it"
        )
    if metadata["threshold_rule"] != THRESHOLD_RULE:
        raise ArtifactError(
            f"{path}: exported with threshold rule {metadata['threshold_rule']}, but this runtime "
            f"implements {THRESHOLD_RULE}"
        )
    if expected_task is not None and metadata["task"] != expected_task:
        raise ArtifactError(f"{path}: task {metadata['task']!r}, expected {expected_task!r}")
    try:
        with quiet_torchscript_deprecation():
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: TorchScript cannot load the model ({exc})") from exc
    module.eval()
    return Artifact(path=path, module=module, metadata=metadata)
