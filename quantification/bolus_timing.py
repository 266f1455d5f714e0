"""Bolus foot and peak of a perfusion curve sampled at irregular frame times
(docs/method.md §P1).

Frame times of a perfusion series follow the heart beat (irregular, missed triggers), so the
curve is first interpolated onto a uniform grid (0.5 s) and the foot and peak are the ones of
:func:`quantification.aif_curve.aif_features_batch`: the foot is where the tangent at the
steepest up-slope meets the pre-contrast baseline, found from the data, never a fixed "first N
frames". The pre-contrast frames are the ones at least ``margin_s`` before the foot.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

import numpy as np

from quantification.aif_curve import aif_features_batch

__all__ = ["bolus_foot_peak", "pre_contrast_frames"]

GRID_STEP_S = 0.5


def bolus_foot_peak(curve: np.ndarray, times_s: np.ndarray) -> tuple[float, float]:
    """Foot and peak time (s, on the clock of ``times_s``) of a curve [T] sampled at [T] times.

    Example:
        >>> t = np.arange(40.0)
        >>> foot, peak = bolus_foot_peak(np.clip(t - 10, 0, None) * np.exp(-(t - 10) / 3), t)
        >>> 9.0 < foot < 12.0, 12.0 <= peak <= 14.0
        (True, True)
    """
    c = np.asarray(curve, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    if c.ndim != 1 or c.shape != t.shape or c.size < 3:
        raise ValueError(f"expected curve [T] and times_s [T], T >= 3; found {c.shape}, {t.shape}")
    grid = t[0] + GRID_STEP_S * np.arange(int((t[-1] - t[0]) / GRID_STEP_S) + 1)
    features = aif_features_batch(np.interp(grid, t, c)[None], step_s=GRID_STEP_S)
    return float(t[0] + features["foot_s"][0]), float(t[0] + features["peak_s"][0])


def pre_contrast_frames(times_s: np.ndarray, foot_s: float, margin_s: float = 1.0) -> np.ndarray:
    """bool [T]: frames at least ``margin_s`` before the foot (the first frame at least)."""
    t = np.asarray(times_s, dtype=np.float64)
    frames = t <= foot_s - margin_s
    frames[0] = True
    return frames
