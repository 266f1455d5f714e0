"""Progress in any terminal: Lightning's rich bar on a TTY, one line per epoch everywhere else.

With stdout redirected (a log file, ``nohup``, CI, ``| tee``) the rich bar draws nothing, so a
run would show no sign of life for its whole length. :func:`progress_bar` then returns
:class:`EpochLines`, which prints after every training epoch (after its validation)::

    epoch 3/8  train/loss 0.4123  val/lv_dice 0.9210  elapsed 2:41  remaining ~4:30
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar


def _clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochLines(ProgressBar):
    """A progress "bar" of one line per training epoch (it replaces Lightning's default bar).

    Args:
        metric: the validation metric printed beside the training loss (the checkpoint monitor).
        stream: where lines go (default: ``sys.stdout`` at print time), flushed after each line.

    The remaining time is the mean epoch time so far times the epochs left to ``max_epochs``
    (an upper bound when early stopping is on).
    """

    def __init__(self, metric: str = "val/lv_dice", stream: TextIO | None = None) -> None:
        super().__init__()
        self.metric = metric
        self.stream = stream
        self._enabled = True
        self._fit_start = 0.0
        self._epochs_timed = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._epochs_timed = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero) or trainer.sanity_checking:
            return
        self._epochs_timed += 1
        elapsed = time.perf_counter() - self._fit_start
        done, total = trainer.current_epoch + 1, trainer.max_epochs
        parts = [f"epoch {done}/{total}" if total and total > 0 else f"epoch {done}"]
        metrics = trainer.callback_metrics
        for name in ("train/loss", self.metric):
            if name in metrics:
                parts.append(f"{name} {float(metrics[name]):.4f}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and total > done:
            per_epoch = elapsed / self._epochs_timed
            parts.append(f"remaining ~{_clock(per_epoch * (total - done))}")
        self._print("  ".join(parts))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            self._print(f"tested {sum(trainer.num_test_batches)} batches")


def progress_bar(metric: str = "val/lv_dice", rich_on_tty: bool = True) -> ProgressBar:
    """Lightning's rich bar when stdout is a terminal, else :class:`EpochLines` for ``metric``."""
    if rich_on_tty and sys.stdout.isatty():
        return RichProgressBar()
    return EpochLines(metric)
