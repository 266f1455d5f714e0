"""The scanner-side inference backend of an artifact, picked by measurement on this CPU.

Candidates for one artifact ``NAME.ts`` (loaded and verified by
:func:`deployment.artifact.load_artifact`):

* ``torchscript``: the artifact itself;
* ``onnx-fp32``: ``NAME.onnx`` next to it (the exporter writes it with ``export.onnx=true``);
* ``onnx-int8``: ``NAME.int8.onnx`` next to it, int8 QDQ, written by :func:`quantize_onnx_int8`
  from ``NAME.onnx`` and calibration series.

An ONNX file carries the artifact's metadata in its ``metadata_props`` (key ``metadata.json``);
it is a candidate only if its ``weights_sha256`` and ``input_shape`` equal the verified
artifact's (it was exported from the same weights). Every candidate is then run on the same probe
series (:func:`bolus_probe`, a synthetic AIF series) and must agree with the TorchScript model:
max abs difference of the probabilities at most :data:`PARITY_ATOL` (fp32) or, for int8, the
class decided (argmax) equal on at least :data:`INT8_MIN_AGREEMENT` of the pixels. Of those that
pass, the one with the lowest median time per series wins. :class:`BackendChoice` says which was
used and why the others were not; the server logs it and the AIF reply carries the name.

ONNX Runtime is optional (the ``onnx`` extra): without it the artifact's TorchScript model is
used, with that reason in the choice. Imports torch, NumPy and (lazily) onnxruntime.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployment.artifact import Artifact, ArtifactError, LoadedModel
from deployment.artifact_file import METADATA_NAME

__all__ = [
    "BACKENDS",
    "INT8_MIN_AGREEMENT",
    "PARITY_ATOL",
    "BackendChoice",
    "bolus_probe",
    "OnnxModel",
    "load_onnx_model",
    "onnx_paths",
    "quantize_onnx_int8",
    "select_backend",
]

BACKENDS = ("auto", "torchscript", "onnx-fp32", "onnx-int8")
"""What ``--backend`` may ask for (``auto``: the fastest that passes parity)."""

PARITY_ATOL = {"onnx-fp32": 1e-4}
"""Largest max abs difference of the probabilities to the TorchScript model (fp32: the
exporter's ``export.onnx_atol``)."""

INT8_MIN_AGREEMENT = 0.995
"""Fraction of pixels whose decided class (argmax) an int8 backend must share with TorchScript
(8-bit activations move probabilities near a decision boundary by more than any fp32 tolerance,
so int8 is judged by the decisions)."""


def onnx_paths(artifact_path: Path) -> dict[str, Path]:
    """The ONNX files that may sit next to an artifact: ``{backend: path}``."""
    return {
        "onnx-fp32": artifact_path.with_suffix(".onnx"),
        "onnx-int8": artifact_path.with_suffix(".int8.onnx"),
    }


@dataclass(frozen=True)
class OnnxModel(LoadedModel):
    """An ONNX Runtime session standing in for :class:`deployment.artifact.Artifact`: the same
    ``path``, ``metadata``, ``n_classes``, ``input_shape`` and :meth:`probabilities`."""

    session: Any

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, C, ro, e1] for [B, n_frames, ro, e1] (or [C, ro, e1] for one series)."""
        x, single = self.batch_of(images)
        out = self.session.run(None, {self.session.get_inputs()[0].name: x})[0]
        return out[0] if single else out


def load_onnx_model(path: Path, artifact: Artifact, threads: int) -> OnnxModel:
    """An ONNX file exported from ``artifact``'s weights, as an ONNX Runtime session.

    Raises:
        ArtifactError: no file, no metadata, or metadata of another model.
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime as ort

    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle pool threads sleep instead of spinning: 24.5 vs 47.3 ms (fp32) and 16.5 vs 31.9 ms
    # (int8) per series for a BasicUNet on 2 threads of a shared AMD EPYC Zen 3 (load 3-5)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_NAME not in props:
        raise ArtifactError(f"{path}: no {METADATA_NAME} in its metadata_props")
    metadata = json.loads(props[METADATA_NAME])
    for key in ("weights_sha256", "input_shape", "n_classes"):
        if metadata.get(key) != artifact.metadata[key]:
            raise ArtifactError(
                f"{path}: {key} {metadata.get(key)!r} differs from the artifact's "
                f"{artifact.metadata[key]!r} ({artifact.path.name}); not exported from it"
            )
    return OnnxModel(path, {**artifact.metadata, "onnx": metadata.get("onnx", {})}, session)


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs the artifact, and why.

    Attributes:
        name: ``torchscript``, ``onnx-fp32`` or ``onnx-int8``.
        median_ms: {backend: median ms per series} of the candidates that passed parity.
        parity: {backend: max abs difference to TorchScript} of the ONNX candidates run.
        refused: {backend: why it was not a candidate or failed parity}.
    """

    name: str
    median_ms: dict[str, float] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the log."""
        timed = ", ".join(f"{k} {v:.1f} ms" for k, v in self.median_ms.items())
        refused = "; ".join(f"{k}: {v}" for k, v in self.refused.items())
        return f"backend {self.name} ({timed or 'not timed'})" + (
            f"; not used: {refused}" if refused else ""
        )


def bolus_probe(shape: tuple[int, int, int]) -> np.ndarray:
    """A preprocessed-like AIF series float32 [n_frames, ro, e1] in [0, 1]: two blood pools
    (RV, then LV 6 frames later) filling with a gamma-variate bolus over a faint, slightly noisy
    background. The parity probe: a network decides on it as on a real series (noise would put
    most pixels near a decision boundary, where int8 rounding flips classes a real series never
    puts there: 99.2 % vs 99.95 % agreement measured for an int8 BasicUNet).

    Example:
        >>> probe = bolus_probe((64, 64, 48))
        >>> probe.shape, float(probe.max()) == 1.0
        ((64, 64, 48), True)
    """
    n, ro, e1 = shape
    t = np.arange(n, dtype=np.float64)[:, None, None]
    y, x = np.mgrid[0:ro, 0:e1]

    def pool(cy: float, cx: float, radius: float) -> np.ndarray:
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * radius**2))

    def bolus(t0: float) -> np.ndarray:
        s = np.clip(t - t0, 0.0, None) / 3.0
        return s**2 * np.exp(2.0 - s) / 4.0  # peak 1 at t0 + 6

    series = bolus(n / 8) * pool(0.45 * ro, 0.4 * e1, 0.06 * ro)  # RV
    series = series + bolus(n / 8 + 6) * pool(0.55 * ro, 0.62 * e1, 0.08 * ro)  # LV
    series += 0.1 + 0.02 * np.random.default_rng(0).standard_normal(series.shape)
    series = np.clip(series, 0.0, None)
    return (series / series.max()).astype(np.float32)


def _median_ms(run: Callable[[np.ndarray], np.ndarray], probe: np.ndarray, runs: int) -> float:
    """Median ms of ``run(probe)`` after one warm-up call, timed in a new thread as the server
    runs a session (on a loaded 2-core machine a 2-thread torch inference took 3210 ms from the
    main thread and 26-57 ms from a new one: timing it in the main thread would misjudge it)."""
    times: list[float] = []

    def timed() -> None:
        run(probe)  # warm-up: first-call allocations and kernel selection
        for _ in range(runs):
            start = time.perf_counter()
            run(probe)
            times.append(1e3 * (time.perf_counter() - start))

    thread = threading.Thread(target=timed)
    thread.start()
    thread.join()
    if len(times) != runs:
        raise RuntimeError(f"timing {run} failed (traceback above)")
    return float(np.median(times))


def _parity_problem(name: str, out: np.ndarray, reference: np.ndarray) -> tuple[float, str]:
    """(max abs diff, "" or why ``out`` does not pass as ``reference``)."""
    diff = float(np.max(np.abs(out - reference)))
    if not np.isfinite(diff):
        return diff, "non-finite probabilities"
    if name in PARITY_ATOL and diff > PARITY_ATOL[name]:
        return diff, f"max abs difference {diff:.2g} to TorchScript > {PARITY_ATOL[name]:g}"
    if name == "onnx-int8":
        agreement = float(np.mean(out.argmax(axis=0) == reference.argmax(axis=0)))
        if agreement < INT8_MIN_AGREEMENT:
            return diff, f"decides {agreement:.1%} of the pixels as TorchScript does"
    return diff, ""


def select_backend(
    artifact: Artifact, backend: str = "auto", threads: int = 2, runs: int = 5
) -> tuple[Artifact | OnnxModel, BackendChoice]:
    """The model to run for ``artifact`` (module docstring) and the choice made.

    Args:
        artifact: the loaded, verified TorchScript artifact (the parity reference).
        backend: ``auto`` (fastest that passes parity) or one of :data:`BACKENDS` to insist on.
        threads: ONNX Runtime intra-op threads (TorchScript uses torch's setting).
        runs: timed inferences per candidate (after one warm-up).

    Raises:
        ArtifactError: an explicitly asked ONNX backend is missing or fails parity.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    refused: dict[str, str] = {}
    candidates: dict[str, Artifact | OnnxModel] = {}
    wanted: Iterable[str] = {"auto": onnx_paths(artifact.path), "torchscript": []}.get(
        backend, [backend]
    )
    for name in wanted:
        try:
            candidates[name] = load_onnx_model(onnx_paths(artifact.path)[name], artifact, threads)
        except ImportError:
            refused[name] = "onnxruntime is not installed (pip install inline-cmr[onnx])"
        except ArtifactError as exc:
            refused[name] = str(exc)
    parity = {}
    if candidates:
        probe = bolus_probe(artifact.input_shape)
        reference = artifact.probabilities(probe)
        for name, model in list(candidates.items()):
            parity[name], problem = _parity_problem(name, model.probabilities(probe), reference)
            if problem:
                refused[name] = problem
                del candidates[name]
    if backend not in ("auto", "torchscript") and backend not in candidates:
        raise ArtifactError(f"{artifact.path}: backend {backend} not usable: {refused[backend]}")
    if not candidates:  # TorchScript alone: warm it up once, nothing to compare
        artifact.probabilities(np.zeros(artifact.input_shape, np.float32))
        return artifact, BackendChoice("torchscript", parity=parity, refused=refused)
    if backend == "auto":
        candidates = {"torchscript": artifact, **candidates}
    timed = {n: _median_ms(m.probabilities, probe, runs) for n, m in candidates.items()}
    name = min(timed, key=timed.__getitem__)
    return candidates[name], BackendChoice(name, timed, parity, refused)


def quantize_onnx_int8(fp32_path: Path, calibration: np.ndarray, out_path: Path) -> Path:
    """Write the int8 QDQ model of an fp32 ONNX artifact file (static quantisation with ONNX
    Runtime: per-channel int8 weights, uint8 activations calibrated on ``calibration``, float
    [N, n_frames, ro, e1] preprocessed series), with the fp32 file's metadata and
    ``onnx.precision = "int8-qdq"``. Written atomically.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from formats.atomic_file import atomic_write

    class Series(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.items = iter([{name: s[None].astype(np.float32)} for s in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    source = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in source.metadata_props}
    if METADATA_NAME not in props:
        raise ArtifactError(f"{fp32_path}: no {METADATA_NAME} in its metadata_props")
    metadata = json.loads(props[METADATA_NAME])
    metadata["onnx"] = {"precision": "int8-qdq", "calibration_cases": len(calibration)}
    with atomic_write(out_path) as tmp:
        quant_pre_process(str(fp32_path), str(tmp))  # shape inference and graph clean-up
        quantize_static(
            str(tmp),
            str(tmp),
            Series(source.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_NAME, json.dumps(metadata, default=str)
        onnx.save(model, str(tmp))
    return out_path
