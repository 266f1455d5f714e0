"""Channels-last memory format for convolution-heavy training on GPUs (``trainer=gpu``).

Tensor cores run NHWC convolutions without the layout transposes cuDNN otherwise inserts around
each bf16 convolution. :class:`ChannelsLast` converts the module's weights once when a stage
starts and every image batch ``[B, T, RO, E1]`` as it arrives; values are unchanged (only the
strides differ), so checkpoints and exports are unaffected.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def to_channels_last(batch: Any, key: str = "image") -> Any:
    """Convert ``batch[key]`` (a 4-D tensor) to channels_last in place; returns the batch."""
    if isinstance(batch, dict) and isinstance(batch.get(key), torch.Tensor):
        if batch[key].ndim == 4:
            batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
    return batch


class ChannelsLast(pl.Callback):
    """Keep weights and image batches in ``torch.channels_last`` during fit, validate and test.

    Args:
        key: the batch entry holding the network input ``[B, C, H, W]``.
    """

    def __init__(self, key: str = "image") -> None:
        self.key = key

    def _convert_module(self, pl_module: pl.LightningModule) -> None:
        pl_module.to(memory_format=torch.channels_last)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._convert_module(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._convert_module(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._convert_module(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        to_channels_last(batch, self.key)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        to_channels_last(batch, self.key)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        to_channels_last(batch, self.key)
