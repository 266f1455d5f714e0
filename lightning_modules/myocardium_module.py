"""LightningModule for myocardium segmentation in weighted T1/T2 images (docs/method.md §B2-B3).

Batches are ``{"image": float [B, 1, 256, 256], "mask": int [B, 256, 256], ...}`` (label 1 =
myocardium, 0 = background). The network outputs one logit per class and the loss is Dice +
cross-entropy over the softmax (``lightning_modules.losses.DiceCrossEntropyLoss``).

Metric: the Dice similarity coefficient (DSC) of each image, prediction = argmax of the softmax,
myocardium label 1, no post-processing (the mapping pipeline's largest-object step and shape QC
come later, in ``quantification``). Logged per stage: ``<stage>/dsc`` (mean over images),
``<stage>/dsc_sd`` (SD over images), ``<stage>/n_images``; an image where both reference and
prediction are empty scores 1. Boundary distances of the same masks
(``lightning_modules.boundary_metrics``, MONAI's HD95 and ASSD): ``<stage>/myo_hd95_px``,
``myo_assd_px`` (pixels of the 256×256 network grid; mean over the images where both masks
exist, ``_sd`` beside), ``myo_hd95_mm`` / ``myo_assd_mm`` as well when every image's pixel size
is known (the batch's ``pixel_spacing_mm``, from the slice attr), and the counts
``myo_n_empty`` (empty predictions) and ``myo_n_spurious``.

Transfer learning (``lightning_modules.transfer``) calls :meth:`set_transfer` to register the
pretrained parameters (their own learning rate) and the frozen levels (their BatchNorm stays in
eval mode, so frozen really means unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchmetrics import CatMetric

from lightning_modules.boundary_metrics import BoundaryMetric
from lightning_modules.segmentation_task import SegmentationTask, dice_per_case, mean_and_sd
from lightning_modules.transfer import parameter_groups

MYOCARDIUM = 1
"""Label value of the myocardium in masks and the index of its softmax channel."""


class MyocardiumSegmentationModule(SegmentationTask):
    """Trains a U-Net on weighted images; logs the per-image myocardium DSC.

    Args:
        net: network mapping ``[B, 1, H, W]`` to logits ``[B, n_classes, H, W]``.
        loss: callable ``loss(logits, labels)`` (e.g. ``DiceCrossEntropyLoss``).
        optimizer: partial optimiser constructor taking ``params`` (Hydra ``_partial_``).
        scheduler: partial LR-scheduler constructor taking the optimiser, or ``None``.
        n_classes: softmax classes (2: background / myocardium).
        monitor: metric a plateau scheduler watches.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        n_classes: int = 2,
        monitor: str = "val/dsc",
    ) -> None:
        super().__init__(net, loss, optimizer, scheduler)
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (softmax head), got {n_classes}")
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.n_classes = n_classes
        self.pretrained_parameters: set[str] = set()
        self.pretrained_lr: float | None = None
        self.frozen_modules: list[str] = []
        self.stage_dsc = nn.ModuleDict({stage: CatMetric() for stage in ("val", "test")})
        self.stage_boundary = nn.ModuleDict({stage: BoundaryMetric() for stage in ("val", "test")})

    def set_transfer(
        self,
        pretrained: Iterable[str] = (),
        pretrained_lr: float | None = None,
        frozen_modules: Iterable[str] = (),
    ) -> None:
        """Register fine-tuning settings (called by ``transfer.FineTuning.apply_to``).

        Args:
            pretrained: names (in ``net``) of the parameters loaded from pretrained weights.
            pretrained_lr: learning rate of those; ``None``: the optimiser's lr.
            frozen_modules: names of ``net`` submodules whose parameters are frozen; their
                BatchNorm layers are kept in eval mode during training.
        """
        self.pretrained_parameters = set(pretrained)
        self.pretrained_lr = pretrained_lr
        self.frozen_modules = list(frozen_modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> MyocardiumSegmentationModule:
        """``nn.Module.train``, but frozen levels stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        for name in self.frozen_modules:
            self.net.get_submodule(name).eval()
        return self

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes, ``[B, n_classes, H, W]`` (float32)."""
        return logits.float().softmax(dim=1)

    def predict_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Label map ``[B, H, W]`` (argmax over classes)."""
        return logits.argmax(dim=1)

    def update_metrics(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        stage: str,
        pixel_spacing_mm: torch.Tensor | None = None,
    ) -> None:
        predicted = self.predict_mask(logits) == MYOCARDIUM
        self.stage_dsc[stage].update(dice_per_case(predicted, mask == MYOCARDIUM))
        self.stage_boundary[stage].update(predicted, mask == MYOCARDIUM, pixel_spacing_mm)

    def log_metrics(self, stage: str) -> None:
        metric = self.stage_dsc[stage]
        dsc = metric.compute()
        dsc_mean, dsc_sd = mean_and_sd(dsc)
        self.log(f"{stage}/dsc", dsc_mean, prog_bar=True)
        self.log(f"{stage}/dsc_sd", dsc_sd)
        self.log(f"{stage}/n_images", torch.tensor(float(dsc.numel())))
        metric.reset()
        boundary = self.stage_boundary[stage]
        for name, value in boundary.compute().items():
            self.log(f"{stage}/myo_{name}", value)
        boundary.reset()

    def optimizer_parameters(self) -> list[dict]:
        """Parameter groups: pretrained ones at ``pretrained_lr`` when it is set."""
        return parameter_groups(
            list(self.net.named_parameters()), self.pretrained_parameters, self.pretrained_lr
        )
