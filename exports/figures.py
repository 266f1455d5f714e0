"""One PNG per processed case: frames at peak RV and LV with the mask overlay, and the AIF curve.

matplotlib (Agg) is imported when a figure is drawn, so the runtime never pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from exports.aif_pipeline import AIFResult
from formats.atomic_file import atomic_write
from quantification.lv_mask import LABEL_LV, LABEL_RV

__all__ = ["plot_case"]


def plot_case(result: AIFResult, signal: np.ndarray, directory: str | os.PathLike) -> Path:
    """Save ``<directory>/<case_id>.png`` (written atomically).

    Panels: the coil-corrected frame at peak RV enhancement (3CS; for 2CS the frame halfway
    between the first SR frame and the LV peak), the frame at peak LV enhancement, each with the
    LV (red) and RV (cyan) contours, and the AIF with foot, peak and valley marked.

    Args:
        result: the pipeline result of the case.
        signal: float [N, RO, E1] coil-corrected frames on ``result.grid_s``.
        directory: output folder (created if needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rv_frame = result.peak_rv_frame
    rv_title = "peak RV"
    if rv_frame is None:
        rv_frame, rv_title = result.peak_lv_frame // 2, "before LV peak"
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1, 1.6]})
    for ax, frame, title in (
        (axes[0], rv_frame, rv_title),
        (axes[1], result.peak_lv_frame, "peak LV"),
    ):
        ax.imshow(signal[frame], cmap="gray")
        for label, color in ((LABEL_LV, "red"), (LABEL_RV, "cyan")):
            if (result.mask == label).any():
                ax.contour(result.mask == label, levels=[0.5], colors=color, linewidths=1.2)
        ax.set_title(f"{title}: t = {result.grid_s[frame]:.1f} s")
        ax.axis("off")
    f = result.features
    ax = axes[2]
    ax.plot(result.grid_s, result.aif, "k-", lw=1.2, label="AIF")
    for t, name, color in (
        (f.foot_s, "foot", "tab:blue"),
        (f.peak_s, "peak", "tab:red"),
        (f.valley_s, "valley", "tab:green"),
    ):
        ax.axvline(t, color=color, ls="--", lw=1, label=f"{name} {t:.1f} s")
    ax.axhline(f.baseline, color="0.6", lw=0.8)
    ax.set_xlabel("time from first SR frame (s)")
    ax.set_ylabel("signal (coil-corrected)")
    ax.set_title(f"first pass {f.first_pass_s:.1f} s, AUC {f.auc:.3g}")
    ax.legend(fontsize=8)
    fig.suptitle(result.case_id)
    fig.tight_layout()
    path = directory / f"{result.case_id}.png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
