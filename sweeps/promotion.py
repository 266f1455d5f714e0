"""Which job of a sweep is deployed: the rule stated in the config, or a promotion by hand.

Multirun jobs only export into their run directories (``<job>/export/<name>.ts``); no job
touches the deployed artifact, so the order in which jobs finish decides nothing. After the
sweep, :class:`SweepPromotion` (a Hydra callback, ``conf/hydra/default.yaml``) applies
``sweep_promotion`` (``conf/train.yaml``):

- ``none`` (default): nothing is deployed; the log names each name's best job and the command
  that would deploy it.
- ``best``: for each deployed name (a sweep over ``model=`` has several), the job with the best
  ``optimized_metric`` (its ``metrics.json``; ``sweep_promotion_mode`` max or min; ties go to
  the lowest job number) is promoted through the artifact index (:mod:`deployment.artifact_index`).
  Jobs without a finite metric, and exports of check runs, are left out.

``python -m sweeps.promotion TARGET`` (``make promote RUN=TARGET``) runs ``inline-cmr promote``
(:mod:`deployment.cli`) and also logs the promoted file to W&B with the alias ``best`` when its
run used W&B (:mod:`callbacks.wandb_model_artifact`).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from callbacks.wandb_model_artifact import log_promotion
from deployment import cli as deployment_cli
from deployment.artifact import read_metadata
from deployment.artifact_index import ArtifactIndex
from sweeps.run_summary import RECORD_NAME, read_run_record

log = logging.getLogger(__name__)

__all__ = ["RULES", "SweepCandidate", "SweepPromotion", "main", "pick_best", "sweep_candidates"]

RULES = ("none", "best")
MODES = ("max", "min")


@dataclass(frozen=True)
class SweepCandidate:
    """One job's export, with the metric the rule compares.

    Attributes:
        job_dir: the job's run directory.
        file: its export, ``<job_dir>/export/<name>.ts``.
        name: the deployed name it would replace (its ``export.artifact_path`` stem).
        artifacts_dir: the folder of that deployed file (and of its index).
        value: the job's ``optimized_metric`` (from ``metrics.json``).
        order: the job's position (job numbers compared as numbers): breaks ties.
    """

    job_dir: Path
    file: Path
    name: str
    artifacts_dir: Path
    value: float
    order: tuple


def _job_order(job_dir: Path, sweep_dir: Path) -> tuple:
    parts = job_dir.relative_to(sweep_dir).parts
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def sweep_candidates(
    sweep_dir: str | Path, metric: str, artifacts_dir: str | Path
) -> list[SweepCandidate]:
    """The exports of a sweep's finished jobs, each with its value of ``metric``.

    A job's deployed name and folder come from the ``export.artifact_path`` recorded in its
    export's metadata (``artifacts_dir/<file name>`` when the metadata has no config). Jobs
    without ``metrics.json``, without a finite ``metric`` or without an export are skipped, and
    so are exports of check runs (metadata ``check_run``).
    """
    sweep_dir = Path(sweep_dir)
    found = []
    for record_path in sorted(sweep_dir.rglob(RECORD_NAME)):
        job = record_path.parent
        value = read_run_record(record_path).metrics.get(metric)
        if value is None or not math.isfinite(value):
            log.info("%s: no finite %s; not a candidate", job, metric)
            continue
        for file in sorted((job / "export").glob("*.ts")):
            metadata = read_metadata(file)
            if metadata.get("check_run"):
                log.info(
                    "%s: a check run's export (%s); not a candidate",
                    file,
                    ", ".join(metadata["check_run"]),
                )
                continue
            config = metadata.get("config") or {}
            target = ((config.get("export") or {}) if isinstance(config, dict) else {}).get(
                "artifact_path"
            )
            target = Path(target) if target else Path(artifacts_dir) / file.name
            order = _job_order(job, sweep_dir)
            found.append(SweepCandidate(job, file, target.stem, target.parent, value, order))
    return found


def pick_best(
    candidates: Iterable[SweepCandidate], mode: str = "max"
) -> dict[tuple[Path, str], SweepCandidate]:
    """The best candidate per deployed file ``(artifacts_dir, name)``: highest (``max``) or lowest
    (``min``) value, ties to the lowest job; the input order plays no part.

    Example:
        >>> from pathlib import Path
        >>> jobs = [SweepCandidate(Path(n), Path(n) / "m.ts", "m", Path("a"), v, (int(n),))
        ...         for n, v in [("2", 0.9), ("0", 0.8), ("1", 0.9)]]
        >>> pick_best(jobs)[(Path("a"), "m")].job_dir
        PosixPath('1')
    """
    if mode not in MODES:
        raise ValueError(f"sweep_promotion_mode must be one of {MODES}, got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best: dict[tuple[Path, str], SweepCandidate] = {}
    for candidate in candidates:
        key = (candidate.artifacts_dir, candidate.name)
        current = best.get(key)
        rank = (-sign * candidate.value, candidate.order)
        if current is None or rank < (-sign * current.value, current.order):
            best[key] = candidate
    return best


def _settings(config: DictConfig) -> tuple[str, str, str] | None:
    """``(rule, mode, metric)`` of a train config; ``None`` for configs without the rule."""
    if "sweep_promotion" not in config:
        return None
    rule, mode = str(config.sweep_promotion), str(config.get("sweep_promotion_mode", "max"))
    if rule not in RULES:
        raise ValueError(f"sweep_promotion must be one of {RULES}, got {rule!r}")
    if mode not in MODES:
        raise ValueError(f"sweep_promotion_mode must be one of {MODES}, got {mode!r}")
    return rule, mode, str(config.optimized_metric)


class SweepPromotion(Callback):
    """Hydra callback: after the jobs of a multirun, apply ``sweep_promotion`` (module doc)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _settings(config)  # a typo fails before the jobs run, not after

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _settings(config)
        if settings is None:
            return
        rule, mode, metric = settings
        sweep_dir = Path(config.hydra.sweep.dir)
        artifacts_dir = OmegaConf.select(config, "paths.artifacts_dir", default="artifacts")
        best = pick_best(sweep_candidates(sweep_dir, metric, artifacts_dir), mode)
        if not best:
            log.info("Sweep %s: no job export to deploy (sweep_promotion=%s)", sweep_dir, rule)
        for (folder, name), job in sorted(best.items(), key=lambda item: str(item[0])):
            if rule == "none":
                log.info(
                    "Sweep %s: best job for %s by %s (%s) is %s (%.4g); nothing deployed "
                    "(sweep_promotion=none); deploy it with `make promote RUN=%s`",
                    sweep_dir,
                    name,
                    metric,
                    mode,
                    job.job_dir,
                    job.value,
                    job.job_dir,
                )
                continue
            reason = f"sweep rule: best {metric} ({mode}) {job.value:.6g} in {sweep_dir}"
            version = ArtifactIndex(folder).promote(job.file, name, reason, job.job_dir)
            log.info(
                "Sweep %s: deployed %s (job %s, %s %.4g) as %s",
                sweep_dir,
                version.label,
                job.job_dir,
                metric,
                job.value,
                folder / f"{name}.ts",
            )
            log_promotion(version)


def main(argv: list[str] | None = None) -> int:
    """``make promote RUN=<run dir | .ts | NAME@VERSION>``: ``deployment.cli``'s ``promote``, and
    W&B's ``best`` alias moved to the promoted file when its run used W&B."""
    return deployment_cli.main(["promote", *(sys.argv[1:] if argv is None else argv)],
                               on_promoted=(log_promotion,))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
