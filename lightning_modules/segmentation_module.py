"""LightningModule for AIF LV detection, 2CS (sigmoid) or 3CS (softmax).

Validation and test metrics are per case, computed after the post-processing the inline runtime
uses (``quantification.lv_mask``: threshold rule of method.md §A6, then the largest LV component):
LV Dice mean ± SD, detection rate (LV Dice > 0.5), share with LV Dice > 0.75, and RV Dice for
3CS; boundary distances of the LV (and RV) masks (``lightning_modules.boundary_metrics``, MONAI):
``<stage>/lv_hd95_px``, ``lv_assd_px`` (mean over the cases where both masks exist, ``_sd``
beside), ``lv_n_empty`` (empty predictions) and ``lv_n_spurious``, in pixels of the network
input (the AIF contract carries no pixel size; the crop keeps the native pixels). Per-case
values are gathered with ``torchmetrics`` states so they reduce across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import CatMetric

from lightning_modules.boundary_metrics import BoundaryMetric
from lightning_modules.segmentation_task import SegmentationTask, dice_per_case, mean_and_sd
from quantification.lv_mask import LABEL_LV as LV
from quantification.lv_mask import LABEL_RV as RV
from quantification.lv_mask import masks_from_probabilities

__all__ = ["LV", "RV", "SegmentationModule", "dice_per_case"]


class SegmentationModule(SegmentationTask):
    """Trains a segmentation network with a given loss; logs per-case LV (and RV) Dice.

    Args:
        net: network mapping ``[B, 64, H, W]`` to logits ``[B, 1 or 3, H, W]``.
        loss: callable ``loss(logits, labels)`` (see ``lightning_modules.losses``).
        optimizer: partial optimizer constructor taking the parameters (Hydra ``_partial_``).
        scheduler: partial LR-scheduler constructor taking the optimizer, or ``None``.
        n_classes: 2 (background/LV, one sigmoid channel) or 3 (background/LV/RV, softmax).
        monitor: metric the plateau scheduler watches (``ReduceLROnPlateau`` only).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        n_classes: int = 3,
        monitor: str = "val/lv_dice",
    ) -> None:
        super().__init__(net, loss, optimizer, scheduler)
        if n_classes not in (2, 3):
            raise ValueError(f"n_classes must be 2 (2CS) or 3 (3CS), got {n_classes}")
        # Checkpoints keep plain data only (they load with torch.load(weights_only=True)); the
        # full resolved config is logged by train.py.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.n_classes = n_classes
        self.stage_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "lv_dice": CatMetric(),
                        "rv_dice": CatMetric(),
                        "lv": BoundaryMetric(),
                        "rv": BoundaryMetric(),
                    }
                )
                for stage in ("val", "test")
            }
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (2CS, ``[B, 1, H, W]``) or softmax (3CS, ``[B, 3, H, W]``) of the logits."""
        logits = logits.float()
        return torch.sigmoid(logits) if self.n_classes == 2 else logits.softmax(dim=1)

    def update_metrics(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        stage: str,
        pixel_spacing_mm: torch.Tensor | None = None,
    ) -> None:
        probability = self.probabilities(logits).cpu().numpy()
        labels = np.stack([masks_from_probabilities(p, self.n_classes) for p in probability])
        labels = torch.from_numpy(labels).to(mask.device)
        metrics = self.stage_metrics[stage]
        metrics["lv_dice"].update(dice_per_case(labels == LV, mask == LV))
        metrics["lv"].update(labels == LV, mask == LV)
        if self.n_classes == 3:
            metrics["rv_dice"].update(dice_per_case(labels == RV, mask == RV))
            metrics["rv"].update(labels == RV, mask == RV)

    def log_metrics(self, stage: str) -> None:
        metrics = self.stage_metrics[stage]
        lv = metrics["lv_dice"].compute()
        lv_mean, lv_sd = mean_and_sd(lv)
        summary = {
            "lv_dice": lv_mean,
            "lv_dice_sd": lv_sd,
            "detection_rate": (lv > 0.5).float().mean(),
            "dice_gt_075": (lv > 0.75).float().mean(),
            "n_cases": torch.tensor(float(lv.numel())),
        }
        if self.n_classes == 3:
            summary["rv_dice"] = metrics["rv_dice"].compute().mean()
        for structure in ("lv", "rv") if self.n_classes == 3 else ("lv",):
            boundary = metrics[structure].compute()
            summary |= {f"{structure}_{name}": value for name, value in boundary.items()}
        prog = {"lv_dice", "detection_rate"}
        for name, value in summary.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in prog, sync_dist=False)
        for metric in metrics.values():
            metric.reset()
