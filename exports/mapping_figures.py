"""One PNG per mapped slice: the T1, T2 or ECV map over the anatomy, with the AHA segment values.

matplotlib (Agg) is imported when a figure is drawn, so the runtime never pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from exports.mapping_pipeline import SliceResult
from formats.atomic_file import atomic_write

__all__ = ["DISPLAY_RANGE", "plot_slice"]

DISPLAY_RANGE = {"t2_ms": (30.0, 100.0), "ecv_percent": (10.0, 60.0)}
"""Colour scale of each map (the valid ranges of method.md §B2), in the map's units; T1 maps (native
or post-contrast) scale to their own values."""
_LABEL = {"t1_ms": "T1 (ms)", "t2_ms": "T2 (ms)", "ecv_percent": "ECV (%)"}


def plot_slice(result: SliceResult, directory: str | os.PathLike) -> Path:
    """Save ``<directory>/<case_id>_<slice_id>_<quantity>.png`` (written atomically).

    Left: the reference image (grey) with the map overlaid (NaN transparent) and the map's
    colour bar; right: the 16 AHA segment means as a table (empty for a failed slice). The title
    gives level, success (or the failure reason), mean and the number of refined masks.

    Args:
        result: one slice of the mapping pipeline.
        directory: output folder (created if needed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{result.case_id}_{result.slice_id}_{result.quantity}.png"
    fig, (ax, table_ax) = plt.subplots(
        1, 2, figsize=(9.5, 4.8), gridspec_kw={"width_ratios": [3, 1.2]}
    )
    if result.reference_image is not None:
        ax.imshow(result.reference_image, cmap="gray")
    low, high = DISPLAY_RANGE.get(result.quantity, (None, None))
    overlay = np.ma.masked_invalid(result.values)
    im = ax.imshow(overlay, cmap="magma" if result.quantity == "ecv_percent" else "viridis",
                   vmin=low, vmax=high, alpha=0.9)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=_LABEL.get(result.quantity, ""))
    finite = np.isfinite(result.values)
    if finite.any():  # zoom on the heart
        rows, cols = np.nonzero(finite)
        pad = 25
        ax.set_xlim(
            max(cols.min() - pad, 0) - 0.5, min(cols.max() + pad, finite.shape[1] - 1) + 0.5
        )
        ax.set_ylim(
            min(rows.max() + pad, finite.shape[0] - 1) + 0.5, max(rows.min() - pad, 0) - 0.5
        )
    ax.set_axis_off()
    status = "ok" if result.success else f"FAILED: {result.reason}"
    ax.set_title(
        f"{result.case_id}/{result.slice_id} ({result.level}) {status}\n"
        f"mean {result.mean:.1f}, {result.n_pixels} px, refined {result.refined_images}/"
        f"{result.n_images}",
        fontsize=9,
    )
    rows_text = [
        [str(k + 1), "" if not np.isfinite(v) else f"{v:.1f}"]
        for k, v in enumerate(result.segments)
        if np.isfinite(v)
    ]
    table_ax.set_axis_off()
    if rows_text:
        table = table_ax.table(cellText=rows_text, colLabels=["AHA", _LABEL[result.quantity]],
                               loc="center")  # fmt: skip
        table.scale(1, 1.2)
    fig.tight_layout()
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target
