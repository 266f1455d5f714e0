"""Train, test and report a model: ``python train.py [overrides]`` (configs in ``conf/``).

Composes ``conf/train.yaml``, seeds everything, builds the datamodule, model, callbacks, loggers
and trainer from their ``_target_``, fits, tests the best checkpoint and returns
``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from deployment.cpu_info import training_precision  # noqa: E402
from sweeps.run_summary import write_run_record  # noqa: E402

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry with a ``_target_`` (callbacks, loggers); ``null`` disables one."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def _test_summary(metrics: dict[str, float]) -> str:
    if "test/dsc" in metrics:  # myocardium segmentation (lightning_modules.myocardium_module)
        return (
            f"Test: {metrics['test/n_images']:.0f} images, myocardium DSC "
            f"{metrics['test/dsc']:.3f} ± {metrics['test/dsc_sd']:.3f}"
        )
    text = (
        f"Test: {metrics['test/n_cases']:.0f} cases, LV detection (Dice > 0.5) "
        f"{100 * metrics['test/detection_rate']:.1f} %, LV Dice {metrics['test/lv_dice']:.3f} "
        f"± {metrics['test/lv_dice_sd']:.3f}, Dice > 0.75 {100 * metrics['test/dice_gt_075']:.1f} %"
    )
    if "test/rv_dice" in metrics:
        text += f", RV Dice {metrics['test/rv_dice']:.3f}"
    return text


def resolve_precision(cfg: DictConfig) -> str:
    """Settle ``trainer.precision`` for this host (``auto``: bf16 autocast only where the CPU has
    native bf16, see ``deployment.cpu_info``), write it into ``cfg`` and log why."""
    cfg.trainer.precision, reason = training_precision(str(cfg.trainer.precision))
    if cfg.trainer.get("accelerator") == "cpu":
        log.info(reason)
    return cfg.trainer.precision


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as configured; returns the final logged metrics as floats."""
    resolve_precision(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    if cfg.get("finetune") and cfg.finetune.get("pretrained"):  # transfer learning (method.md §B3)
        hydra.utils.instantiate(cfg.finetune).apply_to(model)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")), logger=loggers or False
    )
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        if cfg.get("train"):
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_score is not None:
            # sweepers optimise the epoch that is kept (tested, exported), not the last one
            metrics[checkpoint.monitor] = float(checkpoint.best_model_score)
        if cfg.get("test"):
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            )
            if not best:
                log.warning("No best checkpoint was saved; testing the current weights.")
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
            log.info(_test_summary(metrics))
            if best:
                log.info("Best checkpoint: %s", best)
        if trainer.is_global_zero and HydraConfig.initialized():  # read by summarize_runs.py
            hydra_cfg = HydraConfig.get()
            write_run_record(
                cfg.paths.output_dir,
                metrics,
                overrides=hydra_cfg.overrides.task,
                seed=cfg.get("seed"),
                model=hydra_cfg.runtime.choices.get("model"),
                optimized_metric=cfg.get("optimized_metric"),
            )
        return metrics
    finally:
        if "wandb" in sys.modules:  # one failed job of a sweep must not leave its run open
            sys.modules["wandb"].finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
