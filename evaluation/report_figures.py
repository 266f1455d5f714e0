"""PNG figures of the evaluation reports: mask overlays, AIF curves, agreement and Dice plots.

Every function draws one figure with matplotlib (Agg backend) and writes it atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evaluation.aif_evaluation import CaseEvaluation
from formats.atomic_file import atomic_write
from quantification.lv_mask import LABEL_LV, LABEL_RV
from quantification.statistics import bland_altman, regression

METHOD_COLOURS = ("tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def best_and_worst(cases: Sequence[CaseEvaluation], method: str, n: int) -> tuple[list, list]:
    """The ``n`` best and ``n`` worst cases by the method's LV Dice (worst first in its list)."""
    order = sorted(cases, key=lambda c: c.methods[method].lv_dice)
    n = min(n, max(1, len(order) // 2))
    return order[::-1][:n], order[:n]


def detection_examples(
    cases: Sequence[CaseEvaluation], method: str, path: str | os.PathLike, n: int = 4
) -> Path:
    """Grid of the best (top row) and worst (bottom row) cases of ``method``.

    Each panel: the coil-corrected frame at the reference LV's peak enhancement, the reference LV
    (green) and RV (yellow, thin), the predicted LV (red) and RV (cyan, dashed); title = case, LV
    Dice and the failure reason if any.
    """
    plt = _pyplot()
    best, worst = best_and_worst(cases, method, n)
    cols = max(len(best), len(worst))
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 6.0), squeeze=False)
    for row, (title, chosen) in enumerate((("best", best), ("worst", worst))):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(chosen):
                continue
            case = chosen[col]
            result = case.methods[method]
            ax.imshow(case.frame, cmap="gray")
            for mask, colour, style, width in (
                (case.reference == LABEL_LV, "lime", "solid", 1.6),
                (case.reference == LABEL_RV, "yellow", "solid", 0.8),
                (result.labels == LABEL_LV, "red", "solid", 1.2),
                (result.labels == LABEL_RV, "cyan", "dashed", 1.0),
            ):
                if mask.any():
                    ax.contour(
                        mask, levels=[0.5], colors=colour, linestyles=style, linewidths=width
                    )
            reason = f"\n{result.reason}" if result.reason else ""
            ax.set_title(
                f"{title}: {case.case_id}\nLV Dice {result.lv_dice:.3f}{reason}", fontsize=8
            )
    fig.suptitle(
        f"{method}: reference LV green / RV yellow, predicted LV red / RV cyan", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def aif_curve_examples(
    cases: Sequence[CaseEvaluation],
    methods: Sequence[str],
    path: str | os.PathLike,
    n: int = 6,
) -> Path:
    """AIF curves from each method's LV mask vs the reference mask, for the ``n`` cases with the
    lowest Dice of the first method (where they differ most), plus its median case."""
    plt = _pyplot()
    order = sorted(cases, key=lambda c: c.methods[methods[0]].lv_dice)
    chosen = order[: max(1, n - 1)] + [order[len(order) // 2]]
    chosen = list({c.case_id: c for c in chosen}.values())  # a short list may repeat the median
    cols = min(3, len(chosen))
    rows = int(np.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(chosen) :]:
        ax.axis("off")
    for ax, case in zip(axes.ravel(), chosen, strict=False):
        ax.plot(case.grid_s, case.reference_aif, "k-", lw=2.0, label="reference mask")
        for colour, name in zip(METHOD_COLOURS, methods, strict=False):
            result = case.methods[name]
            if result.aif is not None:
                ax.plot(
                    case.grid_s,
                    result.aif,
                    "--",
                    color=colour,
                    lw=1.2,
                    label=f"{name} (Dice {result.lv_dice:.2f})",
                )
            else:
                ax.plot([], [], "--", color=colour, label=f"{name}: no LV")
        ax.set_title(case.case_id, fontsize=9)
        ax.set_xlabel("time from first SR frame (s)", fontsize=8)
        ax.set_ylabel("AIF (normalised)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("AIF from predicted vs reference LV masks (lowest Dice first, then median)")
    fig.tight_layout()
    return _save(fig, path)


def agreement_plots(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str,
    method_label: str = "automated",
) -> Path:
    """One row per quantity: scatter with regression line and identity, then Bland-Altman.

    Args:
        pairs: quantity label (with unit) -> (method values [N], reference values [N]).
        path: output PNG.
        title: figure title.
        method_label: axis name of the method values.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(9, 3.2 * len(pairs)), squeeze=False)
    for (label, (auto, ref)), (ax_s, ax_b) in zip(pairs.items(), axes, strict=True):
        auto, ref = np.asarray(auto, float), np.asarray(ref, float)
        ax_s.scatter(ref, auto, s=10, alpha=0.6)
        lo, hi = float(min(ref.min(), auto.min())), float(max(ref.max(), auto.max()))
        ax_s.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, label="identity")
        if len(ref) >= 3 and np.ptp(ref) > 0:
            fit = regression(auto, ref)
            ax_s.plot(
                [lo, hi],
                [fit.slope * lo + fit.intercept, fit.slope * hi + fit.intercept],
                "r-",
                lw=1.2,
                label=f"slope {fit.slope:.2f} [{fit.slope_ci[0]:.2f}, {fit.slope_ci[1]:.2f}]"
                f", R {fit.r:.3f}",
            )
        ax_s.set_xlabel(f"reference {label}", fontsize=8)
        ax_s.set_ylabel(f"{method_label} {label}", fontsize=8)
        ax_s.legend(fontsize=7)
        if len(ref) >= 2:
            ba = bland_altman(auto, ref)
            ax_b.scatter((auto + ref) / 2, auto - ref, s=10, alpha=0.6)
            ax_b.axhline(ba.bias, color="r", lw=1.2, label=f"bias {ba.bias:.3g} ± {ba.sd:.3g}")
            for limit in (ba.lower, ba.upper):
                ax_b.axhline(limit, color="r", ls="--", lw=0.8)
            ax_b.plot([], [], "r--", lw=0.8, label=f"limits {ba.lower:.3g}, {ba.upper:.3g}")
            ax_b.legend(fontsize=7)
        ax_b.set_xlabel(f"mean of both, {label}", fontsize=8)
        ax_b.set_ylabel(f"{method_label} − reference", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def dice_by_method(
    cases: Sequence[CaseEvaluation], methods: Sequence[str], path: str | os.PathLike
) -> Path:
    """Per-case LV Dice of every method on the same cases (box plot with the cases as dots)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 3.6))
    values = [[c.methods[m].lv_dice for c in cases] for m in methods]
    ax.boxplot(values, showfliers=False)
    ax.set_xticks(range(1, len(methods) + 1), methods)
    rng = np.random.default_rng(0)
    for i, v in enumerate(values, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=8, alpha=0.5)
    ax.axhline(0.5, color="r", ls="--", lw=0.8, label="success threshold 0.5")
    ax.axhline(0.75, color="0.5", ls=":", lw=0.8, label="0.75")
    ax.set_ylabel("LV Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"LV Dice per case ({len(cases)} cases)")
    fig.tight_layout()
    return _save(fig, path)
