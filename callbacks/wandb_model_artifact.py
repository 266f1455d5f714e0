"""Exports as W&B model artifacts, so the dashboard shows which run produced the deployed model.

Each export of a run with the W&B logger is logged as an artifact of type ``model`` named after
the deployed name (``aif_resunet3cs``), with the index record as its metadata (sha256, task,
model, created time, source run, test metrics, exporting CPU, ``deployed_as``), aliased
``latest``, and ``best`` when it is promoted. A promotion after the run (a sweep's rule, ``make
promote``) logs the same file again with ``best`` from a short run of job type ``promote`` in the
source run's directory (``<run dir>/wandb/``); W&B recognises the identical file as the same
artifact version. The logger is offline by default: nothing is uploaded at run time, and
``wandb sync <run dir>/wandb/offline-run-*`` uploads the runs with their artifacts. The file is
referenced in place (``policy="immutable"``: no copy in W&B's staging folder), so sync before
deleting the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from deployment.artifact_index import ArtifactVersion, export_record

log = logging.getLogger(__name__)

__all__ = ["log_export", "log_promotion"]

ARTIFACT_TYPE = "model"


def _log_artifact(run: Any, name: str, file: Path, metadata: dict[str, Any], aliases: list[str]):
    import wandb

    artifact = wandb.Artifact(name, type=ARTIFACT_TYPE, metadata=metadata)
    artifact.add_file(str(file.resolve()), name=file.name, policy="immutable")
    run.log_artifact(artifact, aliases=aliases)


def log_export(trainer: pl.Trainer, name: str, file: Path, deployed: ArtifactVersion | None) -> int:
    """Log an export to every W&B logger of ``trainer``; returns how many logged it.

    Args:
        name: the deployed name, used as the W&B artifact name.
        file: the exported ``.ts`` in the run directory (``<run dir>/export/``).
        deployed: the index version it became (aliases ``latest`` and ``best``), or ``None``
            (alias ``latest`` only).
    """
    from pytorch_lightning.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return 0
    record = deployed.record if deployed else export_record(file, file.parent.parent)
    metadata = {**record, "deployed_as": deployed.label if deployed else None}
    aliases = ["latest", "best"] if deployed else ["latest"]
    for logger in loggers:
        _log_artifact(logger.experiment, name, file, metadata, aliases)
        log.info("Logged %s to W&B as model artifact %s (%s)", file, name, ", ".join(aliases))
    return len(loggers)


def log_promotion(version: ArtifactVersion) -> Path | None:
    """Log a promoted version with the alias ``best`` from its source run's W&B folder.

    Only when the source run logged to W&B (``<source run>/wandb/`` exists): the project, group
    and online/offline mode are that run's (``logger.wandb`` of its ``.hydra/config.yaml``).
    Returns the folder of the new W&B run, or ``None`` when nothing was logged.
    """
    import wandb

    source = version.record.get("source_run")
    if not source or not (Path(source) / "wandb").is_dir():
        log.info("%s: its source run did not log to W&B; no W&B alias to move", version.label)
        return None
    run_dir = Path(source)
    saved = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create()
    offline = OmegaConf.select(config, "logger.wandb.offline", default=True)
    run = wandb.init(
        project=OmegaConf.select(config, "logger.wandb.project", default="inline-cmr"),
        group=OmegaConf.select(config, "experiment_name", default=None),
        job_type="promote",
        name=f"promote_{version.label}",
        dir=str(run_dir),
        mode="offline" if offline else "online",
        reinit="create_new",
    )
    try:
        metadata = {**version.record, "deployed_as": version.label}
        _log_artifact(run, version.name, version.path, metadata, ["best"])
        folder = Path(run.dir).parent
    finally:
        run.finish()
    log.info("Logged %s to W&B with alias best (%s)", version.label, folder)
    return folder
