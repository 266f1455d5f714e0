"""Why no LV was found: the enhancing blood pools of an AIF series, and a reason in words.

When the network's LV mask is empty the runtime cannot measure an AIF. Saying *why* helps the
operator (and the researcher collecting failures): a series where nothing enhances (no contrast,
a failed injection) differs from one with a single enhancing pool (the LV outside the field of
view, or RV and LV not separable), from a bolus that arrives after the network's window, and
from a series with two pools that the model did not recognise.

A pool is an 8-connected region of pixels whose enhancement (peak of the time-smoothed,
coil-corrected curve minus its pre-contrast baseline) is at least ``snr_min`` noise SDs and at
least ``fraction`` of the series' 99.5th-percentile enhancement, of ``min_pixels`` or more.
NumPy + SciPy (the scanner side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from quantification.aif_preprocessing import coil_sensitivity_map, resample_to_grid
from quantification.legacy_aif_detector import estimate_noise_sd
from quantification.lv_mask import STRUCTURE_8


@dataclass(frozen=True)
class EnhancingPool:
    """One enhancing region.

    Attributes:
        area_px: pixels.
        arrival_s: time (s from the first SR frame) at which its mean enhancement curve reaches
            half of its maximum.
        peak_s: time of that curve's maximum.
    """

    area_px: int
    arrival_s: float
    peak_s: float


def enhancing_pools(
    series: np.ndarray,
    times_s: np.ndarray,
    n_pd_frames: int,
    grid_step_s: float = 0.5,
    snr_min: float = 5.0,
    fraction: float = 0.3,
    min_pixels: int = 4,
    baseline_s: float = 2.0,
) -> list[EnhancingPool]:
    """The enhancing pools of one series, in order of arrival.

    Args:
        series: float [T, RO, E1], PD frames first; times_s: [T] seconds, increasing.
        n_pd_frames: leading PD frames (used for the coil map, as in preprocessing).
        grid_step_s: temporal grid; snr_min, fraction, min_pixels: the pool rule (module
            docstring); baseline_s: the first this-many seconds give the baseline.

    Example:
        >>> t = np.arange(40.0)
        >>> series = np.ones((40, 32, 32), np.float32)
        >>> series[:, 5:10, 5:10] += 5 * np.exp(-0.5 * ((t - 10) / 2) ** 2)[:, None, None]  # RV
        >>> series[:, 20:26, 20:26] += 5 * np.exp(-0.5 * ((t - 16) / 2) ** 2)[:, None, None]  # LV
        >>> series += np.random.default_rng(0).normal(0, 0.05, series.shape).astype(np.float32)
        >>> [(p.area_px, p.peak_s) for p in enhancing_pools(series, t, 0)]
        [(25, 10.0), (36, 16.0)]
    """
    series = np.asarray(series, dtype=np.float32)
    n_pd = int(n_pd_frames)
    signal, _ = resample_to_grid(series[n_pd:], times_s[n_pd:], grid_step_s)
    if n_pd > 0:
        signal = signal / coil_sensitivity_map(series[:n_pd], 2.0, 0.2)
    sigma = estimate_noise_sd(series[n_pd:])
    smooth = ndimage.gaussian_filter1d(signal.astype(np.float64), 1.0 / grid_step_s, axis=0)
    n_base = max(1, int(round(baseline_s / grid_step_s)))
    curves = smooth - smooth[:n_base].mean(axis=0)
    enhancement = curves.max(axis=0)
    reference = float(np.percentile(enhancement, 99.5))
    enhancing = (enhancement >= snr_min * max(sigma, 1e-12)) & (enhancement >= fraction * reference)
    labels, n = ndimage.label(enhancing, structure=STRUCTURE_8)
    pools = []
    for k in range(1, n + 1):
        region = labels == k
        if region.sum() < min_pixels:
            continue
        mean = curves[:, region].mean(axis=1)
        pools.append(
            EnhancingPool(
                area_px=int(region.sum()),
                arrival_s=float(np.argmax(mean >= 0.5 * mean.max()) * grid_step_s),
                peak_s=float(np.argmax(mean) * grid_step_s),
            )
        )
    return sorted(pools, key=lambda p: p.arrival_s)


def no_lv_reason(pools: list[EnhancingPool], window_s: float) -> str:
    """A sentence saying why an LV could not be found, from :func:`enhancing_pools`.

    Args:
        pools: the series' enhancing pools.
        window_s: the length of the series the network sees (n_frames x grid step, e.g. 32 s).

    Example:
        >>> no_lv_reason([], 32.0)
        'no enhancing blood pool (nothing enhances above the noise: no contrast arrived)'
    """
    if not pools:
        return "no enhancing blood pool (nothing enhances above the noise: no contrast arrived)"
    if len(pools) == 1:
        p = pools[0]
        return (
            f"only one enhancing pool ({p.area_px} px, half maximum at {p.arrival_s:.1f} s): RV "
            "and LV cannot be told apart (LV outside the field of view, or no pulmonary transit)"
        )
    last = pools[-1]
    if last.arrival_s >= window_s:
        return (
            f"the last enhancing pool arrives at {last.arrival_s:.1f} s, after the network's "
            f"{window_s:.0f} s window (a very late bolus)"
        )
    return (
        f"{len(pools)} enhancing pools (half maxima from {pools[0].arrival_s:.1f} to "
        f"{last.arrival_s:.1f} s), but the model recognised none of them as the LV"
    )
