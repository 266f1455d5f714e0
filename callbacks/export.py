"""Export the trained model as the scanner-side artifact (TorchScript + metadata, optional ONNX).

:class:`ModelExport` (on by default, settings in ``conf/export/default.yaml``, overridable as
``export.onnx=true`` ...) writes ``<run dir>/export/aif_<model>.ts``. Where it goes from there
(docs/deployment.md, "Which model is deployed"): a real single training run deploys it at the
stable path
``artifacts/aif_<model>.ts`` through the artifact index (:mod:`deployment.artifact_index`: the file
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
import logging
import os
import shutil
import sys
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from callbacks.check_run import check_run_reasons
from deployment.artifact_index import ArtifactIndex, ArtifactVersion
from deployment.cpu_info import training_precision
from deployment.exporter import PRECISIONS, export_artifact
from formats.atomic_file import atomic_write
from quantification.aif_preprocessing import AIFPreprocessing

log = logging.getLogger(__name__)

__all__ = ["ModelExport", "main"]

PROMOTE_CHOICES = ("auto", "never")


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
