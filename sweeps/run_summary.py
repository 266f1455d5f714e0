"""Final metrics of each run (``<run dir>/metrics.json``) and their summary across a sweep.

``train.py`` writes one record per run (atomically, rank 0 only)::

    {"metrics": {"test/lv_dice": 0.91, ...}, "overrides": ["model=resunet2cs", "seed=1"],
     "seed": 1, "model": "resunet2cs", "optimized_metric": "val/lv_dice"}

:func:`summarize` groups the records of a multirun by configuration, i.e. by the overrides that
vary between its jobs except the repeat keys (``seed`` by default, add ``data.fold`` to pool the
folds of a cross-validation), and gives mean ± SD (sample SD, ddof 1) of each metric per group.
Job directories with a ``.hydra/`` folder but no ``metrics.json`` count as failed jobs.
``python summarize_runs.py <sweep dir>`` prints the Markdown table and writes ``summary.md`` and
``summary.csv`` beside the jobs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from formats.atomic_file import atomic_write

RECORD_NAME = "metrics.json"
DEFAULT_METRICS = (
    "test/lv_dice",
    "test/detection_rate",
    "test/dice_gt_075",
    "test/rv_dice",
    "test/lv_hd95_px",
    "test/lv_assd_px",
    "test/lv_n_empty",
    "val/lv_dice",
    "test/dsc",
    "test/myo_hd95_px",
    "test/myo_hd95_mm",
    "test/myo_assd_px",
    "test/myo_n_empty",
    "val/dsc",
)
"""Tabulated by default, those a run has (AIF or myocardium): Dice, boundary distances (HD95 and
ASSD, the empty predictions counted beside them), the validation metric."""


def write_run_record(
    run_dir: str | Path,
    metrics: Mapping[str, float],
    overrides: Sequence[str],
    seed: int | None,
    model: str | None,
    optimized_metric: str | None,
) -> Path:
    """Write ``<run_dir>/metrics.json`` atomically; returns its path.

    Args:
        run_dir: the run's output directory.
        metrics: final metric name → value (non-finite values are stored as ``null``).
        overrides: the job's command-line overrides (``hydra.overrides.task``).
        seed, model, optimized_metric: recorded for the summary and for people.
    """
    record = {
        "metrics": {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()},
        "overrides": list(overrides),
        "seed": seed,
        "model": model,
        "optimized_metric": optimized_metric,
    }
    path = Path(run_dir) / RECORD_NAME
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    return path


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its directory, overrides as ``key → value`` and its final metrics."""

    run_dir: Path
    overrides: dict[str, str]
    metrics: dict[str, float | None]


def _parse_overrides(overrides: Iterable[str], source: Path) -> dict[str, str]:
    parsed = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ValueError(f"{source}: override {item!r} is not of the form key=value")
        parsed[key.lstrip("+~")] = value
    return parsed


def read_run_record(path: str | Path) -> RunRecord:
    """Read one ``metrics.json`` written by :func:`write_run_record`."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the run record ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'metrics' object")
    if not isinstance(record.get("overrides"), list):
        raise ValueError(f"{path}: expected an 'overrides' list of key=value strings")
    return RunRecord(path.parent, _parse_overrides(record["overrides"], path), record["metrics"])


def find_runs(roots: Iterable[str | Path]) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs (``metrics.json``) and failed jobs (``.hydra/``, no record) under roots."""
    records, failed = [], []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such run or sweep directory")
        for record in sorted(root.rglob(RECORD_NAME)):
            records.append(read_run_record(record))
        for hydra_dir in sorted(root.rglob(".hydra")):
            if not (hydra_dir.parent / RECORD_NAME).exists():
                failed.append(hydra_dir.parent)
    return records, failed


@dataclass(frozen=True)
class ConfigSummary:
    """Mean and SD of each metric over the runs of one configuration.

    Attributes:
        config: the varying override keys → their values in this configuration.
        n_runs: runs pooled (e.g. seeds).
        mean, sd: metric → mean and sample SD (ddof 1; NaN with one run or no values).
        repeats: the values of the repeat keys pooled, e.g. ``["seed=1", "seed=2"]``.
    """

    config: dict[str, str]
    n_runs: int
    mean: dict[str, float]
    sd: dict[str, float]
    repeats: list[str]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(
    records: Sequence[RunRecord], metrics: Sequence[str], repeat_keys: Sequence[str] = ("seed",)
) -> tuple[list[str], list[ConfigSummary]]:
    """Group runs by configuration and pool the repeats.

    Args:
        records: finished runs.
        metrics: metric names to summarise (missing or null values are skipped).
        repeat_keys: override keys whose values are repeats of one configuration.

    Returns:
        The configuration keys (overrides that vary between runs, minus ``repeat_keys``, sorted)
        and one :class:`ConfigSummary` per configuration, in order of first appearance.
    """
    all_keys = sorted({k for r in records for k in r.overrides})
    varying = [k for k in all_keys if len({r.overrides.get(k) for r in records}) > 1]
    config_keys = [k for k in varying if k not in repeat_keys and not k.startswith("hydra.")]
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        key = tuple(record.overrides.get(k, "") for k in config_keys)
        groups.setdefault(key, []).append(record)
    summaries = []
    for values, runs in groups.items():
        mean, sd = {}, {}
        for name in metrics:
            found = [r.metrics.get(name) for r in runs]
            mean[name], sd[name] = _mean_sd([float(v) for v in found if v is not None])
        repeats = [
            ",".join(f"{k}={r.overrides[k]}" for k in repeat_keys if k in r.overrides) for r in runs
        ]
        config = dict(zip(config_keys, values, strict=True))
        summaries.append(ConfigSummary(config, len(runs), mean, sd, repeats))
    return config_keys, summaries


def _cell(mean: float, sd: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def to_markdown(
    config_keys: Sequence[str],
    summaries: Sequence[ConfigSummary],
    metrics: Sequence[str],
    digits: int = 3,
) -> str:
    """A Markdown table: configuration columns, n runs, then ``mean ± SD`` per metric."""
    header = [*config_keys, "n", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s.config[k] for k in config_keys] + [str(s.n_runs)]
        cells += [_cell(s.mean[m], s.sd[m], digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(
    config_keys: Sequence[str], summaries: Sequence[ConfigSummary], metrics: Sequence[str]
) -> str:
    """CSV: configuration columns, ``n_runs``, then ``<metric>_mean`` and ``<metric>_sd``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [*config_keys, "n_runs", *(f"{m}_{stat}" for m in metrics for stat in ("mean", "sd"))]
    )
    for s in summaries:
        row: list[object] = [s.config[k] for k in config_keys] + [s.n_runs]
        for m in metrics:
            row += ["" if math.isnan(s.mean[m]) else repr(s.mean[m])]
            row += ["" if math.isnan(s.sd[m]) else repr(s.sd[m])]
        writer.writerow(row)
    return buffer.getvalue()


def write_text(path: str | Path, text: str) -> Path:
    """Write a report file atomically."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path
