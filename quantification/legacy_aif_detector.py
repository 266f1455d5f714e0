"""The legacy (pre-CNN) AIF LV detector of method.md §A3: baseline and bootstrap labeller. NumPy +
SciPy.

The paper gives only the steps; the thresholds and features below are this project's choices
(decision C8), each a field of :class:`LegacyDetectorSettings`:

1. **Signal**: the saturation-recovery (SR) frames resampled linearly onto the 0.5 s grid over the
   whole acquisition; for amplitudes they are divided by the normalised coil map of the PD frames
   (``quantification.aif_preprocessing``, as the network's preprocessing), for SNR they stay raw.
2. **Background removal (SNR < 3)**: the noise SD ``sigma`` is estimated from the raw SR frames as
   ``1.4826 * median|x[t+1] - x[t]| / sqrt(2)`` per pixel (frame-to-frame differences remove the
   anatomy; the median ignores the few bolus frames), then the median over pixels. A pixel's SNR is
   the maximum over time of its raw curve smoothed by a Gaussian of ``smooth_s`` seconds, divided
   by ``sigma``; pixels with ``SNR < snr_min`` are background (air, lungs).
3. **Non-enhancing tissue removal (up-slope)**: the up-slope of a pixel is the largest time
   derivative of its smoothed coil-corrected curve (signal/s); pixels whose up-slope is below
   ``upslope_fraction`` x the 99.5th percentile of the up-slopes of the foreground are dropped
   (myocardium, liver, muscle enhance 5-20 % as much, and more slowly, than blood); so are pixels
   whose peak enhancement is below the same fraction of the 99.5th percentile peak enhancement
   (edge pixels whose curve jumps with motion but barely enhances), and pixels whose enhancement
   (smoothed raw maximum minus baseline) is below ``snr_min`` x ``sigma`` (noise only).
4. **LV vs RV (k-means, k = 2)** on the enhancement curves normalised to their own peak
   (``(s - baseline) / (max s - baseline)``, so clusters differ by timing, not by brightness);
   ``baseline`` = mean of the first ``baseline_s`` seconds. The cluster whose mean curve reaches
   half its maximum first is the RV (the bolus reaches the RV before the lungs and the LV).
5. **Blood pool (k-means, k = 4)** inside the LV cluster on the un-normalised enhancement curves:
   the cluster of highest mean peak enhancement is the blood-pool core.
6. **High-peak pixels**: the LV is the largest 8-connected component of the LV-cluster pixels whose
   peak enhancement is at least ``high_peak_fraction`` x the median peak of the core (partial-volume
   pixels that are mostly blood have at least about half the blood enhancement); holes are filled.
   The RV (for 3-class labels) is the same rule in the RV cluster, outside the LV, with the
   cluster's top quartile of peak enhancement as its core.

k-means is ``scipy.cluster.vq.kmeans2`` (k-means++ initialisation), restarted ``n_restarts``
times with seeds from ``seed``; the run of least within-cluster sum of squares wins, so the result
is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from quantification.aif_preprocessing import coil_sensitivity_map, resample_to_grid
from quantification.lv_mask import LABEL_LV, LABEL_RV, STRUCTURE_8, largest_component

__all__ = [
    "LegacyDetection",
    "LegacyDetectorSettings",
    "detect_lv_legacy",
    "estimate_noise_sd",
    "kmeans_curves",
]


@dataclass(frozen=True)
class LegacyDetectorSettings:
    """Knobs of the legacy detector (module docstring; defaults in ``conf/evaluate.yaml``).

    Attributes:
        snr_min: background if the pixel's peak SNR is below this (paper: 3).
        upslope_fraction: keep pixels with up-slope >= this x the 99.5th percentile up-slope.
        high_peak_fraction: keep LV/RV pixels with peak enhancement >= this x the core's median.
        n_blood_clusters: k of the k-means inside the LV cluster (paper: 4).
        smooth_s: Gaussian smoothing of the curves in time, seconds (SD).
        baseline_s: the first this-many seconds of the grid give the pre-contrast baseline.
        grid_step_s: temporal grid, seconds (docs/method.md §A2: 0.5).
        coil_smoothing_px: Gaussian sigma of the PD coil map, pixels.
        coil_floor: floor of the normalised coil map (as in the network's preprocessing).
        min_pixels: fewer enhancing pixels than this -> no detection (empty mask).
        n_restarts: k-means restarts (best within-cluster sum of squares kept).
        seed: seed of the k-means initialisations.
    """

    snr_min: float = 3.0
    upslope_fraction: float = 0.35
    high_peak_fraction: float = 0.5
    n_blood_clusters: int = 4
    smooth_s: float = 1.0
    baseline_s: float = 2.0
    grid_step_s: float = 0.5
    coil_smoothing_px: float = 2.0
    coil_floor: float = 0.2
    min_pixels: int = 8
    n_restarts: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("upslope_fraction", "high_peak_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("smooth_s", "baseline_s", "grid_step_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.n_blood_clusters < 1 or self.n_restarts < 1 or self.min_pixels < 2:
            raise ValueError(
                "need n_blood_clusters >= 1, n_restarts >= 1 and min_pixels >= 2, got "
                f"{self.n_blood_clusters}, {self.n_restarts}, {self.min_pixels}"
            )


@dataclass(frozen=True)
class LegacyDetection:
    """Result of :func:`detect_lv_legacy` for one series.

    Attributes:
        labels: uint8 [RO, E1]: 0 background, 1 LV, 2 RV; all 0 when nothing was found.
        reason: "" on success, else why the LV mask is empty.
        noise_sd: estimated noise SD of the raw series (signal units).
        n_foreground: pixels with SNR >= snr_min.
        n_enhancing: foreground pixels passing the up-slope test.
        rv_arrival_s, lv_arrival_s: time (s from the first SR frame) at which the mean normalised
            curve of the RV / LV cluster reaches half its maximum (NaN when not clustered).
    """

    labels: np.ndarray
    reason: str
    noise_sd: float
    n_foreground: int
    n_enhancing: int
    rv_arrival_s: float
    lv_arrival_s: float

    @property
    def found(self) -> bool:
        """Whether an LV mask was found."""
        return bool((self.labels == LABEL_LV).any())


def estimate_noise_sd(frames: np.ndarray) -> float:
    """Noise SD of a series from frame-to-frame differences (robust to anatomy and a bolus).

    Args:
        frames: float [T, RO, E1], T >= 2, raw magnitude frames (signal units).

    Returns:
        ``median over pixels of 1.4826 * median_t |x[t+1] - x[t]| / sqrt(2)`` (signal units): the
        SD of Gaussian noise for pixels whose signal changes slowly between frames.
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must be [T>=2, RO, E1], got shape {frames.shape}")
    per_pixel = 1.4826 * np.median(np.abs(np.diff(frames, axis=0)), axis=0) / np.sqrt(2.0)
    return float(np.median(per_pixel))


def kmeans_curves(
    curves: np.ndarray, k: int, n_restarts: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of curves (rows), best of ``n_restarts`` k-means++ runs by within-cluster SS.

    Args:
        curves: float [N, T], N >= k.
        k: number of clusters.
        n_restarts: independent initialisations.
        seed: seed of the first initialisation (restart i uses ``seed + i``).

    Returns:
        (centroids float64 [k, T], labels int [N] in [0, k)). Empty clusters keep a centroid but
        no member.
    """
    x = np.asarray(curves, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"need curves [N >= k={k}, T], got shape {x.shape}")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for i in range(n_restarts):
        centroids, labels = kmeans2(x, k, minit="++", seed=seed + i)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids, labels)
    assert best is not None
    return best[1], best[2]


def _half_max_time(curve: np.ndarray, step_s: float) -> float:
    """First time (s) at which ``curve`` reaches half of its maximum."""
    return float(np.argmax(curve >= 0.5 * curve.max()) * step_s)


def _pool(
    candidates: np.ndarray, peak: np.ndarray, core: np.ndarray, fraction: float
) -> np.ndarray:
    """Largest 8-connected blob of candidate pixels with peak >= fraction x median core peak,
    holes filled. All arrays [RO, E1]; ``core`` bool (subset of ``candidates``)."""
    if not core.any():
        return np.zeros(candidates.shape, dtype=bool)
    keep = candidates & (peak >= fraction * float(np.median(peak[core])))
    return ndimage.binary_fill_holes(largest_component(keep), structure=STRUCTURE_8)


def detect_lv_legacy(
    series: np.ndarray,
    times_s: np.ndarray,
    n_pd_frames: int,
    settings: LegacyDetectorSettings = LegacyDetectorSettings(),  # noqa: B008 (frozen)
) -> LegacyDetection:
    """Find the LV (and RV) blood pool of one AIF series without a network (docs/method.md §A3).

    Args:
        series: float [T, RO, E1] motion-corrected frames, PD frames first.
        times_s: [T] frame times in seconds, strictly increasing.
        n_pd_frames: leading proton-density frames (0: no coil correction).
        settings: thresholds and k-means settings.

    Returns:
        :class:`LegacyDetection` whose ``labels`` are in the input geometry [RO, E1]. When no LV can
        be found (too few enhancing pixels, no enhancement) the labels are all 0 and ``reason``
        says why; bad input raises instead.

    Raises:
        ValueError: wrong ranks/shapes, fewer than 2 SR frames, bad ``n_pd_frames``, NaN/Inf.
    """
    series = np.asarray(series, dtype=np.float32)
    times_s = np.asarray(times_s, dtype=np.float64)
    if series.ndim != 3 or 0 in series.shape:
        raise ValueError(f"series must be a non-empty [T, RO, E1], got shape {series.shape}")
    n_t = series.shape[0]
    if isinstance(n_pd_frames, bool) or not 0 <= int(n_pd_frames) <= n_t - 2:
        raise ValueError(f"n_pd_frames must be an int in [0, T-2={n_t - 2}], got {n_pd_frames!r}")
    if not np.isfinite(series).all():
        raise ValueError("series contains NaN or Inf")
    n_pd = int(n_pd_frames)
    step = settings.grid_step_s
    raw, _ = resample_to_grid(series[n_pd:], times_s[n_pd:], step)  # [N, RO, E1]; checks times
    sens = (
        coil_sensitivity_map(series[:n_pd], settings.coil_smoothing_px, settings.coil_floor)
        if n_pd > 0
        else np.ones(series.shape[1:], np.float32)
    )
    sigma_t = settings.smooth_s / step
    raw_s = ndimage.gaussian_filter1d(raw.astype(np.float64), sigma_t, axis=0, mode="nearest")
    signal = raw_s / sens  # coil-corrected, smoothed [N, RO, E1]

    noise_sd = estimate_noise_sd(series[n_pd:])
    foreground = raw_s.max(axis=0) >= settings.snr_min * max(noise_sd, 1e-12)
    n_base = max(1, int(round(settings.baseline_s / step)))
    baseline = signal[:n_base].mean(axis=0)
    peak = signal.max(axis=0) - baseline
    upslope = np.gradient(signal, step, axis=0).max(axis=0)  # signal / s

    empty = np.zeros(series.shape[1:], dtype=np.uint8)

    def failed(reason: str, n_enh: int = 0, rv_t: float = np.nan, lv_t: float = np.nan):
        return LegacyDetection(
            empty, reason, noise_sd, int(foreground.sum()), n_enh, float(rv_t), float(lv_t)
        )

    if foreground.sum() < settings.min_pixels:
        return failed(f"only {int(foreground.sum())} pixels with SNR >= {settings.snr_min}")
    reference_slope = float(np.percentile(upslope[foreground], 99.5))
    if not reference_slope > 0:
        return failed("no enhancement: the up-slope is <= 0 everywhere")
    reference_peak = float(np.percentile(peak[foreground], 99.5))
    raw_enhancement = raw_s.max(axis=0) - raw_s[:n_base].mean(axis=0)
    enhancing = (
        foreground
        & (raw_enhancement >= settings.snr_min * max(noise_sd, 1e-12))
        & (upslope >= settings.upslope_fraction * reference_slope)
        & (peak >= settings.upslope_fraction * reference_peak)
    )
    n_enh = int(enhancing.sum())
    if n_enh < settings.min_pixels:
        return failed(f"only {n_enh} enhancing pixels (fewer than {settings.min_pixels})", n_enh)

    curves = (signal[:, enhancing] - baseline[enhancing]).T  # [n_enh, N]
    shapes = curves / peak[enhancing][:, None]
    centroids, split = kmeans_curves(shapes, 2, settings.n_restarts, settings.seed)
    arrival = [_half_max_time(c, step) for c in centroids]
    lv_cluster = int(np.argmax(arrival))  # the later one; the RV enhances first
    rv_t, lv_t = arrival[1 - lv_cluster], arrival[lv_cluster]
    if np.bincount(split, minlength=2).min() == 0 or rv_t == lv_t:
        return failed("k-means found one arrival time only: LV and RV not separable", n_enh)

    lv_candidates, rv_candidates = np.zeros_like(enhancing), np.zeros_like(enhancing)
    lv_candidates[enhancing] = split == lv_cluster
    rv_candidates[enhancing] = split != lv_cluster
    lv_curves = curves[split == lv_cluster]
    k = min(settings.n_blood_clusters, len(lv_curves))
    _, blood_split = kmeans_curves(lv_curves, k, settings.n_restarts, settings.seed)
    lv_peaks = peak[lv_candidates]
    means = [
        lv_peaks[blood_split == j].mean() if (blood_split == j).any() else -np.inf for j in range(k)
    ]
    core = np.zeros_like(enhancing)
    core[lv_candidates] = blood_split == int(np.argmax(means))
    lv = _pool(lv_candidates, peak, core, settings.high_peak_fraction)
    if lv.sum() < 2:
        return failed("the LV cluster has no blood pool of 2 or more pixels", n_enh, rv_t, lv_t)

    rv_candidates &= ~lv
    rv_core = rv_candidates.copy()  # the RV's own core: its top quartile of peak enhancement
    if rv_candidates.any():
        rv_core &= peak >= np.percentile(peak[rv_candidates], 75)
    rv = _pool(rv_candidates, peak, rv_core, settings.high_peak_fraction) & ~lv
    labels = empty.copy()
    labels[rv] = LABEL_RV
    labels[lv] = LABEL_LV
    return LegacyDetection(labels, "", noise_sd, int(foreground.sum()), n_enh, rv_t, lv_t)
