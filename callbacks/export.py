"""Export the trained model as the scanner-side artifact (TorchScript + metadata, optional ONNX).

:class:`ModelExport` (on by default, settings in ``conf/export/default.yaml``, overridable as
``export.onnx=true`` ...) writes ``<run dir>/export/aif_<model>.ts``. Where it goes from there
(README "Which model is deployed"): a real single training run deploys it at the stable path
``artifacts/aif_<model>.ts`` through the artifact index (:mod:`formats.artifact_index`: the file
it replaces stays in ``artifacts/versions/``, listed in ``artifacts/index.json``); a check run
(:mod:`callbacks.check_run`: ``fast_dev_run``, ``debug=*``, ...) and a multirun job leave it in
the run directory only, and say so in the log; the stable path then changes only by ``python -m
exports promote`` or a sweep's stated rule (``sweep_promotion``). With the W&B logger the export
is also logged as a model artifact (:mod:`callbacks.wandb_model_artifact`).

When it runs: the metadata must carry the test metrics, and those exist only after
``trainer.test`` of the best checkpoint. So the export happens in ``on_test_end``, with the
weights just tested (``train.py`` tests ``best_model_path``) and ``trainer.callback_metrics``.
When no test follows the fit (``test=false``, passed in as ``wait_for_test``), it happens in
``on_fit_end`` instead, with the best checkpoint's weights loaded into a copy of the network and
``test_metrics: null``. One export per run either way, and always of the best checkpoint.

What an export does (:func:`export_artifact`): wrap the network so that it maps a preprocessed
batch [B, 64, 64, 48] to probabilities (sigmoid for 2CS, softmax for 3CS), ``torch.jit.script``
it, ``torch.jit.freeze`` it (weights become constants; BN folding optional, see
``fold_batchnorm``), hash the model records, write the file atomically (temporary file in the same
directory, then ``os.replace``) with ``metadata.json`` inside, reload the written file with the
runtime's own :func:`exports.load_artifact` (hash verified) and compare it with the eager model on
a real batch of the datamodule: a max abs difference above ``atol`` fails the run
(:class:`ExportParityError`) and leaves no file behind.

Command line (``make export CKPT=...``): ``python -m callbacks.export <ckpt> [--output PATH]
[--onnx]`` rebuilds the model and data from the run's saved config (``<run dir>/.hydra/``),
tests the checkpoint on the run's own split and exports it exactly as training would have.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from callbacks.check_run import check_run_reasons
from callbacks.int8_quantization import BACKEND as INT8_BACKEND
from callbacks.int8_quantization import quantize_int8, quiet_quantization_deprecation
from formats.artifact import (
    FORMAT,
    METADATA_NAME,
    load_artifact,
    quiet_torchscript_deprecation,
    weights_sha256,
)
from formats.artifact_index import ArtifactIndex, ArtifactVersion
from formats.atomic_file import atomic_write
from formats.cpu_info import NATIVE_BF16, host_cpu, training_precision
from quantification.aif_preprocessing import AIFPreprocessing
from quantification.lv_mask import THRESHOLD_RULE

log = logging.getLogger(__name__)

__all__ = ["ExportParityError", "ModelExport", "ProbabilityModel", "export_artifact", "main"]

CLASSES = {2: ["background", "lv"], 3: ["background", "lv", "rv"]}
PRECISIONS = ("fp32", "bf16", "int8")
PROMOTE_CHOICES = ("auto", "never")


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
    """CPU features a model of this precision needs to run as exported (``formats.cpu_info``).

    bf16 needs native bf16 (elsewhere oneDNN emulates it, many times slower than fp32); fp32
    and int8 run everywhere (int8 with 8-bit activations was measured as accurate as fp32 on an
    AVX2-only CPU without VNNI: ``callbacks.int8_quantization``).
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
            (``callbacks.int8_quantization``, calibrated on ``calibration``), traced and frozen;
            3.4x faster than fp32 on 2 Zen 4 cores (15 vs 52 ms for the 3CS ResUNet); accuracy
            and CPU caveats in the README ("Latency"); parity again against the eager model of
            the same precision.
        calibration: int8 only: float [N, n_frames, RO, E1] real inputs that set the ranges.
        int8_float_modules: int8 only: submodules of ``net`` kept in float32.
        int8_reduce_range: int8 only: 7-bit activations (measured less accurate, also without
            VNNI; ``callbacks.int8_quantization``).
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


def _run_config(path: str | None) -> dict[str, Any] | None:
    """The run's config as Hydra saved it, resolved when Hydra's runtime config is available."""
    if not path or not Path(path).is_file():
        log.warning("No run config at %s: the artifact's metadata will have config: null", path)
        return None
    cfg = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run
        log.warning("Run config %s stored unresolved (%s)", path, exc)
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


class ModelExport(pl.Callback):
    """Export the best checkpoint as the scanner artifact, after testing it (module docstring).

    Args:
        artifact_path: the stable (deployed) artifact path, e.g. ``artifacts/aif_resunet3cs.ts``:
            its folder holds the artifact index, its stem is the deployed name.
        run_export_dir: the run's folder every export is written into (``<run dir>/export``).
        model_name: model name in the metadata (the Hydra ``model`` choice).
        task: task name in the metadata.
        run_config: the run's saved config (``<run dir>/.hydra/config.yaml``), stored resolved.
        wait_for_test: a test follows the fit (``${test}``): export in ``on_test_end`` with the
            test metrics; ``False``: export the best checkpoint in ``on_fit_end``.
        atol: largest allowed max abs probability difference, reloaded artifact vs eager.
        freeze: ``torch.jit.freeze`` the scripted model.
        fold_batchnorm: fold BN into convs while freezing.
        onnx: also export ``<artifact>.onnx``.
        onnx_atol: parity tolerance of the ONNX Runtime check.
        parity_cases: cases of the first batch used for the parity check.
        classes: class names in the metadata (``None``: the AIF ones for ``n_classes``).
        output: ``sigmoid`` | ``softmax`` (``None``: by ``n_classes``, as for the AIF models).
        threshold_rule: post-processing description in the metadata (``None``: the AIF rule).
        precision: ``fp32``, ``bf16`` or ``int8`` (see :func:`export_artifact`).
        calibration_cases: int8: validation cases that calibrate the activation ranges.
        int8_float_modules: int8: submodules of the network kept in float32.
        int8_reduce_range: int8: 7-bit activations (measured less accurate).
        promote: ``auto``: a real single training run deploys its export at ``artifact_path``;
            ``never``: exports stay in ``run_export_dir``. Check runs and multirun jobs never
            deploy.
        debug_preset: the ``debug`` config choice (a check run when set).
        hydra_mode: Hydra's run mode (``RUN``/``MULTIRUN``; ``None`` outside Hydra).
    """

    def __init__(
        self,
        artifact_path: str,
        run_export_dir: str,
        model_name: str | None = None,
        task: str = "aif_lv_detection",
        run_config: str | None = None,
        wait_for_test: bool = True,
        atol: float = 1e-5,
        freeze: bool = True,
        fold_batchnorm: bool = False,
        onnx: bool = False,
        onnx_atol: float = 1e-4,
        parity_cases: int = 8,
        precision: str = "fp32",
        calibration_cases: int = 64,
        int8_float_modules: list[str] | None = None,
        int8_reduce_range: bool = False,
        classes: list[str] | None = None,
        output: str | None = None,
        threshold_rule: dict[str, Any] | None = None,
        promote: str = "auto",
        debug_preset: str | None = None,
        hydra_mode: Any = None,
    ) -> None:
        if promote not in PROMOTE_CHOICES:
            raise ValueError(f"export.promote must be one of {PROMOTE_CHOICES}, got {promote!r}")
        self.artifact_path = Path(artifact_path)
        self.run_export_dir = Path(run_export_dir)
        self.promote = promote
        self.debug_preset = debug_preset
        self.multirun = getattr(hydra_mode, "name", str(hydra_mode)).endswith("MULTIRUN")
        self.model_name = model_name
        self.task = task
        self.run_config = run_config
        self.wait_for_test = wait_for_test
        self.atol = atol
        self.freeze = freeze
        self.fold_batchnorm = fold_batchnorm
        self.onnx = onnx
        self.onnx_atol = onnx_atol
        self.parity_cases = parity_cases
        self.precision = precision
        self.calibration_cases = calibration_cases
        self.int8_float_modules = tuple(int8_float_modules or ())
        self.int8_reduce_range = int8_reduce_range
        self.classes = list(classes) if classes else None
        self.output = output
        self.threshold_rule = dict(threshold_rule) if threshold_rule else None
        self.metadata: dict[str, Any] | None = None
        self.exported_file: Path | None = None  # this run's export (in run_export_dir)
        self.deployed: ArtifactVersion | None = None  # the index version it became, if any

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.wait_for_test or not trainer.is_global_zero:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        net = copy.deepcopy(pl_module.net)
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        else:
            log.warning("No best checkpoint: exporting the current weights")
        self._export(trainer, pl_module, net, best or None, "val", test_metrics=None)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
        }
        self._export(trainer, pl_module, pl_module.net, trainer.ckpt_path, "test", metrics)

    def _parity_batch(self, trainer: pl.Trainer, split: str) -> torch.Tensor:
        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("ModelExport needs a datamodule for its parity batch")
        loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
        return next(iter(loader))["image"][: self.parity_cases]

    def _calibration(self, trainer: pl.Trainer) -> torch.Tensor | None:
        """int8: the first ``calibration_cases`` validation inputs (deterministic order)."""
        if self.precision != "int8":
            return None
        images, n = [], 0
        for batch in trainer.datamodule.val_dataloader():
            images.append(batch["image"])
            n += len(batch["image"])
            if n >= self.calibration_cases:
                break
        return torch.cat(images)[: self.calibration_cases]

    def _export(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        net: nn.Module,
        checkpoint: str | None,
        split: str,
        test_metrics: dict[str, float] | None,
    ) -> None:
        datamodule = trainer.datamodule
        preprocessing = getattr(datamodule, "preprocessing", AIFPreprocessing())
        if is_dataclass(preprocessing):
            preprocessing = asdict(preprocessing)
        check_run = check_run_reasons(trainer, checkpoint, self.debug_preset)
        exported = self.run_export_dir / self.artifact_path.name
        self.metadata = export_artifact(
            net,
            int(pl_module.n_classes),
            self._parity_batch(trainer, split),
            exported,
            {
                "task": self.task,
                "model": self.model_name,
                "preprocessing": dict(preprocessing),
                "classes": self.classes,
                "threshold_rule": self.threshold_rule,
                "config": _run_config(self.run_config),
                "test_metrics": test_metrics,
                "source_checkpoint": str(checkpoint) if checkpoint else None,
                "check_run": check_run,
            },
            atol=self.atol,
            freeze=self.freeze,
            fold_batchnorm=self.fold_batchnorm,
            onnx=self.onnx,
            onnx_atol=self.onnx_atol,
            precision=self.precision,
            output=self.output,
            calibration=self._calibration(trainer),
            int8_float_modules=self.int8_float_modules,
            int8_reduce_range=self.int8_reduce_range,
        )
        self.exported_file = exported
        self.deployed = self._deploy(exported, check_run)
        if not check_run:  # a check's model is no model: nothing for the dashboard
            from callbacks.wandb_model_artifact import log_export

            log_export(trainer, self.artifact_path.stem, exported, self.deployed)

    def _deploy(self, exported: Path, check_run: list[str]) -> ArtifactVersion | None:
        """Promote a real single run's export through the index; else say where it stays."""
        stable = self.artifact_path
        if check_run:
            log.warning(
                "Check run (%s): the model was exported only into %s; the deployed %s is unchanged",
                ", ".join(check_run),
                exported,
                stable,
            )
            return None
        if self.multirun or self.promote == "never":
            why = "Multirun job" if self.multirun else "export.promote=never"
            log.info(
                "%s: the model was exported into %s; the deployed %s changes only by `python -m "
                "exports promote %s`%s",
                why,
                exported,
                stable,
                exported.parent.parent,
                " or the sweep's rule (sweep_promotion=best)" if self.multirun else "",
            )
            return None
        index = ArtifactIndex(stable.parent)
        version = index.promote(
            exported, stable.stem, reason="training run", source_run=self.run_export_dir.parent
        )
        log.info(
            "Deployed %s as %s (%s); every version it replaced stays in %s/versions, listed by "
            "`python -m exports list`",
            exported,
            stable,
            version.label,
            stable.parent,
        )
        return version


# --------------------------------------------------------------------------- command line


def _find_run_dir(checkpoint: Path) -> Path:
    for parent in checkpoint.resolve().parents:
        if (parent / ".hydra" / "config.yaml").is_file():
            return parent
    raise FileNotFoundError(
        f"{checkpoint}: no .hydra/config.yaml in any parent directory; export needs the config "
        "Hydra saved with the run (<run dir>/.hydra/config.yaml)"
    )


def _load_run_config(run_dir: Path) -> DictConfig:
    """The run's config with Hydra's runtime config installed, so interpolations resolve."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import setup_globals

    setup_globals()  # registers the ${hydra:...} and ${now:...} resolvers, as @hydra.main does
    root = Path(__file__).resolve().parents[1]
    os.environ.setdefault("PROJECT_ROOT", str(root))
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        from hydra.conf import HydraConf

        saved = OmegaConf.load(hydra_file).hydra
        full = copy.deepcopy(cfg)
        hydra_node = OmegaConf.structured(HydraConf)
        OmegaConf.set_struct(hydra_node, False)  # keys of newer/older Hydra versions are kept
        with open_dict(full):
            full.hydra = OmegaConf.merge(hydra_node, saved)
        HydraConfig.instance().set_config(full)
    if "export" not in cfg:  # a run from before the export group: use today's defaults
        cfg.export = OmegaConf.load(root / "conf" / "export" / "default.yaml")
    if "run_copy_dir" in cfg.export:  # a run from before the artifact index
        cfg.export.run_export_dir = cfg.export.pop("run_copy_dir")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m callbacks.export CKPT [--output PATH] [--onnx]``: test, then export a ckpt.

    The export goes into the run's ``export/`` folder and is deployed by the run's own rule
    (a real single run: yes; a check run or a multirun job: no, see ``python -m exports
    promote``); with ``--output`` it is written there as well and not deployed.
    """
    import hydra

    parser = argparse.ArgumentParser(prog="python -m callbacks.export", description=main.__doc__)
    parser.add_argument("checkpoint", type=Path, help="a .ckpt inside a run directory")
    parser.add_argument("--output", type=Path, help="also write it here (not deployed)")
    parser.add_argument("--onnx", action="store_true", help="also write the ONNX model")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: export.precision")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    run_dir = _find_run_dir(args.checkpoint)
    cfg = _load_run_config(run_dir)
    split = run_dir / "split.json"
    cfg.data.split_file = str(split) if split.is_file() else cfg.data.get("split_file")
    cfg.data.split_out = None  # leave the run's files alone
    cfg.export.run_config = str(run_dir / ".hydra" / "config.yaml")
    cfg.export.wait_for_test = True
    if args.output:
        cfg.export.promote = "never"
    if args.onnx:
        cfg.export.onnx = True
    if args.precision:
        cfg.export.precision = args.precision
    exporter: ModelExport = hydra.utils.instantiate(cfg.export)
    cfg.trainer.precision, reason = training_precision(str(cfg.trainer.precision))
    log.info(reason)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[exporter], logger=False, enable_checkpointing=False
    )
    with warnings.catch_warnings():  # only the weights are restored; callback states don't matter
        warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
        trainer.test(
            hydra.utils.instantiate(cfg.model),
            datamodule=hydra.utils.instantiate(cfg.data),
            ckpt_path=str(args.checkpoint),
        )
    written = exporter.exported_file
    if args.output:
        for suffix in (".ts", ".onnx") if args.onnx else (".ts",):
            with atomic_write(args.output.with_suffix(suffix)) as tmp:
                shutil.copyfile(written.with_suffix(suffix), tmp)
        written = args.output
    deployed = f", deployed as {exporter.deployed.label}" if exporter.deployed else ""
    print(f"Exported {written}{deployed} (test metrics: {exporter.metadata['test_metrics']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
