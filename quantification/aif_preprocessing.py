"""AIF perfusion series preprocessing, shared by training and the scanner-side runtime (method.md
§A2).

NumPy only (no torch, Lightning, Hydra; not even SciPy, whose ``ndimage`` import alone costs
~200 ms of the scanner-side model load): the Gaussian filter is a small separable matrix product
equal to ``scipy.ndimage.gaussian_filter(..., mode="nearest", truncate=4.0)``.

Pipeline of :func:`preprocess_aif_series`, input ``series`` float [T, RO, E1] (PD frames first),
``times_s`` [T] in seconds:

1. Split off the ``n_pd_frames`` proton-density (PD) frames; only saturation-recovery (SR) frames
   go on. PD frames are dropped *before* resampling so that the PD signal never leaks into the
   first SR grid points (the paper lists "resample" before "drop PD"; on SR frames only, this
   order is the sensible reading).
2. Resample the SR frames in time onto a regular ``grid_step_s`` grid that starts at the first SR
   frame time (linear interpolation between the two neighbouring acquired frames, vectorised
   over pixels). Only the first ``n_frames`` grid points are computed.
3. Coil-sensitivity correction with the PD frames (skipped when ``n_pd_frames == 0``): divide by
   the normalised sensitivity map ``s = max(G_sigma(mean PD) / max(G_sigma(mean PD)), floor)``,
   where ``G_sigma`` is a Gaussian filter of ``coil_smoothing_px`` pixels. The map is constant in
   time and interpolation is linear, so dividing after resampling gives exactly the same result
   as method.md §A2's "correct, then resample" while touching only ``n_frames`` frames. The floor
   stops
   air/lung pixels (PD ~ noise) from being amplified by more than ``1 / floor``.
4. Exactly ``n_frames`` frames: truncate, or pad by repeating the last frame.
5. Optional (``subtract_baseline``): subtract from every pixel its pre-contrast baseline, the
   minimum over time of its 3-frame moving average, so that only the enhancement remains. How
   bright tissue is before the bolus depends on the sequence (saturation time, saturation
   efficiency, single-bolus vs dual-sequence images: from ~0 to a fifth of the blood peak) and
   on the coil; the enhancement's timing is what tells the LV from the RV. Not in the paper's
   recipe (docs/method.md §A2); measured on out-of-distribution families (docs/results.md, "Out
   of distribution").
6. Centre crop/pad RO to ``ro_size`` and E1 to ``e1_size`` (zero padding).
7. Divide by the maximum of the result (``scale``), so the network input lies in [.., 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "AIFPreprocessing",
    "CropPad",
    "PreprocessedAIF",
    "center_crop_or_pad",
    "coil_sensitivity_map",
    "correct_coil_sensitivity",
    "fit_frame_count",
    "gaussian_smooth",
    "preprocess_aif_series",
    "preprocess_mask",
    "resample_to_grid",
    "restore_geometry",
    "subtract_baseline",
    "undo_center_crop_or_pad",
]


@dataclass(frozen=True)
class AIFPreprocessing:
    """Parameters of the AIF preprocessing (exported with the model; the runtime must match).

    Attributes:
        grid_step_s: temporal grid step in seconds (docs/method.md §A2: 0.5 s).
        n_frames: number of output frames = network input channels (64).
        ro_size: output readout size in pixels (64).
        e1_size: output phase-encode size in pixels (48).
        coil_smoothing_px: Gaussian sigma in pixels applied to the mean PD image before it is used
            as the coil-sensitivity map (2 px ~ 11 mm at 5.6 mm pixels: keeps the slowly varying
            coil profile, suppresses noise and most anatomy). 0 disables smoothing.
        coil_floor: lower bound of the normalised sensitivity map, as a fraction of its maximum
            (0.2: correction gain at most 5x). In air and lung the PD image is noise; a lower floor
            amplifies that noise until it sets the max-normalisation: on the phantoms a floor of
            0.05 left the LV peak at 0.16 of the image maximum in the 5th-percentile case, 0.2
            lifts it to 0.52 (median 0.56 -> 0.70). In (0, 1].
        subtract_baseline: subtract each pixel's pre-contrast baseline (step 5 of the module
            docstring). False (the paper's recipe) for artifacts exported before it existed.
    """

    grid_step_s: float = 0.5
    n_frames: int = 64
    ro_size: int = 64
    e1_size: int = 48
    coil_smoothing_px: float = 2.0
    coil_floor: float = 0.2
    subtract_baseline: bool = False

    def __post_init__(self) -> None:
        if not self.grid_step_s > 0:
            raise ValueError(f"grid_step_s must be > 0 s, got {self.grid_step_s}")
        for name in ("n_frames", "ro_size", "e1_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.coil_smoothing_px >= 0:
            raise ValueError(f"coil_smoothing_px must be >= 0, got {self.coil_smoothing_px}")
        if not 0 < self.coil_floor <= 1:
            raise ValueError(f"coil_floor must be in (0, 1], got {self.coil_floor}")


@dataclass(frozen=True)
class CropPad:
    """How one axis was centre-cropped or zero-padded, enough to undo it.

    Output index ``j`` holds original index ``j + start``; ``start < 0`` means padding before,
    ``start > 0`` cropping. Indices outside ``[0, original)`` are padding.

    Attributes:
        original: axis length before (pixels).
        size: axis length after (pixels).
        start: original index of output index 0.
    """

    original: int
    size: int
    start: int


def _centre_start(original: int, size: int) -> int:
    """Original index of output index 0 for a centred crop (>= 0) or pad (<= 0)."""
    if original >= size:
        return (original - size) // 2
    return -((size - original) // 2)


def _axis_slice(ndim: int, axis: int, sl: slice) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = sl
    return tuple(index)


def center_crop_or_pad(
    array: np.ndarray, size: int, axis: int, fill: float = 0
) -> tuple[np.ndarray, CropPad]:
    """Centre-crop or pad (with ``fill``) one axis of ``array`` to ``size``.

    Cropping 56 -> 48 keeps indices 4..51; padding 44 -> 48 adds 2 before and 2 after; an odd
    difference puts the extra pixel after. A crop returns a view, a pad a new array.

    Returns:
        (array with ``shape[axis] == size``, :class:`CropPad` to undo it).
    """
    array = np.asarray(array)
    axis = axis % array.ndim
    original = array.shape[axis]
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    start = _centre_start(original, size)
    crop_pad = CropPad(original=original, size=size, start=start)
    if original >= size:
        return array[_axis_slice(array.ndim, axis, slice(start, start + size))], crop_pad
    widths = [(0, 0)] * array.ndim
    widths[axis] = (-start, size - original + start)
    return np.pad(array, widths, mode="constant", constant_values=fill), crop_pad


def undo_center_crop_or_pad(
    array: np.ndarray, crop_pad: CropPad, axis: int, fill: float = 0
) -> np.ndarray:
    """Inverse of :func:`center_crop_or_pad` along ``axis``: back to ``crop_pad.original``.

    Pixels that had been cropped away are set to ``fill``; padding is removed.
    """
    array = np.asarray(array)
    axis = axis % array.ndim
    if array.shape[axis] != crop_pad.size:
        raise ValueError(
            f"axis {axis} has length {array.shape[axis]}, expected {crop_pad.size} from {crop_pad}"
        )
    shape = list(array.shape)
    shape[axis] = crop_pad.original
    out = np.full(shape, fill, dtype=array.dtype)
    lo = max(0, crop_pad.start)
    hi = min(crop_pad.original, crop_pad.start + crop_pad.size)
    if hi > lo:
        src = slice(lo - crop_pad.start, hi - crop_pad.start)
        out[_axis_slice(out.ndim, axis, slice(lo, hi))] = array[_axis_slice(array.ndim, axis, src)]
    return out


@lru_cache(maxsize=32)
def _gaussian_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """[n, n] matrix M with ``M @ x`` = 1-D Gaussian filter of x, edge values repeated (cached)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = np.arange(n)
    matrix = np.zeros((n, n))
    for offset, weight in zip(offsets, weights, strict=True):
        np.add.at(matrix, (rows, np.clip(rows + offset, 0, n - 1)), weight)
    matrix.flags.writeable = False
    return matrix


def gaussian_smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """2-D Gaussian filter (sigma in pixels, 'nearest' edges, truncated at 4 sigma).

    Args:
        image: [RO, E1].
        sigma_px: standard deviation in pixels, > 0.

    Returns:
        float32 [RO, E1]; equal to ``scipy.ndimage.gaussian_filter(image, sigma_px,
        mode="nearest")`` up to float rounding.
    """
    image = np.asarray(image, dtype=np.float64)
    rows = _gaussian_matrix(image.shape[0], sigma_px)
    cols = _gaussian_matrix(image.shape[1], sigma_px)
    return (rows @ image @ cols.T).astype(np.float32)


def coil_sensitivity_map(pd_frames: np.ndarray, smoothing_px: float, floor: float) -> np.ndarray:
    """Normalised coil-sensitivity map from the proton-density frames.

    Args:
        pd_frames: float [P, RO, E1], P >= 1.
        smoothing_px: Gaussian sigma in pixels (0: no smoothing).
        floor: lower bound as a fraction of the map maximum, in (0, 1].

    Returns:
        float32 [RO, E1] in [floor, 1]: ``max(G(mean PD) / max(G(mean PD)), floor)``.
    """
    pd_frames = np.asarray(pd_frames, dtype=np.float32)
    if pd_frames.ndim != 3 or pd_frames.shape[0] < 1:
        raise ValueError(f"pd_frames must be [P>=1, RO, E1], got shape {pd_frames.shape}")
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    pd = pd_frames.mean(axis=0)
    if smoothing_px > 0:
        pd = gaussian_smooth(pd, float(smoothing_px))
    peak = float(pd.max())
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"proton-density frames have no positive signal (max {peak})")
    return np.maximum(pd / np.float32(peak), np.float32(floor))


def correct_coil_sensitivity(
    sr_frames: np.ndarray, pd_frames: np.ndarray, smoothing_px: float, floor: float
) -> np.ndarray:
    """Remove the receive-coil shading from SR frames using the PD frames.

    Divides every frame by :func:`coil_sensitivity_map` (values in [floor, 1]), so the output keeps
    the signal units of the most sensitive pixel.

    Args:
        sr_frames: float [T, RO, E1] (any leading shape ending in RO, E1).
        pd_frames: float [P, RO, E1], P >= 1.
        smoothing_px: Gaussian sigma in pixels for the PD map.
        floor: lower bound of the normalised map.

    Returns:
        float32, same shape as ``sr_frames``.
    """
    sr_frames = np.asarray(sr_frames, dtype=np.float32)
    sens = coil_sensitivity_map(pd_frames, smoothing_px, floor)
    if sr_frames.shape[-2:] != sens.shape:
        raise ValueError(
            f"SR frame shape {sr_frames.shape[-2:]} differs from PD frame shape {sens.shape}"
        )
    return sr_frames / sens


def resample_to_grid(
    series: np.ndarray, times_s: np.ndarray, step_s: float, max_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate a time series onto a regular grid starting at ``times_s[0]``.

    The grid is ``times_s[0] + k * step_s`` for every k with grid time <= ``times_s[-1]`` (a 1e-6
    step tolerance absorbs float32 rounding of the times), capped at ``max_frames`` points.

    Args:
        series: float [T, ...] (time first, any pixel shape), T >= 2.
        times_s: [T] acquisition time of each frame in seconds, finite and strictly increasing.
        step_s: grid step in seconds, > 0.
        max_frames: compute only the first ``max_frames`` grid points (None: all).

    Returns:
        (values float32 [T', ...], grid_s float64 [T'] in the same time base as ``times_s``).
    """
    series = np.asarray(series, dtype=np.float32)
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or series.ndim < 1 or len(t) != series.shape[0]:
        raise ValueError(
            f"times_s must be 1-D with one entry per frame: times {t.shape}, series {series.shape}"
        )
    if len(t) < 2:
        raise ValueError(f"need at least 2 frames to resample, got {len(t)}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times_s contains NaN or Inf")
    if not np.all(np.diff(t) > 0):
        bad = int(np.argmin(np.diff(t) > 0))
        raise ValueError(
            f"times_s must be strictly increasing: times_s[{bad}]={t[bad]}, "
            f"times_s[{bad + 1}]={t[bad + 1]}"
        )
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s}")
    n = int(np.floor((t[-1] - t[0]) / step_s + 1e-6)) + 1
    if max_frames is not None:
        n = max(1, min(n, int(max_frames)))
    grid = t[0] + step_s * np.arange(n)
    idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 2)
    w = np.clip((grid - t[idx]) / (t[idx + 1] - t[idx]), 0.0, 1.0).astype(np.float32)
    w = w.reshape((n,) + (1,) * (series.ndim - 1))
    values = (1 - w) * series[idx] + w * series[idx + 1]
    return values, grid


def fit_frame_count(series: np.ndarray, n_frames: int) -> np.ndarray:
    """Exactly ``n_frames`` frames along axis 0: truncate, or pad by repeating the last frame.

    Args:
        series: [T, ...], T >= 1.
        n_frames: wanted frame count, >= 1.

    Returns:
        [n_frames, ...] (a view when truncating).
    """
    series = np.asarray(series)
    if series.ndim < 1 or series.shape[0] < 1:
        raise ValueError(f"series must have at least one frame, got shape {series.shape}")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    t = series.shape[0]
    if t >= n_frames:
        return series[:n_frames]
    pad = np.repeat(series[-1:], n_frames - t, axis=0)
    return np.concatenate([series, pad], axis=0)


@dataclass(frozen=True)
class PreprocessedAIF:
    """Network input of one AIF series, plus what is needed to map results back.

    Attributes:
        image: float32 [n_frames, ro_size, e1_size], max-normalised; time = channels.
        grid_s: float32 [n_frames] time of each output frame in seconds from the first SR frame
            (``k * grid_step_s``; frames at index >= ``n_valid`` are padded copies of the last one).
        ro: crop/pad applied to the RO axis.
        e1: crop/pad applied to the E1 axis.
        scale: the maximum divided out (coil-corrected signal units).
        n_valid: number of output frames that come from the acquisition (the rest are padding);
            None when unknown.
    """

    image: np.ndarray
    grid_s: np.ndarray
    ro: CropPad
    e1: CropPad
    scale: float
    n_valid: int | None = None


def _validate_series(series: np.ndarray, times_s: np.ndarray, n_pd_frames: int) -> None:
    if series.ndim != 3:
        raise ValueError(f"series must be [T, RO, E1], got shape {series.shape}")
    if 0 in series.shape:
        raise ValueError(f"series is empty: shape {series.shape}")
    if isinstance(n_pd_frames, bool) or not isinstance(n_pd_frames, int | np.integer):
        raise ValueError(f"n_pd_frames must be an int, got {type(n_pd_frames).__name__}")
    n_t = series.shape[0]
    if not 0 <= n_pd_frames < n_t:
        raise ValueError(f"n_pd_frames must be in [0, T={n_t}), got {n_pd_frames}")
    if n_t - n_pd_frames < 2:
        raise ValueError(f"need at least 2 SR frames, got {n_t - n_pd_frames} (T={n_t})")
    if times_s.ndim != 1 or len(times_s) != n_t:
        raise ValueError(f"times_s must be [T={n_t}], got shape {times_s.shape}")
    if not np.isfinite(times_s).all():
        raise ValueError("times_s contains NaN or Inf")
    steps = np.diff(times_s.astype(np.float64))
    if not (steps > 0).all():
        bad = int(np.argmin(steps > 0))
        raise ValueError(
            f"times_s must be strictly increasing: times_s[{bad}]={times_s[bad]}, "
            f"times_s[{bad + 1}]={times_s[bad + 1]}"
        )
    if not np.isfinite(series).all():
        raise ValueError("series contains NaN or Inf")


def subtract_baseline(frames: np.ndarray) -> np.ndarray:
    """Enhancement only: each pixel minus the minimum over time of its 3-frame moving average.

    Args:
        frames: float [T, RO, E1], T >= 1 (time first).

    Returns:
        float32 [T, RO, E1], >= 0.

    Example:
        >>> curve = np.array([10.0, 11.0, 9.0, 10.0, 30.0, 50.0, 20.0])[:, None, None]
        >>> subtract_baseline(curve)[:, 0, 0].round(1).tolist()
        [0.0, 1.0, 0.0, 0.0, 20.0, 40.0, 10.0]
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[0] < 3:
        return frames - frames.min(axis=0)
    smooth = (frames[:-2] + frames[1:-1] + frames[2:]) / np.float32(3)
    return np.maximum(frames - smooth.min(axis=0), np.float32(0))


def preprocess_aif_series(
    series: np.ndarray,
    times_s: np.ndarray,
    n_pd_frames: int,
    params: AIFPreprocessing = AIFPreprocessing(),  # noqa: B008 (frozen, immutable)
) -> PreprocessedAIF:
    """Turn one motion-corrected AIF series into the network input (see the module docstring).

    Args:
        series: float [T, RO, E1], PD frames first, T - n_pd_frames >= 2.
        times_s: [T] acquisition times in seconds, finite and strictly increasing (SR part).
        n_pd_frames: number of leading PD frames, 0 <= n_pd_frames < T (0: no coil correction).
        params: preprocessing parameters.

    Returns:
        :class:`PreprocessedAIF` with ``image`` float32 [n_frames, ro_size, e1_size].

    Raises:
        ValueError: bad shapes, NaN/Inf, bad times, bad ``n_pd_frames``, or no positive signal.
    """
    series = np.asarray(series)
    times_s = np.asarray(times_s)
    _validate_series(series, times_s, n_pd_frames)
    n_pd = int(n_pd_frames)
    sr, grid = resample_to_grid(
        series[n_pd:], times_s[n_pd:], params.grid_step_s, max_frames=params.n_frames
    )
    if n_pd > 0:
        sens = coil_sensitivity_map(series[:n_pd], params.coil_smoothing_px, params.coil_floor)
        sr /= sens
    n_valid = sr.shape[0]
    sr = fit_frame_count(sr, params.n_frames)
    if params.subtract_baseline:
        sr = subtract_baseline(sr)
    sr, ro = center_crop_or_pad(sr, params.ro_size, axis=1)
    sr, e1 = center_crop_or_pad(sr, params.e1_size, axis=2)
    scale = float(sr.max())
    if not scale > 0:
        raise ValueError(f"series has no positive signal after preprocessing (max {scale})")
    image = np.ascontiguousarray(sr, dtype=np.float32) / np.float32(scale)
    grid_s = (params.grid_step_s * np.arange(params.n_frames)).astype(np.float32)
    return PreprocessedAIF(image=image, grid_s=grid_s, ro=ro, e1=e1, scale=scale, n_valid=n_valid)


def preprocess_mask(
    mask: np.ndarray,
    params: AIFPreprocessing = AIFPreprocessing(),  # noqa: B008 (frozen, immutable)
) -> np.ndarray:
    """Apply the series' spatial crop/pad to a label mask: [RO, E1] -> [ro_size, e1_size].

    Padding is 0 (background); the dtype is kept.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"mask must be a non-empty [RO, E1] array, got shape {mask.shape}")
    mask, _ = center_crop_or_pad(mask, params.ro_size, axis=0)
    mask, _ = center_crop_or_pad(mask, params.e1_size, axis=1)
    return np.ascontiguousarray(mask)


def restore_geometry(map2d: np.ndarray, pre: PreprocessedAIF, fill: float = 0) -> np.ndarray:
    """Map a network-grid result back to the input pixel grid.

    Args:
        map2d: [..., ro_size, e1_size] (a mask, a probability map, or [C, ro, e1] maps).
        pre: the :class:`PreprocessedAIF` the input came from.
        fill: value for input pixels that had been cropped away.

    Returns:
        [..., RO, E1] of the original series.
    """
    map2d = np.asarray(map2d)
    if map2d.ndim < 2 or map2d.shape[-2:] != (pre.ro.size, pre.e1.size):
        raise ValueError(
            f"map must be [..., {pre.ro.size}, {pre.e1.size}], got shape {map2d.shape}"
        )
    out = undo_center_crop_or_pad(map2d, pre.e1, axis=-1, fill=fill)
    return undo_center_crop_or_pad(out, pre.ro, axis=-2, fill=fill)
