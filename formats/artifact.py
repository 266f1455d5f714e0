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

Hardware: the metadata records the exporting CPU (``exporting_cpu``) and the CPU features the
model needs to run as exported (``cpu_requirements``: ``avx512_bf16`` for a bf16 model, which is
emulated and many times slower elsewhere; see :mod:`formats.cpu_info`). :func:`load_artifact`
refuses a host that lacks one, naming the feature.

What the model's output means for a task (the AIF threshold rule and preprocessing, the
myocardium resize recipe) is checked by that task's pipeline in ``exports/``; this module knows
the file format only.

Imports torch and NumPy only (no Lightning, Hydra or W&B): this is the scanner-side loader.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from formats import cpu_info

__all__ = [
    "AIF_TASK",
    "FORMAT",
    "METADATA_KEYS",
    "METADATA_NAME",
    "MYOCARDIUM_TASK",
    "Artifact",
    "ArtifactError",
    "load_artifact",
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


@contextmanager
def _mapped_file(path: Path) -> Iterator[mmap.mmap]:
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
    with _mapped_file(path) as data:
        return _metadata_from_archive(data, path)


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact: keep it and call :meth:`probabilities` as often as needed.

    Attributes:
        path: the file it was loaded from.
        module: the TorchScript module (eval mode, CPU), resident in memory.
        metadata: the parsed ``metadata.json`` (keys in :data:`METADATA_KEYS`).
    """

    path: Path
    module: torch.jit.ScriptModule
    metadata: dict[str, Any]

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


def _use_quantized_engine(metadata: dict[str, Any], path: Path) -> None:
    """Select the int8 backend an artifact was quantised for (no-op for float artifacts)."""
    backend = (metadata.get("quantization") or {}).get("backend")
    if backend is None:
        return
    if backend not in torch.backends.quantized.supported_engines:
        raise ArtifactError(
            f"{path}: int8 model for the {backend!r} quantised engine, which this torch lacks "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    torch.backends.quantized.engine = backend


def _check_cpu(metadata: dict[str, Any], path: Path) -> None:
    """Refuse a host that lacks a CPU feature the artifact needs (``cpu_requirements``)."""
    lacking = cpu_info.missing_features(metadata.get("cpu_requirements") or [])
    if lacking:
        exported_on = (metadata.get("exporting_cpu") or {}).get("model", "an unrecorded CPU")
        host = cpu_info.host_cpu().describe()
        raise ArtifactError(
            f"{path}: this {metadata.get('precision', '')} model needs CPU feature(s) {lacking} "
            f"(exported on {exported_on}), which this host lacks: {host}. "
            "It would run emulated, many times slower; deploy an fp32 or int8 export instead "
            "(export.precision=fp32 | int8)"
        )


def load_artifact(
    path: str | os.PathLike,
    expected_task: str | None = None,
    check_cpu: bool = True,
    artifacts_dir: str | os.PathLike | None = None,
) -> Artifact:
    """Read an artifact file, verify it and load its model (once; keep the returned object).

    ``path`` is a file, or a deployed name such as ``"aif_resunet3cs"`` (``"aif_resunet3cs@2"``
    for one version): a name resolves through ``index.json`` of ``artifacts_dir`` (default
    ``$INLINE_CMR_ARTIFACTS`` or the repository's ``artifacts/``) to the promoted file
    (:func:`formats.artifact_index.resolve_artifact`).

    Checks, in order: the file exists and is a readable archive (a truncated file fails here),
    the metadata is complete and in :data:`FORMAT`, the task matches ``expected_task`` when given,
    this CPU has the features in ``cpu_requirements`` (unless ``check_cpu=False``: to inspect or
    re-export a model on another machine), and the recomputed ``weights_sha256`` equals the
    stored one (a changed file fails here). Only then does
    TorchScript load the model (CPU, eval mode) from the path. The file is memory-mapped and its
    records hashed in place (~20 ms for the 26 MB default model); TorchScript's C++ reader takes
    ~40 ms (reading from an in-memory buffer instead is slower, ~70 ms; hashing in a thread while
    it loads was slower too: the two contend for the GIL). The check guards against damage and
    edits of the file, not a writer replacing it between the two reads.

    An int8 artifact (metadata ``quantization``) sets ``torch.backends.quantized.engine`` to the
    backend it was quantised for before loading: the int8 kernels pack their weights for the
    engine in force when the file is read.

    Raises:
        ArtifactError: any failed check; the message names the file and what is wrong.
    """
    from formats.artifact_index import resolve_artifact  # it reads artifacts with this module

    path = resolve_artifact(path, artifacts_dir)
    with _mapped_file(path) as data:
        metadata = _metadata_from_archive(data, path)
        if expected_task is not None and metadata["task"] != expected_task:
            raise ArtifactError(f"{path}: task {metadata['task']!r}, expected {expected_task!r}")
        if check_cpu:
            _check_cpu(metadata, path)
        actual = weights_sha256(data, path)
    if actual != metadata["weights_sha256"]:
        raise ArtifactError(
            f"{path}: weights sha256 {actual} differs from the exported "
            f"{metadata['weights_sha256']}; the file was changed after export, refusing to load it"
        )
    _use_quantized_engine(metadata, path)
    try:
        with quiet_torchscript_deprecation():
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: TorchScript cannot load the model ({exc})") from exc
    module.eval()
    return Artifact(path=path, module=module, metadata=metadata)
