"""Mapping evaluation summary (docs/method.md §B4/B5): agreement per patient, slice and AHA segment.

For automated vs reference T2 (ms) or ECV (%): mean ± SD of both, Wilcoxon signed-rank P,
Pearson R with 95 % CI, regression slope with 95 % CI, Bland-Altman bias ± SD with the 1.96 SD
limits; success rates (slices: method.md §B4 valid-image rule; patients: a successful basal, mid and
apical slice), refinement rate (replaced masks / images), DSC and boundary distances (HD95,
ASSD: mm when every slice gives its pixel size, pixels otherwise; empty predictions counted) of
the automated masks, and
sensitivity/specificity per patient for T2 >= 58 ms or ECV >= 29 %. ``table2_markdown`` lays out
several experiments (``exp1``...``exp6``) like docs/method.md §B5 Table 2.

Which values are paired:
* patient: the mean of the myocardial pixels of all successful slices, for patients that are a
  success of the automated pipeline and have a finite reference mean;
* slice: the map means of slices that succeed in both runs;
* segment: the AHA segment means (1-16) that are finite in both runs, over those slices.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import published
from evaluation.mapping_evaluation import MappingCaseEvaluation
from formats.atomic_file import atomic_write
from lightning_modules.boundary_metrics import concatenate_distances, summarize_boundary
from quantification.aha_segments import patient_success
from quantification.statistics import diagnostic_accuracy, mean_sd, paired_agreement

THRESHOLDS = {"t2": 58.0, "ecv": 29.0}
"""Abnormal if >= this (docs/method.md §B4: normal mean + 2 SD): T2 in ms, ECV in %."""
UNITS = {"t2": "ms", "ecv": "%"}
LEVELS = ("patient", "slice", "segment")


def _pixels_mean(slices: Sequence[Any]) -> float:
    good = [s.values[np.isfinite(s.values)] for s in slices if s.success]
    pixels = np.concatenate(good) if good else np.zeros(0)
    return float(pixels.mean()) if pixels.size else float("nan")


def paired_values(cases: Sequence[MappingCaseEvaluation]) -> dict[str, tuple[np.ndarray, ...]]:
    """(automated, reference) value arrays per level (module docstring), float64 [n_level]."""
    pairs: dict[str, tuple[list[float], list[float]]] = {level: ([], []) for level in LEVELS}
    for case in cases:
        ok_levels = [s.level for s in case.automated if s.success and s.level]
        auto_mean, ref_mean = _pixels_mean(case.automated), _pixels_mean(case.reference)
        if patient_success(ok_levels) and np.isfinite(auto_mean) and np.isfinite(ref_mean):
            pairs["patient"][0].append(auto_mean)
            pairs["patient"][1].append(ref_mean)
        for auto, ref in zip(case.automated, case.reference, strict=True):
            if not (auto.success and ref.success):
                continue
            if np.isfinite(auto.mean) and np.isfinite(ref.mean):
                pairs["slice"][0].append(auto.mean)
                pairs["slice"][1].append(ref.mean)
            both = np.isfinite(auto.segments) & np.isfinite(ref.segments)
            pairs["segment"][0].extend(auto.segments[both].tolist())
            pairs["segment"][1].extend(ref.segments[both].tolist())
    return {k: (np.asarray(a, float), np.asarray(r, float)) for k, (a, r) in pairs.items()}


def agreement_summary(auto: np.ndarray, ref: np.ndarray) -> dict[str, Any] | None:
    """JSON-able paired agreement (Wilcoxon, R [CI], slope [CI], Bland-Altman); None if n < 3."""
    if len(auto) < 3:
        return None
    a = paired_agreement(auto, ref, test="wilcoxon")
    fit = a.regression
    return {
        "n": a.n,
        "auto_mean": a.auto_mean,
        "auto_sd": a.auto_sd,
        "ref_mean": a.ref_mean,
        "ref_sd": a.ref_sd,
        "p_wilcoxon": a.p_value,
        "r": None if not np.isfinite(a.r) else a.r,
        "r_ci": [None if not np.isfinite(v) else v for v in a.r_ci],
        "slope": fit.slope if fit else None,
        "slope_ci": list(fit.slope_ci) if fit else None,
        "bland_altman": asdict(a.bland_altman),
    }


def mapping_boundary(cases: Sequence[MappingCaseEvaluation]) -> dict[str, Any] | None:
    """HD95 / ASSD of the automated myocardium masks (``BoundarySummary`` fields and ``unit``):
    mm when every case has them in mm, pixels otherwise; None when not measured."""
    if not cases or any(c.boundary_px is None for c in cases):
        return None
    in_mm = all(c.boundary_mm is not None for c in cases)
    parts = [c.boundary_mm if in_mm else c.boundary_px for c in cases]
    return {
        "unit": "mm" if in_mm else "px",
        **asdict(summarize_boundary(concatenate_distances(parts))),
    }


def mapping_metrics(
    cases: Sequence[MappingCaseEvaluation], quantity: str, context: Mapping[str, Any]
) -> dict[str, Any]:
    """Everything ``metrics.json`` holds for a mapping evaluation (JSON-able)."""
    if quantity not in THRESHOLDS:
        raise ValueError(f"quantity={quantity!r}: expected t2 or ecv")
    if not cases:
        raise ValueError("no case to summarise")
    slices = [s for c in cases for s in c.automated]
    n_images = sum(s.n_images for s in slices)
    dice = np.concatenate([c.dice for c in cases])
    pairs = paired_values(cases)
    n_patient_ok = sum(
        patient_success(s.level for s in c.automated if s.success and s.level) for c in cases
    )
    auto_pt, ref_pt = pairs["patient"]
    accuracy = (
        asdict(diagnostic_accuracy(auto_pt, ref_pt, THRESHOLDS[quantity])) if len(auto_pt) else None
    )
    dice_mean, dice_sd = mean_sd(dice) if dice.size else (None, None)
    return {
        "task": "mapping",
        "quantity": quantity,
        "unit": UNITS[quantity],
        **context,
        "n_patients": len(cases),
        "n_slices": len(slices),
        "patient_success": {"n": n_patient_ok, "rate": n_patient_ok / len(cases)},
        "slice_success": {
            "n": sum(s.success for s in slices),
            "rate": sum(s.success for s in slices) / len(slices) if slices else None,
        },
        "refinement": {
            "refined_images": sum(s.refined_images for s in slices),
            "n_images": n_images,
            "rate": sum(s.refined_images for s in slices) / n_images if n_images else None,
        },
        "dsc": {"n_images": int(dice.size), "mean": dice_mean, "sd": dice_sd},
        "boundary": mapping_boundary(cases),
        "agreement": {level: agreement_summary(*pairs[level]) for level in LEVELS},
        "diagnostic_accuracy": accuracy,
        "failed_slices": [
            {"case_id": c.case_id, "slice_id": s.slice_id, "reason": s.reason}
            for c in cases
            for s in c.automated
            if not s.success
        ],
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ci(ci: Sequence[float | None] | None, digits: int = 2) -> str:
    if not ci or ci[0] is None:
        return "–"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def mapping_report_markdown(metrics: Mapping[str, Any], figures: Mapping[str, str]) -> str:
    """The Markdown report of one mapping evaluation."""
    q, unit = metrics["quantity"], metrics["unit"]
    name = {"t2": "T2", "ecv": "ECV"}[q]
    exp = metrics.get("exp")
    lines = [
        f"# {name} mapping: evaluation report" + (f" (exp{exp})" if exp else ""),
        "",
        *[f"- {k}: `{v}`" for k, v in metrics.get("sources", {}).items()],
        f"- {metrics['n_patients']} patients, {metrics['n_slices']} slices",
        "",
        "| success / quality | value |",
        "|---|---|",
        f"| patient success (basal, mid and apical slice) | {metrics['patient_success']['n']} / "
        f"{metrics['n_patients']} ({100 * metrics['patient_success']['rate']:.0f} %) |",
        f"| slice success (docs/method.md §B4 valid images) | {metrics['slice_success']['n']} / "
        f"{metrics['n_slices']} ({100 * (metrics['slice_success']['rate'] or 0):.0f} %) |",
        f"| refinement rate (replaced masks / images) | {metrics['refinement']['refined_images']}"
        f" / {metrics['refinement']['n_images']} "
        f"({100 * (metrics['refinement']['rate'] or 0):.1f} %) |",
        f"| DSC of the automated masks ({metrics['dsc']['n_images']} images) | "
        f"{_fmt(metrics['dsc']['mean'])} ± {_fmt(metrics['dsc']['sd'])} |",
        *_boundary_rows(metrics.get("boundary")),
        "",
        f"## Automated vs reference {name} ({unit})",
        "",
        "| level | n | automated | reference | P (Wilcoxon) | R [95 % CI] | slope [95 % CI] | "
        "Bland-Altman bias ± SD (limits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level in LEVELS:
        a = metrics["agreement"][level]
        if a is None:
            lines.append(f"| {level} | < 3 | – | – | – | – | – | – |")
            continue
        ba = a["bland_altman"]
        lines.append(
            f"| {level} | {a['n']} | {a['auto_mean']:.1f} ± {a['auto_sd']:.1f} | "
            f"{a['ref_mean']:.1f} ± {a['ref_sd']:.1f} | {_p(a['p_wilcoxon'])} | "
            f"{_fmt(a['r'])} {_ci(a['r_ci'])} | {_fmt(a['slope'])} {_ci(a['slope_ci'])} | "
            f"{ba['bias']:.2f} ± {ba['sd']:.2f} ({ba['lower']:.2f}, {ba['upper']:.2f}) |"
        )
    acc = metrics["diagnostic_accuracy"]
    if acc is not None:
        sens, spec = published.MAPPING_SENS_SPEC[q]
        pct = lambda v: "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"  # noqa: E731
        lines += [
            "",
            f"Per patient, {name} ≥ {acc['threshold']:g} {unit}: "
            f"sensitivity {pct(acc['sensitivity'])} ({acc['tp']}/{acc['tp'] + acc['fn']}), "
            f"specificity {pct(acc['specificity'])} "
            f"({acc['tn']}/{acc['tn'] + acc['fp']}); paper (N0): {sens} % / {spec} %.",
        ]
    if metrics["failed_slices"]:
        lines += ["", "### Failed slices", "", "| case | slice | reason |", "|---|---|---|"]
        lines += [f"| {f['case_id']} | {f['slice_id']} | {f['reason']} |"
                  for f in metrics["failed_slices"]]  # fmt: skip
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"- {title}: ![{title}]({path})" for title, path in figures.items()]
    lines.append("")
    return "\n".join(lines)


def _boundary_rows(b: dict[str, Any] | None) -> list[str]:
    """Report rows of the automated masks' HD95 and ASSD (none when not measured)."""
    if b is None:
        return []
    what = f"of the automated masks ({b['n_measured']} images, {b['unit']})"
    pm = lambda m, sd: "–" if m is None else f"{m:.2f} ± {sd:.2f}"  # noqa: E731
    return [
        f"| HD95 {what} | {pm(b['hd95_mean'], b['hd95_sd'])} |",
        f"| ASSD {what} | {pm(b['assd_mean'], b['assd_sd'])} |",
        f"| empty / spurious automated masks (not in the means) | {b['n_empty_prediction']} / "
        f"{b['n_spurious']} |",
    ]


TABLE2_ROWS = (
    ("refined", lambda m: f"{m['refinement']['refined_images']} "
                          f"({100 * (m['refinement']['rate'] or 0):.1f} %)"),
    ("DSC", lambda m: f"{_fmt(m['dsc']['mean'])} ± {_fmt(m['dsc']['sd'])}"),
    ("SR patients", lambda m: f"{m['patient_success']['n']}/{m['n_patients']} "
                              f"({100 * m['patient_success']['rate']:.0f})"),
    ("slope pt", lambda m: _slope(m, "patient")),
    ("R pt", lambda m: _r(m, "patient")),
    ("SR slices", lambda m: f"{m['slice_success']['n']}/{m['n_slices']} "
                            f"({100 * (m['slice_success']['rate'] or 0):.0f})"),
    ("slope sl", lambda m: _slope(m, "slice")),
    ("R sl", lambda m: _r(m, "slice")),
    ("slope seg", lambda m: _slope(m, "segment")),
    ("R seg", lambda m: _r(m, "segment")),
)  # fmt: skip
"""Rows of docs/method.md §B5 Table 2 and how each is read from a mapping ``metrics.json``."""


def _slope(m: Mapping[str, Any], level: str) -> str:
    a = m["agreement"][level]
    return "–" if a is None or a["slope"] is None else f"{a['slope']:.2f} {_ci(a['slope_ci'])}"


def _r(m: Mapping[str, Any], level: str) -> str:
    a = m["agreement"][level]
    return "–" if a is None or a["r"] is None else f"{a['r']:.2f} {_ci(a['r_ci'])}"


def table2_markdown(metrics_by_exp: Mapping[str, Mapping[str, Any]]) -> str:
    """method.md §B5 Table 2 from one mapping ``metrics.json`` per experiment (``exp1``...), with
    the
    published values in italics below each of our rows."""
    exps = list(metrics_by_exp)
    lines = ["| | " + " | ".join(exps) + " |", "|---|" + "---|" * len(exps)]
    paper_index = {"refined": 0, "DSC": (1, 2), "SR patients": 3, "slope pt": 4, "R pt": 5,
                   "SR slices": 6, "slope sl": 7, "R sl": 8, "slope seg": 9,
                   "R seg": 10}  # fmt: skip
    for row, read in TABLE2_ROWS:
        lines.append(f"| {row} | " + " | ".join(read(metrics_by_exp[e]) for e in exps) + " |")
        cells = []
        for e in exps:
            pub = published.MAPPING_TABLE2.get(e)
            i = paper_index[row]
            if pub is None:
                cells.append("")
            elif isinstance(i, tuple):
                cells.append(f"*{pub[i[0]]} ± {pub[i[1]]}*")
            else:
                suffix = " %" if row in ("refined", "SR patients", "SR slices") else ""
                cells.append(f"*{pub[i]}{suffix}*")
        lines.append("| *paper* | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_mapping_report(
    cases: Sequence[MappingCaseEvaluation],
    quantity: str,
    context: Mapping[str, Any],
    out_dir: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Write ``report.md``, ``metrics.json`` and the agreement figure into ``out_dir``."""
    from evaluation.report_figures import agreement_plots

    out = Path(out_dir)
    metrics = mapping_metrics(cases, quantity, context)
    files: dict[str, Path] = {}
    pairs = {k: v for k, v in paired_values(cases).items() if len(v[0]) >= 3}
    name = {"t2": "T2", "ecv": "ECV"}[quantity]
    if pairs:
        files["agreement"] = agreement_plots(
            {f"{level} {name} ({UNITS[quantity]})": v for level, v in pairs.items()},
            out / "figures" / "mapping_agreement.png",
            f"{name}: automated vs reference masks, per patient / slice / segment",
        )
    metrics["figures"] = {k: str(p.relative_to(out)) for k, p in files.items()}
    files["metrics"] = out / "metrics.json"
    with atomic_write(files["metrics"]) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    files["report"] = out / "report.md"
    links = {"regression and Bland-Altman": metrics["figures"]["agreement"]} if pairs else {}
    with atomic_write(files["report"]) as tmp:
        tmp.write_text(mapping_report_markdown(metrics, links))
    return metrics, files


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.mapping_report RUN_DIR_OR_METRICS_JSON...``: print Table 2.

    Each argument is a mapping evaluation's ``metrics.json`` (or its run dir); the column name
    is its ``exp`` (``exp1``...), else its position.
    """
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(main.__doc__, file=sys.stderr)
        return 2
    table = {}
    for i, arg in enumerate(args):
        path = Path(arg) / "metrics.json" if Path(arg).is_dir() else Path(arg)
        metrics = json.loads(path.read_text())
        if metrics.get("task") != "mapping":
            print(f"error: {path}: not a mapping evaluation (task {metrics.get('task')!r})",
                  file=sys.stderr)  # fmt: skip
            return 2
        table[f"exp{metrics['exp']}" if metrics.get("exp") else f"run{i + 1}"] = metrics
    print(table2_markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
