"""AIF evaluation summary (docs/method.md §A7): metrics.json content and the Markdown report.

Per method: detection rate (LV Dice > 0.5), Dice mean ± SD, share with Dice > 0.75, failures with
their reason, paired t-test of Dice against the primary model on the same cases; boundary
distances of the LV (and RV) masks, HD95 and ASSD in pixels (mean ± SD over the cases where both
masks exist, with the empty and spurious predictions counted beside them); AIF curves from
the method's LV vs the reference LV: curve correlation, and per first-pass feature the mean ± SD of
both, paired t-test P, mean % difference and Bland-Altman. Published values (method.md §A7) are
printed
beside ours.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import published
from evaluation.aif_evaluation import CaseEvaluation
from evaluation.detection_outcome import GOOD_DICE, SUCCESS_DICE
from formats.atomic_file import atomic_write
from lightning_modules.boundary_metrics import concatenate_distances, summarize_boundary
from quantification.statistics import mean_sd, paired_agreement, paired_t_test

FEATURES = ("foot_s", "peak_s", "valley_s", "first_pass_s", "peak_value", "auc")
"""First-pass features compared (``quantification.aif_curve``): times in s, values normalised."""
FEATURE_LABELS = {
    "foot_s": "foot time (s)",
    "peak_s": "peak time (s)",
    "valley_s": "valley time (s)",
    "first_pass_s": "first-pass duration (s)",
    "peak_value": "peak value (normalised)",
    "auc": "AUC (normalised · sample)",
}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def method_summary(cases: list[CaseEvaluation], method: str, primary: str | None) -> dict[str, Any]:
    """Detection and AIF agreement of one method over all cases (JSON-able)."""
    dice = np.array([c.methods[method].lv_dice for c in cases])
    dice_mean, dice_sd = mean_sd(dice)
    failures = [
        {
            "case_id": c.case_id,
            "lv_dice": c.methods[method].lv_dice,
            "reason": c.methods[method].reason,
        }
        for c in cases
        if c.methods[method].reason
    ]
    summary: dict[str, Any] = {
        "n_cases": len(cases),
        "detection_rate": float(np.mean(dice > SUCCESS_DICE)),
        "lv_dice_mean": dice_mean,
        "lv_dice_sd": dice_sd,
        "dice_gt_075": float(np.mean(dice > GOOD_DICE)),
        "n_failures": len(failures),
        "failure_reasons": dict(Counter(f["reason"] for f in failures)),
        "failures": failures,
        "p_dice_vs_primary": None,
        "boundary": boundary_summary(cases, method),
    }
    if primary is not None and method != primary and len(cases) >= 2:
        other = np.array([c.methods[primary].lv_dice for c in cases])
        summary["p_dice_vs_primary"] = paired_t_test(dice, other)
    found = [c for c in cases if c.methods[method].features is not None]
    cc = np.array([c.methods[method].curve_cc for c in found])
    cc = cc[np.isfinite(cc)]
    summary["aif"] = {"n_cases": len(found), "curve_cc_mean": None, "curve_cc_sd": None}
    if len(cc):
        summary["aif"]["curve_cc_mean"], summary["aif"]["curve_cc_sd"] = mean_sd(cc)
    features: dict[str, Any] = {}
    if len(found) >= 2:
        for name in FEATURES:
            auto = np.array([c.methods[method].features[name] for c in found])
            ref = np.array([c.reference_features[name] for c in found])
            agreement = paired_agreement(auto, ref, test="t-test")
            features[name] = {
                "method_mean": agreement.auto_mean,
                "method_sd": agreement.auto_sd,
                "reference_mean": agreement.ref_mean,
                "reference_sd": agreement.ref_sd,
                "p_t_test": agreement.p_value,
                "mean_percent_difference": _finite(agreement.mean_percent_difference),
                "bland_altman": asdict(agreement.bland_altman),
                "r": _finite(agreement.r),
            }
    summary["aif"]["features"] = features
    return summary


def boundary_summary(cases: list[CaseEvaluation], method: str) -> dict[str, Any]:
    """HD95 / ASSD of each structure the method labels (``BoundarySummary`` fields), in px."""
    structures = cases[0].methods[method].boundary if cases else {}
    summary: dict[str, Any] = {"unit": "px"}
    for name in structures:
        parts = [c.methods[method].boundary[name] for c in cases]
        summary[name] = asdict(summarize_boundary(concatenate_distances(parts)))
    return summary


def aif_metrics(cases: list[CaseEvaluation], methods: list[str], context: dict[str, Any]) -> dict:
    """Everything ``metrics.json`` holds: context, per-method summaries, per-case Dice/reasons."""
    primary = methods[0] if methods and methods[0] != "legacy" else None
    return {
        "task": "aif",
        **context,
        "primary": methods[0],
        "methods": {m: method_summary(cases, m, primary) for m in methods},
        "cases": {
            c.case_id: {
                m: {"lv_dice": c.methods[m].lv_dice, "reason": c.methods[m].reason} for m in methods
            }
            for c in cases
        },
        "published": {
            "detection": published.AIF_DETECTION,
            "features": published.AIF_FEATURES,
            "curve_cc": published.AIF_CURVE_CC,
        },
    }


def flat_scalars(metrics: dict) -> dict[str, float]:
    """The headline numbers as ``{"eval/<method>/<name>": value}`` for experiment loggers."""
    flat: dict[str, float] = {}
    for method, s in metrics["methods"].items():
        for key in ("detection_rate", "lv_dice_mean", "lv_dice_sd", "dice_gt_075", "n_failures"):
            flat[f"eval/{method}/{key}"] = float(s[key])
        if s["aif"]["curve_cc_mean"] is not None:
            flat[f"eval/{method}/aif_curve_cc"] = float(s["aif"]["curve_cc_mean"])
        for structure, b in s["boundary"].items():
            if structure == "unit":
                continue
            for key in ("hd95_mean", "assd_mean"):
                if b[key] is not None:
                    flat[f"eval/{method}/{structure}_{key[:-5]}_px"] = float(b[key])
            flat[f"eval/{method}/{structure}_n_empty"] = float(b["n_empty_prediction"])
    return flat


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{mean:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def boundary_markdown(methods: dict[str, Any]) -> list[str]:
    """The boundary-distance table of the report (lines), one row per method and structure."""
    lines = [
        "## Boundary distances (pixels; the AIF contract carries no pixel size)",
        "",
        "| method | structure | cases measured | HD95 mean ± SD | ASSD mean ± SD | "
        "empty predictions | spurious predictions |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        for structure, b in s["boundary"].items():
            if structure == "unit":
                continue
            lines.append(
                f"| {name} | {structure.upper()} | {b['n_measured']} | "
                f"{_pm(b['hd95_mean'], b['hd95_sd'], 2)} | {_pm(b['assd_mean'], b['assd_sd'], 2)} "
                f"| {b['n_empty_prediction']} | {b['n_spurious']} |"
            )
    return [
        *lines,
        "",
        "HD95: 95th-percentile Hausdorff distance; ASSD: average symmetric surface distance "
        "(MONAI). Means are over the cases where both masks exist (both empty: 0); a case "
        "with an empty prediction or a structure absent from the reference is counted, not "
        "averaged.",
        "",
    ]


def aif_report_markdown(metrics: dict, figures: dict[str, str]) -> str:
    """The Markdown report (``report.md``) from :func:`aif_metrics` output and figure file names."""
    methods = metrics["methods"]
    primary = metrics["primary"]
    lines = [
        "# AIF LV detection: evaluation report",
        "",
        f"- data: `{metrics['data_file']}`, split `{metrics['split']}`: "
        f"{metrics['n_cases']} cases of {metrics['n_patients']} patients",
        *[f"- {name}: `{src}`" for name, src in metrics["sources"].items()],
        f"- evaluated in {metrics['elapsed_s']:.1f} s on {metrics['created_utc']}",
        "",
        "## Detection (docs/method.md §A7: success = LV Dice > 0.5)",
        "",
        "| method | cases | detection | LV Dice mean ± SD | Dice > 0.75 | failures | "
        f"P Dice vs {primary} (paired t) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in methods.items():
        reasons = ", ".join(f"{k} {v}" for k, v in s["failure_reasons"].items())
        lines.append(
            f"| {name} | {s['n_cases']} | {_pct(s['detection_rate'], 2)} | "
            f"{_pm(s['lv_dice_mean'], s['lv_dice_sd'])} | {_pct(s['dice_gt_075'])} | "
            f"{s['n_failures']}{f' ({reasons})' if reasons else ''} | "
            f"{_p(s['p_dice_vs_primary'])} |"
        )
    for name, (n, rate, dm, dsd, gt, fails) in published.AIF_DETECTION.items():
        lines.append(
            f"| *paper {name}* | {n} | {'–' if rate is None else f'{rate} %'} | "
            f"{_pm(dm, dsd, 2)} | {'–' if gt is None else f'{gt} %'} | "
            f"{'–' if fails is None else fails} | |"
        )
    lines += [
        "",
        "Failure reasons: empty (no LV found), outside the heart, picked the RV, partial"
        " LV (on the LV, Dice ≤ 0.5).",
        "",
    ]
    lines += boundary_markdown(methods)
    failures = [(m, f) for m, s in methods.items() for f in s["failures"]]
    if failures:
        lines += ["### Failures", "", "| method | case | LV Dice | reason |", "|---|---|---|---|"]
        lines += [
            f"| {m} | {f['case_id']} | {f['lv_dice']:.3f} | {f['reason']} |" for m, f in failures
        ]
        lines.append("")
    for name, s in methods.items():
        aif = s["aif"]
        if not aif["features"]:
            continue
        cc = _pm(aif["curve_cc_mean"], aif["curve_cc_sd"], 4)
        paper = published.AIF_CURVE_CC
        lines += [
            f"## AIF curves: {name} vs reference mask ({aif['n_cases']} cases with an LV mask)",
            "",
            f"Curve correlation {cc} (paper, 3CS vs manual: {paper[0]} ± {paper[1]}).",
            "",
            f"| feature | reference | {name} | P (paired t) | mean % diff | Bland-Altman bias ± SD "
            "| paper manual | paper 3CS | paper % diff |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for feature, f in aif["features"].items():
            ba = f["bland_altman"]
            ref = published.AIF_FEATURES.get(feature)
            pub = (
                [f"{ref[0]} ± {ref[1]}", f"{ref[2]} ± {ref[3]}", "–" if ref[4] is None else ref[4]]
                if ref
                else ["–", "–", "–"]
            )
            pct = f["mean_percent_difference"]
            lines.append(
                f"| {FEATURE_LABELS[feature]} | {_pm(f['reference_mean'], f['reference_sd'])} | "
                f"{_pm(f['method_mean'], f['method_sd'])} | {_p(f['p_t_test'])} | "
                f"{'–' if pct is None else f'{pct:.2f}'} | {ba['bias']:.3f} ± {ba['sd']:.3f} | "
                f"{' | '.join(str(x) for x in pub)} |"
            )
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"- {title}: ![{title}]({name})" for title, name in figures.items()]
        lines.append("")
    lines += [
        "Phantom references are exact and there is no inter-observer variation, so phantom "
        "results run higher than the paper's expert-labelled real scans; the paper's values are "
        "for reference only. Times are seconds from the first SR frame; values are in "
        "network-input units (divided by the series maximum).",
        "",
    ]
    return "\n".join(lines)


def write_aif_report(
    cases: list[CaseEvaluation],
    methods: list[str],
    context: dict[str, Any],
    out_dir: str | os.PathLike,
    n_examples: int = 4,
) -> tuple[dict, dict[str, Path]]:
    """Write ``report.md``, ``metrics.json`` and the figures into ``out_dir`` (each atomically).

    Args:
        cases: from :func:`evaluation.aif_evaluation.evaluate_aif_cases`.
        methods: method names, the primary model first.
        context: data file, split, counts, sources, timing (see :func:`aif_report_markdown`).
        out_dir: the run directory.
        n_examples: best and worst cases in the overlay figure.

    Returns:
        (metrics dict as written to ``metrics.json``, {name: path} of every file written).
    """
    from evaluation import report_figures as figures

    out = Path(out_dir)
    fig_dir = out / "figures"
    primary = methods[0]
    files = {
        "detection_examples": figures.detection_examples(
            cases, primary, fig_dir / "detection_examples.png", n_examples
        ),
        "aif_curves": figures.aif_curve_examples(cases, methods, fig_dir / "aif_curves.png"),
        "dice_by_method": figures.dice_by_method(cases, methods, fig_dir / "dice_by_method.png"),
    }
    found = [c for c in cases if c.methods[primary].features is not None]
    if len(found) >= 3:
        pairs = {
            FEATURE_LABELS[name]: (
                np.array([c.methods[primary].features[name] for c in found]),
                np.array([c.reference_features[name] for c in found]),
            )
            for name in ("foot_s", "peak_s", "peak_value", "auc")
        }
        files["aif_feature_agreement"] = figures.agreement_plots(
            pairs,
            fig_dir / "aif_feature_agreement.png",
            f"AIF features: {primary} mask vs reference mask ({len(found)} cases)",
            method_label=primary,
        )
    titles = {
        "detection_examples": f"best and worst cases of {primary}",
        "dice_by_method": "LV Dice per case and method",
        "aif_curves": "AIF curves, predicted vs reference masks",
        "aif_feature_agreement": "AIF feature agreement (regression and Bland-Altman)",
    }
    figure_links = {titles[k]: str(p.relative_to(out)) for k, p in files.items()}
    metrics = aif_metrics(cases, methods, context)
    metrics["figures"] = {k: str(p.relative_to(out)) for k, p in files.items()}
    files["metrics"] = out / "metrics.json"
    with atomic_write(files["metrics"]) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=_json_default))
    files["report"] = out / "report.md"
    with atomic_write(files["report"]) as tmp:
        tmp.write_text(aif_report_markdown(metrics, figure_links))
    return metrics, files


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
