"""Save a PNG of test predictions: each case's frame at peak LV enhancement with contours.

Reference LV (solid) and RV (dashed) contours in white, predicted LV in red and RV in cyan, and
the case's LV Dice in the title. Written to ``<run dir>/figures/test_predictions.png`` and logged
as an image to W&B when a W&B logger is active.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from formats.atomic_file import atomic_write  # noqa: E402
from lightning_modules.segmentation_module import LV, RV, dice_per_case  # noqa: E402
from quantification.lv_mask import masks_from_probabilities  # noqa: E402


class PredictionFigure(pl.Callback):
    """At the end of testing, plot the first ``n_cases`` test cases with predicted masks.

    Args:
        dirpath: folder of the PNG (created if needed).
        n_cases: cases shown (from the first test batches).
    """

    def __init__(self, dirpath: str, n_cases: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.n_cases = n_cases

    @torch.no_grad()
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        images, masks, ids = [], [], []
        for batch in trainer.datamodule.test_dataloader():
            images.append(batch["image"]), masks.append(batch["mask"]), ids.extend(batch["case_id"])
            if len(ids) >= self.n_cases:
                break
        image = torch.cat(images)[: self.n_cases]
        reference = torch.cat(masks)[: self.n_cases]
        probability = pl_module.probabilities(pl_module(image.to(pl_module.device))).cpu()
        predicted = torch.from_numpy(
            np.stack(
                [masks_from_probabilities(p, pl_module.n_classes) for p in probability.numpy()]
            )
        )
        dice = dice_per_case(predicted == LV, reference == LV)
        path = self._plot(image.numpy(), reference.numpy(), predicted.numpy(), dice, ids)
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                logger.log_image("test/predictions", [str(path)])

    def _plot(self, image, reference, predicted, dice, ids) -> Path:
        n = len(image)
        cols = min(n, 4)
        rows = -(-n // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for k, ax in enumerate(axes.flat[:n]):
            lv = reference[k] == LV
            lv_mean = image[k][:, lv].mean(axis=1) if lv.any() else image[k].mean(axis=(1, 2))
            ax.imshow(image[k][int(lv_mean.argmax())], cmap="gray")
            for labels, color in ((reference[k], "white"), (predicted[k], "red")):
                ax.contour(labels == LV, levels=[0.5], colors=color, linewidths=1.2)
                rv_color = "white" if color == "white" else "cyan"
                if (labels == RV).any():
                    ax.contour(
                        labels == RV,
                        levels=[0.5],
                        colors=rv_color,
                        linewidths=1.0,
                        linestyles="dashed" if color == "white" else "solid",
                    )
            ax.set_title(f"{ids[k]}\nLV Dice {float(dice[k]):.2f}", fontsize=8)
        fig.suptitle(
            "Test predictions at peak LV frame (white: reference, red/cyan: predicted)", fontsize=9
        )
        fig.tight_layout()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / "test_predictions.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return path
