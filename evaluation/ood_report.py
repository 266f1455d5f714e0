"""Out-of-distribution AIF evaluation: one row per data family training never saw.

``python evaluate.py task=aif_ood`` runs the primary model (plus ``compare`` artifacts and the
legacy detector) on

- the in-distribution test split (the training phantoms' held-out patients),
- each phantom family of ``datamodules.synthetic.aif_phantom`` drawn outside the training ranges
  (``OUT_OF_DISTRIBUTION``: high baseline, large LV, strong uncorrected shading, low SNR, fast
  heart rate, dispersed bolus) and the ``classic`` family of the first generator,
- the independent generator (``evaluation.independent_aif_phantom``: other code, other geometry,
  other signal and kinetic models),
- any labelled AIF contract file the user names (e.g. real scans),

and writes ``report.md`` / ``metrics.json`` with detection rate (LV Dice > 0.5), Dice mean ± SD
and failure reasons per family and method.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from evaluation.aif_evaluation import CaseEvaluation
from evaluation.aif_report import method_summary
from formats.atomic_file import atomic_write

INDEPENDENT = "independent"
GOAL = {"detection_rate": 0.99, "lv_dice_mean": 0.85}  # every out-of-distribution family


def family_file(data_dir: str | os.PathLike, family: str, n_patients: int, seed: int) -> Path:
    """The cached evaluation file of a phantom family (written on first use)."""
    from datamodules.synthetic.aif_phantom import (
        GENERATOR_VERSION,
        phantom_family,
        write_aif_phantoms,
    )
    from evaluation.independent_aif_phantom import write_independent_phantoms

    data_dir = Path(data_dir)
    if family == INDEPENDENT:
        path = data_dir / f"aif_eval_{INDEPENDENT}_n{n_patients}_seed{seed}.h5"
        if not path.exists():
            write_independent_phantoms(path, n_patients, seed)
        return path
    name, ranges = phantom_family(family)
    path = data_dir / f"aif_eval_v{GENERATOR_VERSION}_{name}_p{n_patients}_seed{seed}.h5"
    if not path.exists():
        write_aif_phantoms(path, n_patients, seed, scans_per_patient=1, ranges=ranges)
    return path


def family_rows(
    results: dict[str, list[CaseEvaluation]], methods: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{family: {method: summary}}`` (``evaluation.aif_report.method_summary`` without the
    per-case failure list)."""
    rows = {}
    for family, cases in results.items():
        rows[family] = {}
        for method in methods:
            summary = method_summary(cases, method, primary=None)
            rows[family][method] = {
                k: summary[k]
                for k in (
                    "n_cases",
                    "detection_rate",
                    "lv_dice_mean",
                    "lv_dice_sd",
                    "dice_gt_075",
                    "n_failures",
                    "failure_reasons",
                )  # fmt: skip
            }
    return rows


def ood_markdown(rows: dict, methods: list[str], context: dict[str, Any]) -> str:
    """The report: one table per method, one row per family, with the goal beside it."""
    lines = [
        "# Out-of-distribution AIF evaluation",
        "",
        f"Model: {context.get('sources', {})}. Created {context.get('created_utc', '')}.",
        f"Goal on every out-of-distribution family: LV found (Dice > 0.5) in >= "
        f"{100 * GOAL['detection_rate']:.0f} % of series, mean LV Dice >= {GOAL['lv_dice_mean']}.",
        "",
    ]
    for method in methods:
        lines += [
            f"## {method}",
            "",
            "| family | cases | LV found (Dice > 0.5) | LV Dice mean ± SD | Dice > 0.75 "
            "| failures |",
            "|---|---|---|---|---|---|",
        ]
        for family, by_method in rows.items():
            s = by_method[method]
            reasons = ", ".join(f"{r} {n}" for r, n in s["failure_reasons"].items())
            lines.append(
                f"| {family} | {s['n_cases']} | {100 * s['detection_rate']:.1f} % | "
                f"{s['lv_dice_mean']:.3f} ± {s['lv_dice_sd']:.3f} | "
                f"{100 * s['dice_gt_075']:.1f} % | {s['n_failures']}"
                + (f" ({reasons})" if reasons else "")
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_ood_report(
    results: dict[str, list[CaseEvaluation]],
    methods: list[str],
    context: dict[str, Any],
    out_dir: str | os.PathLike,
) -> tuple[dict, dict[str, Path]]:
    """Write ``report.md`` and ``metrics.json`` into ``out_dir`` (atomically); returns the
    metrics and the files."""
    rows = family_rows(results, methods)
    metrics = {"task": "aif_ood", **context, "goal": GOAL, "families": rows}
    out = Path(out_dir)
    files = {"metrics": out / "metrics.json", "report": out / "report.md"}
    with atomic_write(files["metrics"]) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
    with atomic_write(files["report"]) as tmp:
        tmp.write_text(ood_markdown(rows, methods, context))
    return metrics, files
