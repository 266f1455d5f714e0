"""Which runs are checks of the loop, not trainings: their models must never be deployed.

A check run (``trainer.fast_dev_run``, any ``debug=*`` preset, a ``limit_*_batches`` fraction
below 1, or weights that are no saved best checkpoint) still exports, into its run directory, so
that the export path is checked too; :class:`callbacks.export.ModelExport` records the reasons in
the artifact's metadata (``check_run``) and never promotes it (docs/deployment.md, "Which model
is deployed").
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_run_reasons"]

_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


def check_run_reasons(
    trainer: Any, checkpoint: str | None, debug_preset: str | None = None
) -> list[str]:
    """Why a run is a check and not a training (empty for a real training run).

    Args:
        trainer: the Lightning ``Trainer`` (reads ``fast_dev_run`` and ``limit_*_batches``;
            an integer limit is a batch count, as in Lightning, and is not a check).
        checkpoint: the best checkpoint whose weights are exported (``None``: none was saved).
        debug_preset: the ``debug`` config choice (``fdr``, ``limit``, ...), ``None`` if unset.

    Example:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(fast_dev_run=False, limit_train_batches=0.25,
        ...                           limit_val_batches=1.0, limit_test_batches=2)
        >>> check_run_reasons(trainer, "best.ckpt")
        ['trainer.limit_train_batches=0.25']
    """
    reasons = []
    if getattr(trainer, "fast_dev_run", False):
        reasons.append("trainer.fast_dev_run")
    if debug_preset:
        reasons.append(f"debug={debug_preset}")
    for name in _LIMITS:
        value = getattr(trainer, name, 1.0)
        if isinstance(value, float) and value < 1.0:
            reasons.append(f"trainer.{name}={value:g}")
    if not checkpoint:
        reasons.append("no best checkpoint")
    return reasons
