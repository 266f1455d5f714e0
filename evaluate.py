"""Evaluate models the way the source papers do: ``python evaluate.py [task=...] [overrides]``.

Composes ``conf/evaluate.yaml`` and runs its ``task`` (``aif`` | ``aif_ood`` | ``mapping`` |
``myocardium_ood``) with :func:`evaluation.tasks.evaluate`, which writes ``report.md``,
``metrics.json`` and ``figures/*.png`` into the run dir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Run the task of ``cfg.task`` (:func:`evaluation.tasks.evaluate`)."""
    from evaluation.tasks import evaluate

    try:
        evaluate(cfg)
    finally:
        if "wandb" in sys.modules:
            sys.modules["wandb"].finish()


if __name__ == "__main__":
    main()
