"""AIF signal from an LV mask, and the first-pass features of the curve (method.md §A6, A7,
decision C6).

NumPy + SciPy only (runs on the scanner). Curves live on the uniform 0.5 s grid of method.md §A2:
sample
``i`` is at ``i * step_s`` seconds from the start of the grid, and all times below are in seconds
on that clock.

Feature definitions (the papers leave them open; these are the ones implemented):

* smoothing: features are located on ``s`` = the curve filtered by a Gaussian of ``smooth_s``
  seconds standard deviation (default 0.5 s = one sample; ``mode="nearest"`` at the ends); values
  (peak value, baseline, AUC) are read from the raw curve.
* peak: the sample where ``s`` is maximal (first one on ties), i.e. the first-pass maximum (for an
  AIF the recirculation is always lower). ``peak_value`` = raw curve at that sample (not
  baseline-subtracted; curves are max-normalised upstream, so in [0, 1]).
* foot: the intersection of the tangent at the steepest up-slope with the baseline (the classic
  bolus-arrival-time construction of perfusion imaging). ``slope = np.gradient(s)`` (central
  differences), steepest = largest slope at or before the peak; ``foot = t_slope - (s[t_slope] -
  baseline) / slope``, clipped to ``[0, t_slope]``. It rests on the steepest, best-determined
  part of the up-slope rather than on the crossing of a threshold by a few noisy samples, and has
  no threshold to choose. For a gamma-variate ``C(t) = A (t - t0)^a exp(-(t - t0)/b)`` it lies at
  ``t0 + b (sqrt(a) - 1)^2``, a little after the true arrival ``t0``; the default smoothing moves
  it ~0.1-0.35 s earlier than that. With no up-slope (max slope <= 0) foot = peak.
* baseline: the mean of the raw samples at least one step before the foot (``t <= foot - step_s``),
  i.e. the pre-contrast samples, excluding the sample that may already carry contrast. It is
  found in two passes: a provisional foot from baseline ``min(s)`` before the steepest slope
  gives the pre-contrast window, the mean over that window is the baseline, and the foot is
  recomputed with it. If the window is empty (bolus in the first second) baseline = first sample.
* valley: the end of the first pass = the first local minimum of ``s`` after the curve has come
  down from the peak to half its enhancement: from the first sample after the peak with
  ``s <= baseline + valley_level * (s[peak] - baseline)`` (``valley_level`` = 0.5), the first
  sample ``i`` with ``s[i + 1] >= s[i]``, i.e. where the smoothed curve stops decreasing before
  recirculation. The half-level guard keeps noise on the flat top just after the peak from
  passing for a valley (real first-pass valleys lie well below half the enhancement). If the curve
  decreases to the end of the series the valley is the last sample; if it never falls to the
  half level, the search starts at the peak. Without recirculation the first noise-level wiggle
  of the washout tail ends the first pass, i.e. where the curve is back to baseline.
* first-pass duration = valley - foot.
* AUC: the plain **sum** of ``curve - baseline`` over the samples with ``foot <= t <= valley``,
  in (normalised signal)·sample. The paper's AUC of ~6 for peak values ~0.385 (method.md §A7 [D]) is
  only consistent with such a sum of 0.5 s samples, not with an integral in seconds (which would be
  half as large); ``auc_s = auc * step_s`` is the rectangle-rule integral in signal·s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def aif_curve(series: np.ndarray, lv_mask: np.ndarray, keep_fraction: float = 0.15) -> np.ndarray:
    """AIF time-intensity curve from the LV blood pool, with the partial-volume rule of method.md
    §A6.

    The peak-enhancement frame is the frame in which the mean signal over the LV mask is maximal
    (first one on ties). At that frame the LV pixels are ranked by intensity and the brightest
    ``k = max(1, ceil(keep_fraction * n_lv))`` are kept, i.e. the pixels at or above the
    ``1 - keep_fraction`` quantile (the 85th percentile by default). Pixels tied with the k-th
    brightest value are all kept, so ties can keep more than k. The AIF is the mean of the kept
    pixels in every frame.

    Args:
        series: float [T, RO, E1], frames on the 0.5 s grid (any intensity unit).
        lv_mask: bool [RO, E1] LV blood pool (any nonzero value counts as LV).
        keep_fraction: fraction of LV pixels kept, in (0, 1].

    Returns:
        float32 [T]: the AIF, in the intensity unit of ``series``.

    Raises:
        ValueError: empty mask, mismatched shapes or ``keep_fraction`` outside (0, 1].
    """
    series = np.asarray(series)
    mask = np.asarray(lv_mask).astype(bool)
    if series.ndim != 3 or series.shape[1:] != mask.shape:
        raise ValueError(
            f"need series [T, RO, E1] and mask [RO, E1], got {series.shape}, {mask.shape}"
        )
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if not mask.any():
        raise ValueError("LV mask is empty: no AIF can be measured")
    return aif_of_pixels(series[:, mask], keep_fraction)


def aif_of_pixels(lv_signals: np.ndarray, keep_fraction: float = 0.15) -> np.ndarray:
    """:func:`aif_curve` of the LV pixels' signals alone (the pixels in any fixed order).

    Args:
        lv_signals: float [T, n_lv], n_lv >= 1: the signal of every LV pixel in every frame.
        keep_fraction: fraction of LV pixels kept, in (0, 1].

    Returns:
        float32 [T]: the AIF, in the intensity unit of ``lv_signals``.

    Example:
        >>> lv = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 9.0]])  # 2 frames, 3 pixels
        >>> aif_of_pixels(lv, keep_fraction=0.3).tolist()  # the brightest pixel at the peak
        [3.0, 9.0]
    """
    lv = np.asarray(lv_signals, dtype=np.float64)
    if lv.ndim != 2 or lv.shape[1] == 0:
        raise ValueError(f"need LV signals [T, n_lv >= 1], got shape {lv.shape}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    at_peak = lv[int(np.argmax(lv.mean(axis=1)))]
    n = at_peak.size
    k = max(1, int(np.ceil(keep_fraction * n - 1e-9)))
    kth_brightest = np.partition(at_peak, n - k)[n - k]
    return lv[:, at_peak >= kth_brightest].mean(axis=1).astype(np.float32)


@dataclass(frozen=True)
class AIFFeatures:
    """First-pass features of one AIF curve (definitions in the module docstring).

    Times are in seconds from the start of the grid; values in the (normalised) curve unit.
    """

    foot_s: float
    peak_s: float
    valley_s: float
    first_pass_s: float  # valley_s - foot_s
    peak_value: float  # raw curve at the peak sample
    auc: float  # sum of (curve - baseline) samples from foot to valley, signal·sample
    auc_s: float  # auc * step_s, signal·s
    baseline: float  # mean pre-contrast signal


def aif_features_batch(
    curves: np.ndarray,
    step_s: float = 0.5,
    smooth_s: float = 0.5,
    valley_level: float = 0.5,
) -> dict[str, np.ndarray]:
    """First-pass features of N curves at once (vectorised; definitions in the module docstring).

    Args:
        curves: float [N, T] (or [T]) AIF curves on a uniform grid of ``step_s`` seconds.
        step_s: sampling step in seconds.
        smooth_s: standard deviation of the Gaussian smoothing in seconds (0 = none).
        valley_level: fraction of the peak enhancement the curve must fall below before the
            valley search starts.

    Returns:
        dict with the field names of :class:`AIFFeatures`, each a float64 array [N].
    """
    y = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    if y.ndim != 2 or y.shape[1] < 2:
        raise ValueError(f"curves must be [N, T] with T >= 2, got shape {np.shape(curves)}")
    if not np.isfinite(y).all():
        raise ValueError("curves contain non-finite values")
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    n, t_len = y.shape
    rows = np.arange(n)
    idx = np.arange(t_len)
    t = idx * step_s
    s = ndimage.gaussian_filter1d(y, smooth_s / step_s, axis=1, mode="nearest") if smooth_s else y

    i_peak = np.argmax(s, axis=1)
    before_peak = idx[None, :] <= i_peak[:, None]
    slope = np.gradient(s, step_s, axis=1)
    i_slope = np.argmax(np.where(before_peak, slope, -np.inf), axis=1)
    g = slope[rows, i_slope]
    t_slope, s_slope = t[i_slope], s[rows, i_slope]
    rising = g > 0
    g_safe = np.where(rising, g, 1.0)

    def tangent_foot(level: np.ndarray) -> np.ndarray:
        return np.where(
            rising, np.clip(t_slope - (s_slope - level) / g_safe, 0.0, t_slope), t[i_peak]
        )

    base0 = np.min(np.where(idx[None, :] <= i_slope[:, None], s, np.inf), axis=1)
    pre = t[None, :] <= (tangent_foot(base0) - step_s + 1e-9)[:, None]
    n_pre = pre.sum(axis=1)
    baseline = np.where(n_pre > 0, (y * pre).sum(axis=1) / np.maximum(n_pre, 1), y[:, 0])
    foot = tangent_foot(baseline)

    amplitude = s[rows, i_peak] - baseline
    low = (idx[None, :] >= i_peak[:, None]) & (s <= (baseline + valley_level * amplitude)[:, None])
    i_low = np.where(low.any(axis=1), np.argmax(low, axis=1), i_peak)
    stops = np.ones_like(low)  # stops[:, i]: s stops decreasing after sample i (last sample: True)
    stops[:, :-1] = s[:, 1:] >= s[:, :-1]
    i_valley = np.argmax(stops & (idx[None, :] >= i_low[:, None]), axis=1)
    valley = t[i_valley]

    in_pass = (t[None, :] >= foot[:, None] - 1e-9) & (idx[None, :] <= i_valley[:, None])
    auc = ((y - baseline[:, None]) * in_pass).sum(axis=1)
    return {
        "foot_s": foot,
        "peak_s": t[i_peak],
        "valley_s": valley,
        "first_pass_s": valley - foot,
        "peak_value": y[rows, i_peak],
        "auc": auc,
        "auc_s": auc * step_s,
        "baseline": baseline,
    }


def aif_features(
    curve: np.ndarray, step_s: float = 0.5, smooth_s: float = 0.5, valley_level: float = 0.5
) -> AIFFeatures:
    """First-pass features of one AIF curve float [T] sampled every ``step_s`` seconds.

    See the module docstring for the exact definitions and :func:`aif_features_batch` for the
    parameters.
    """
    curve = np.asarray(curve)
    if curve.ndim != 1:
        raise ValueError(f"curve must be 1-D [T], got shape {curve.shape}")
    feats = aif_features_batch(curve[None], step_s, smooth_s, valley_level)
    return AIFFeatures(**{k: float(v[0]) for k, v in feats.items()})
