"""One PNG per perfusion case: the AIF, a myocardial curve with its fit, and the MBF maps.

The MBF maps use the display range of clinical viewers, 0-6 ml/min/g. matplotlib (Agg) is
imported only when a figure is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from formats.atomic_file import atomic_write
from quantification.perfusion_fit import FIT_OK, PerfusionFit

__all__ = ["MBF_DISPLAY_RANGE_ML_MIN_G", "plot_perfusion_case"]

MBF_DISPLAY_RANGE_ML_MIN_G = (0.0, 6.0)


def _example_pixel(fit: PerfusionFit, mask: np.ndarray | None) -> tuple[int, ...] | None:
    """A fitted pixel, in the myocardium when there is a mask: the one with the median MBF."""
    ok = fit.failure == FIT_OK
    if mask is not None and (ok & (mask > 0)).any():
        ok &= mask > 0
    if not ok.any():
        return None
    candidates = np.argwhere(ok)
    values = fit.mbf_ml_min_g[ok]
    return tuple(candidates[np.argsort(values)[values.size // 2]])


def plot_perfusion_case(case_id: str, times_s: np.ndarray, aif_gd: np.ndarray,
                        images_gd: np.ndarray, fit: PerfusionFit, mask: np.ndarray | None,
                        directory: str | os.PathLike) -> Path:  # fmt: skip
    """Save ``<directory>/<case_id>_perfusion.png`` (atomically).

    Args:
        case_id: the case's name (title and file name).
        times_s: float [T] frame times, s.
        aif_gd: float [T] AIF, mmol/L.
        images_gd: float [S, T, H, W] tissue, mmol/L.
        fit: the pixel-wise fit (maps [S, H, W], ``fitted_gd`` [S, H, W, T]).
        mask: [S, H, W] myocardial segment labels (> 0 myocardium), or None.
        directory: output folder (created if needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_slices = images_gd.shape[0]
    fig, axes = plt.subplots(1, 2 + n_slices, figsize=(4.2 * (2 + n_slices), 4.0))
    axes[0].plot(times_s, aif_gd, "r.-")
    axes[0].set(title="AIF (blood)", xlabel="time (s)", ylabel="Gd (mmol/L)")
    pixel = _example_pixel(fit, mask)
    if pixel is not None:
        s, y, x = pixel
        axes[1].plot(times_s, images_gd[s, :, y, x], "k.", label="myocardium pixel")
        axes[1].plot(times_s, fit.fitted_gd[pixel], "b-", label=f"{fit.model} fit")
        axes[1].set_title(f"slice {s}, ({y}, {x}): MBF {fit.mbf_ml_min_g[pixel]:.2f} ml/min/g",
                          fontsize=9)  # fmt: skip
        axes[1].legend(fontsize=8)
    axes[1].set(xlabel="time (s)", ylabel="Gd (mmol/L)")
    for s in range(n_slices):
        im = axes[2 + s].imshow(np.ma.masked_invalid(fit.mbf_ml_min_g[s]), cmap="jet",
                                vmin=MBF_DISPLAY_RANGE_ML_MIN_G[0],
                                vmax=MBF_DISPLAY_RANGE_ML_MIN_G[1])  # fmt: skip
        axes[2 + s].set_title(f"MBF slice {s}")
        axes[2 + s].axis("off")
        fig.colorbar(im, ax=axes[2 + s], fraction=0.046, pad=0.04, label="ml/min/g")
    fig.suptitle(f"{case_id}: {fit.model}, hematocrit {fit.hematocrit:.2f}")
    fig.tight_layout()
    directory = Path(directory)
    target = directory / f"{case_id}_perfusion.png"
    with atomic_write(target) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return target
