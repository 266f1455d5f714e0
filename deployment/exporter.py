"""The pure exporter: a network -> the verified scanner-side artifact (TorchScript + metadata,
optional ONNX), with no Lightning, Hydra or W&B (docs/deployment.md).

:func:`export_artifact` wraps the network so that it maps a preprocessed batch [B, 64, 64, 48] to
probabilities (sigmoid for 2CS, softmax for 3CS), ``torch.jit.script`` it, ``torch.jit.freeze`` it
(weights become constants; BN folding optional, see ``fold_batchnorm``), hashes the model records,
writes the file atomically (temporary file in the same directory, then ``os.replace``) with
``metadata.json`` inside, reloads the written file with the runtime's own
:func:`deployment.artifact.load_artifact` (hash verified) and compares it with the eager model on a
real batch: a max abs difference above ``atol`` fails (:class:`ExportParityError`) and leaves no
file behind. ``precision="int8"`` quantises first (:mod:`deployment.int8_quantization`).

Used by the training callback :class:`callbacks.export.ModelExport` and by anything else that
holds a network (benchmarks, tests).
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deployment.artifact import (
    FORMAT,
    METADATA_NAME,
    load_artifact,
    quiet_torchscript_deprecation,
    weights_sha256,
)
from deployment.cpu_info import NATIVE_BF16, host_cpu
from deployment.int8_quantization import BACKEND as INT8_BACKEND
from deployment.int8_quantization import quantize_int8, quiet_quantization_deprecation
from formats.atomic_file import atomic_write
from quantification.lv_mask import THRESHOLD_RULE

log = logging.getLogger(__name__)

__all__ = ["ExportParityError", "ProbabilityModel", "cpu_requirements", "export_artifact"]

CLASSES = {2: ["background", "lv"], 3: ["background", "lv", "rv"]}
PRECISIONS = ("fp32", "bf16", "int8")


class ExportParityError(RuntimeError):
    """The reloaded artifact does not reproduce the eager model within the tolerance."""


class ProbabilityModel(nn.Module):
    """The exported computation: logits of ``net`` -> probabilities.

    Input float32 [B, n_frames, RO, E1]; output float32 [B, 1, RO, E1] = sigmoid (2CS) or
    [B, 3, RO, E1] = softmax over background/LV/RV (3CS), as ``SegmentationModule.probabilities``.
    With ``bf16`` the network's weights and activations are bfloat16 (input cast on entry,
    logits cast back to float32); input and output stay float32 either way.
    """

    def __init__(
        self, net: nn.Module, n_classes: int, bf16: bool = False, output: str | None = None
    ) -> None:
        super().__init__()
        output = output or ("sigmoid" if n_classes == 2 else "softmax")
        if output not in ("sigmoid", "softmax") or n_classes < 2:
            raise ValueError(f"need n_classes >= 2 and sigmoid|softmax, got {n_classes}, {output}")
        self.net = net.to(torch.bfloat16) if bf16 else net
        self.sigmoid = output == "sigmoid"  # the myocardium U-Net: 2 classes, softmax head
        self.bf16 = bf16

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.bf16:
            image = image.to(torch.bfloat16)
        logits = self.net(image).float()
        if self.sigmoid:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)


def _max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _check_parity(diff: float, atol: float, what: str) -> None:
    if not diff <= atol:
        raise ExportParityError(
            f"{what} differs from the eager model by {diff:.3g} (max abs probability), more than "
            f"the allowed {atol:g}; not exporting it. Check the network for ops TorchScript/ONNX "
            "handle differently, or export with fold_batchnorm=false."
        )


def _script(model: ProbabilityModel, freeze: bool, fold_batchnorm: bool) -> torch.jit.ScriptModule:
    with quiet_torchscript_deprecation():
        scripted = torch.jit.script(model)
        if freeze:
            scripted = torch.jit.freeze(scripted, optimize_numerics=fold_batchnorm)
    return scripted


def _trace(model: ProbabilityModel, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of an int8 model by tracing (FX-quantised graphs do not script), frozen."""
    with (
        quiet_torchscript_deprecation(),
        quiet_quantization_deprecation(),
        warnings.catch_warnings(),
    ):
        # The quantisation scales become constants, as they should; the parity check on a whole
        # batch (traced with one case) catches any other value the trace would have frozen.
        warnings.filterwarnings(
            "ignore",
            message=r"Converting a tensor to a Python float",
            category=torch.jit.TracerWarning,
        )
        traced = torch.jit.trace(model, example[:1], check_trace=False)
        return torch.jit.freeze(traced.eval())


def _save_bytes(module: torch.jit.ScriptModule, extra: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(module, buffer, _extra_files=extra or {})
    return buffer.getvalue()


def cpu_requirements(precision: str, int8_reduce_range: bool) -> list[str]:
    """CPU features a model of this precision needs to run as exported (``deployment.cpu_info``).

    bf16 needs native bf16 (elsewhere oneDNN emulates it, many times slower than fp32); fp32
    and int8 run everywhere (int8 with 8-bit activations was measured as accurate as fp32 on an
    AVX2-only CPU without VNNI: ``deployment.int8_quantization``).
    """
    return [NATIVE_BF16] if precision == "bf16" else []


def export_artifact(
    net: nn.Module,
    n_classes: int,
    batch: torch.Tensor,
    path: str | os.PathLike,
    metadata: dict[str, Any],
    atol: float = 1e-5,
    freeze: bool = True,
    fold_batchnorm: bool = False,
    onnx: bool = False,
    onnx_atol: float = 1e-4,
    precision: str = "fp32",
    output: str | None = None,
    calibration: torch.Tensor | None = None,
    int8_float_modules: tuple[str, ...] = (),
    int8_reduce_range: bool = False,
) -> dict[str, Any]:
    """Export ``net`` as a verified TorchScript artifact (and optionally ONNX).

    Args:
        net: the network, logits [B, 1 or 3, RO, E1] for a preprocessed batch (not modified: a
            float32 CPU copy in eval mode is exported).
        n_classes: 2 (sigmoid head) or 3 (softmax head).
        batch: float [B, n_frames, RO, E1] real preprocessed series for the parity check.
        path: the artifact file (``.ts``); the ONNX file goes next to it as ``.onnx``.
        metadata: task, model, config, test_metrics, source_checkpoint, check_run (why the run
            is a check: :func:`callbacks.check_run.check_run_reasons`); the rest is filled in.
        atol: largest allowed max abs difference of the probabilities, reloaded vs eager.
        freeze: ``torch.jit.freeze`` (weights become constants, faster).
        fold_batchnorm: let freezing fold BN into the preceding convs (changes rounding).
        onnx: also write ``<path>.onnx`` (checked with onnxruntime when installed).
        onnx_atol: the same check for ONNX Runtime, whose own conv kernels (MLAS, not oneDNN)
            round differently: 1.4e-5 measured on a trained 3CS model with logits up to 190.
        precision: ``fp32``, or ``bf16`` (weights and activations in bfloat16: ~1.8x faster on
            CPUs with AVX512-BF16 or AMX, much slower on CPUs without). Parity is checked against
            the eager model of the same precision; the max abs difference to the fp32 model is
            stored as ``metadata["fp32_max_abs_diff"]``. ``int8``: static int8 quantisation
            (``deployment.int8_quantization``, calibrated on ``calibration``), traced and frozen;
            3.4x faster than fp32 on 2 Zen 4 cores (15 vs 52 ms for the 3CS ResUNet); accuracy
            and CPU caveats in the README ("Latency"); parity again against the eager model of
            the same precision.
        calibration: int8 only: float [N, n_frames, RO, E1] real inputs that set the ranges.
        int8_float_modules: int8 only: submodules of ``net`` kept in float32.
        int8_reduce_range: int8 only: 7-bit activations (measured less accurate, also without
            VNNI; ``deployment.int8_quantization``).
        output: ``sigmoid`` or ``softmax``; ``None``: sigmoid for 2 classes (2CS), else softmax.
            ``metadata`` may also set ``classes`` and ``threshold_rule`` (tasks other than AIF).

    Returns:
        The metadata written.

    Raises:
        ExportParityError: the reloaded artifact does not match the eager model.
    """
    path = Path(path)
    if precision not in PRECISIONS:
        raise ValueError(f"export precision must be one of {PRECISIONS}, got {precision!r}")
    fp32_net = copy.deepcopy(net).float().cpu().eval()
    fp32_model = ProbabilityModel(fp32_net, n_classes, output=output).eval()
    quantization = None
    if precision == "int8":
        if calibration is None:
            raise ValueError("export precision int8 needs calibration inputs (calibration=...)")
        int8_net = quantize_int8(fp32_net, calibration, int8_float_modules, int8_reduce_range)
        model = ProbabilityModel(int8_net, n_classes, output=output).eval()
        quantization = {
            "backend": INT8_BACKEND,
            "calibration_cases": len(calibration),
            "float_modules": list(int8_float_modules),
            "reduce_range": int8_reduce_range,
        }
    else:
        bf16 = precision == "bf16"
        if bf16 and not host_cpu().native_bf16:
            log.warning(
                "Exporting a bf16 model on %s: it loads only on CPUs with native bf16, and its "
                "parity check runs emulated here (slow)",
                host_cpu().describe(),
            )
        model = ProbabilityModel(copy.deepcopy(fp32_net), n_classes, bf16, output).eval()
    batch = batch.float().cpu().contiguous()
    with torch.inference_mode():
        reference = model(batch)
        fp32_diff = _max_abs_diff(reference, fp32_model(batch))
    int8 = quantization is not None
    scripted = _trace(model, batch) if int8 else _script(model, freeze, fold_batchnorm)
    plain = _save_bytes(scripted)
    with torch.inference_mode(), torch.jit.optimized_execution(False):  # as the runtime runs it
        diff = _max_abs_diff(scripted(batch), reference)
    _check_parity(diff, atol, "The scripted model")
    n_frames, ro, e1 = (int(n) for n in batch.shape[1:])
    metadata = {
        "format": FORMAT,
        "task": metadata.get("task", "aif_lv_detection"),
        "model": metadata.get("model"),
        "classes": metadata.get("classes") or CLASSES[n_classes],
        "n_classes": n_classes,
        "output": "sigmoid" if model.sigmoid else "softmax",
        "input_shape": [None, n_frames, ro, e1],
        "preprocessing": metadata["preprocessing"],
        "threshold_rule": metadata.get("threshold_rule") or THRESHOLD_RULE,
        "torch_version": torch.__version__,
        "config": metadata.get("config"),
        "test_metrics": metadata.get("test_metrics"),
        "weights_sha256": weights_sha256(plain),
        "source_checkpoint": metadata.get("source_checkpoint"),
        "check_run": list(metadata.get("check_run") or []),
        "parity_max_abs_diff": diff,
        "parity_n_cases": len(batch),
        "n_parameters": sum(p.numel() for p in fp32_net.parameters()),
        "optimisation": {
            "freeze": freeze or int8,
            "fold_batchnorm": freeze and fold_batchnorm and not int8,
            "traced": int8,
        },
        "precision": precision,
        "quantization": quantization,
        "fp32_max_abs_diff": fp32_diff,
        "cpu_requirements": cpu_requirements(precision, int8_reduce_range),
        "exporting_cpu": host_cpu().as_metadata(),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    data = _save_bytes(scripted, {METADATA_NAME: json.dumps(metadata, indent=1, default=str)})
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
        # the runtime's loader (hash and metadata verified); the exporting host may lack a CPU
        # feature the model needs on the scanner (bf16), and parity is checked here all the same
        artifact = load_artifact(tmp, check_cpu=False)
        diff = _max_abs_diff(artifact.probabilities(batch), reference)
        _check_parity(diff, atol, f"The reloaded artifact {path}")
    log.info("Exported %s (parity max abs diff %.2g on %d cases)", path, diff, len(batch))
    if onnx:  # ONNX Runtime has its own kernels: the fp32 model is exported
        with torch.inference_mode():
            reference = fp32_model(batch)
        _export_onnx(fp32_model, batch, reference, path.with_suffix(".onnx"), metadata, onnx_atol)
    return metadata


_ONNX_WARNINGS = (
    # torch 2.13's TorchScript-based ONNX exporter (the dynamo one needs onnxscript) announces its
    # own deprecation, and then that of the logging helper it calls itself.
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed\. Please remove usage of this function",
)


def _export_onnx(
    model: ProbabilityModel,
    batch: torch.Tensor,
    reference: torch.Tensor,
    path: Path,
    metadata: dict[str, Any],
    atol: float,
) -> None:
    """ONNX file with the same metadata in ``metadata_props``; checked with onnxruntime."""
    import onnx

    with atomic_write(path) as tmp, warnings.catch_warnings():
        for message in _ONNX_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        with quiet_torchscript_deprecation():
            torch.onnx.export(
                model,
                (batch[:1],),
                str(tmp),
                input_names=["image"],
                output_names=["probability"],
                dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_NAME, json.dumps(metadata, default=str)
        onnx.save(proto, str(tmp))
        try:
            import onnxruntime as ort
        except ImportError:
            log.warning("onnxruntime is not installed: %s written without a parity check", path)
        else:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            out = session.run(None, {"image": batch.numpy()})[0]
            _check_parity(_max_abs_diff(out, reference), atol, f"The ONNX model {path}")
    log.info("Exported %s", path)
