"""The training loop both segmentation LightningModules share (AIF LV detection, myocardium).

A :class:`SegmentationTask` owns a network, a loss and the optimiser / scheduler factories that
Hydra builds (``_partial_``). Batches are ``{"image": [B, C, H, W], "mask": int [B, H, W]}``.
Training logs ``train/loss``; validation and test log ``<stage>/loss`` per batch, then hand the
logits to :meth:`SegmentationTask.update_metrics` and, at the end of the epoch, call
:meth:`SegmentationTask.log_metrics`: the two hooks a task defines (per-case values gathered in
``torchmetrics.CatMetric`` so that they reduce across processes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR


def dice_per_case(prediction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Dice of boolean masks ``[B, H, W]`` per case, ``[B]``; two empty masks score 1.

    Example:
        >>> a = torch.zeros(2, 4, 4, dtype=torch.bool)
        >>> b = a.clone(); a[0, :2] = True; b[0, :1] = True
        >>> dice_per_case(a, b)
        tensor([0.6667, 1.0000])
    """
    prediction, reference = prediction.flatten(1).float(), reference.flatten(1).float()
    overlap = 2 * (prediction * reference).sum(1)
    total = prediction.sum(1) + reference.sum(1)
    return torch.where(total > 0, overlap / total.clamp(min=1), torch.ones_like(total))


def mean_and_sd(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample SD of per-case values ``[N]`` (SD 0 for a single case)."""
    return values.mean(), values.std() if values.numel() > 1 else torch.zeros(())


class SegmentationTask(pl.LightningModule):
    """Fit / validate / test loop and optimiser set-up of a segmentation network.

    Subclasses call ``save_hyperparameters`` in their own ``__init__`` and define
    :meth:`update_metrics` and :meth:`log_metrics`.

    Args:
        net: network mapping images ``[B, C, H, W]`` to logits ``[B, C_out, H, W]``.
        loss: callable ``loss(logits, labels)`` (see ``lightning_modules.losses``).
        optimizer: partial optimiser constructor taking ``params`` (Hydra ``_partial_``).
        scheduler: partial LR-scheduler constructor taking the optimiser, or ``None``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C_out, H, W]`` for images ``[B, C, H, W]``."""
        return self.net(image)

    def update_metrics(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        stage: str,
        pixel_spacing_mm: torch.Tensor | None = None,
    ) -> None:
        """Accumulate the per-case metrics of one batch of ``stage`` ("val" or "test").

        ``pixel_spacing_mm``: the batch's ``pixel_spacing_mm`` [B, 2] (row, column spacing of
        the network's input grid, NaN where unknown) when the datamodule provides it."""
        raise NotImplementedError

    def log_metrics(self, stage: str) -> None:
        """Log the epoch's summary of ``stage`` and reset its accumulators."""
        raise NotImplementedError

    def optimizer_parameters(self) -> Iterable[Any]:
        """What the optimiser gets as ``params``: all parameters (or parameter groups)."""
        return self.parameters()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self(batch["image"])
        self.log(f"{stage}/loss", self.loss(logits, batch["mask"]), batch_size=len(logits))
        self.update_metrics(logits, batch["mask"], stage, batch.get("pixel_spacing_mm"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_metrics("test")

    def configure_optimizers(self) -> dict:
        """The optimiser and, if configured, its scheduler. A one-cycle schedule
        (``torch.optim.lr_scheduler.OneCycleLR``) steps per batch over the whole fit
        (``trainer.estimated_stepping_batches``); the others step per epoch."""
        optimizer = self.optimizer_factory(params=self.optimizer_parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        per_step = getattr(self.scheduler_factory, "func", None) is OneCycleLR
        if per_step:
            # OneCycleLR needs more than 1 / pct_start steps (else its warm-up phase is empty)
            pct_start = self.scheduler_factory.keywords.get("pct_start", 0.3)
            total = max(int(self.trainer.estimated_stepping_batches), math.ceil(2 / pct_start))
            scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        else:
            scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.hparams.monitor,
                "interval": "step" if per_step else "epoch",
            },
        }

    def on_train_start(self) -> None:
        """A run resumed with more steps than its one-cycle schedule was built for (e.g. a larger
        ``trainer.max_epochs`` with ``ckpt_path``) is refused: the restored schedule has ended."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            needed = int(self.trainer.estimated_stepping_batches)
            if isinstance(scheduler, OneCycleLR) and scheduler.total_steps < needed:
                raise ValueError(
                    f"ckpt_path: the checkpoint's one-cycle schedule covers "
                    f"{scheduler.total_steps} steps, this run needs {needed} (more epochs or "
                    f"batches than the run was started with); resume with the same "
                    f"trainer.max_epochs, or start a new run from its weights "
                    f"(finetune.pretrained=<ckpt>) or with model/scheduler=step"
                )
