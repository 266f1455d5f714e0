"""Load an exported model artifact and verify it: the scanner-side loader (docs/deployment.md).

The file format (a TorchScript archive with ``extra/metadata.json`` and ``weights_sha256``) is
:mod:`deployment.artifact_file`; a deployed name resolves to a file through
:mod:`deployment.artifact_index`. :func:`load_artifact` recomputes ``weights_sha256`` and refuses
a file whose records were changed, and a truncated file (no zip directory, or a record cut short)
as well.

Hardware: the metadata records the exporting CPU (``exporting_cpu``) and the CPU features the
model needs to run as exported (``cpu_requirements``: ``avx512_bf16`` for a bf16 model, which is
emulated and many times slower elsewhere; see :mod:`deployment.cpu_info`). :func:`load_artifact`
refuses a host that lacks one, naming the feature.

What the model's output means for a task (the AIF threshold rule and preprocessing, the
myocardium resize recipe) is checked by that task's pipeline in ``exports/``; this module knows
the file format only.

Imports torch and NumPy only (no Lightning, Hydra or W&B).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployment import cpu_info
from deployment.artifact_file import (
    AIF_TASK,
    FORMAT,
    METADATA_KEYS,
    METADATA_NAME,
    MYOCARDIUM_TASK,
    ArtifactError,
    mapped_file,
    metadata_from_archive,
    quiet_torchscript_deprecation,
    read_metadata,
    weights_sha256,
)
from deployment.artifact_index import resolve_artifact

__all__ = [
    "AIF_TASK",
    "FORMAT",
    "METADATA_KEYS",
    "METADATA_NAME",
    "MYOCARDIUM_TASK",
    "Artifact",
    "ArtifactError",
    "LoadedModel",
    "load_artifact",
    "quiet_torchscript_deprecation",
    "read_metadata",
    "weights_sha256",
]


@dataclass(frozen=True)
class LoadedModel:
    """What every scanner-side backend of an artifact shares: the file, its metadata and the
    check of the input (:class:`Artifact` for TorchScript, ``deployment.onnx_backend.OnnxModel``).
    """

    path: Path
    metadata: dict[str, Any]

    @property
    def n_classes(self) -> int:
        """2 (2CS: background/LV, one sigmoid channel) or 3 (3CS: softmax background/LV/RV)."""
        return int(self.metadata["n_classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(n_frames, ro_size, e1_size)`` of one preprocessed series."""
        return tuple(int(n) for n in self.metadata["input_shape"][1:])  # type: ignore[return-value]

    def batch_of(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, bool]:
        """float32 C-contiguous [B, n_frames, ro, e1], and whether one series [n_frames, ro, e1]
        was given; any other shape is refused with the file named."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.path.name} expects [B, {', '.join(map(str, self.input_shape))}], "
                f"got shape {tuple(np.shape(images))}"
            )
        return x, single


@dataclass(frozen=True)
class Artifact(LoadedModel):
    """A loaded, verified artifact: keep it and call :meth:`probabilities` as often as needed.

    Attributes:
        path: the file it was loaded from.
        metadata: the parsed ``metadata.json`` (keys in :data:`METADATA_KEYS`).
        module: the TorchScript module (eval mode, CPU), resident in memory.
    """

    module: torch.jit.ScriptModule

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Model output for preprocessed series.

        Args:
            images: float [B, n_frames, ro_size, e1_size] or one series [n_frames, ro, e1].

        Returns:
            float32 [B, C, ro_size, e1_size] (or [C, ro, e1] for one series); C = 1 (2CS, P(LV))
            or 3 (3CS, P(background), P(LV), P(RV)).
        """
        batch, single = self.batch_of(images)
        x = torch.from_numpy(batch)
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
    (:func:`deployment.artifact_index.resolve_artifact`).

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
    path = resolve_artifact(path, artifacts_dir)
    with mapped_file(path) as data:
        metadata = metadata_from_archive(data, path)
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
