"""AIF preprocessing (method.md §A2): resampling, frame count, crop/pad geometry, coil
correction."""

import subprocess
import sys

import numpy as np
import pytest

from quantification.aif_preprocessing import (
    AIFPreprocessing,
    center_crop_or_pad,
    correct_coil_sensitivity,
    fit_frame_count,
    gaussian_smooth,
    preprocess_aif_series,
    preprocess_mask,
    resample_to_grid,
    restore_geometry,
    undo_center_crop_or_pad,
)


def irregular_times(n: int, seed: int = 0, start: float = 3.0) -> np.ndarray:
    """Heart-beat-like frame times (0.6-1.4 s apart, one missed trigger)."""
    steps = np.random.default_rng(seed).uniform(0.6, 1.4, n - 1)
    steps[n // 3] *= 2  # a missed trigger
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def test_linear_ramp_resamples_exactly_on_half_second_grid():
    t = irregular_times(40)
    slope = np.linspace(0.5, 2.0, 12).reshape(3, 4)
    offset = np.arange(12.0).reshape(3, 4)
    series = slope * t[:, None, None] + offset  # [T, 3, 4], linear in time per pixel

    values, grid = resample_to_grid(series, t, 0.5)

    assert grid[0] == t[0] and grid[-1] <= t[-1] < grid[-1] + 0.5
    np.testing.assert_allclose(np.diff(grid), 0.5)
    np.testing.assert_allclose(values, slope * grid[:, None, None] + offset, rtol=1e-6)
    assert values.dtype == np.float32


def test_piecewise_linear_curve_resamples_exactly():
    knots_t = np.array([0.0, 5.0, 8.0, 12.0, 20.0])
    knots_v = np.array([1.0, 1.0, 10.0, 4.0, 3.0])
    t = np.unique(np.concatenate([knots_t, np.sort(np.random.default_rng(1).uniform(0, 20, 15))]))
    series = np.interp(t, knots_t, knots_v)[:, None, None] * np.ones((1, 2, 2))

    values, grid = resample_to_grid(series, t, 0.5)

    assert len(grid) == 41  # 0, 0.5, ..., 20
    np.testing.assert_allclose(values[:, 1, 1], np.interp(grid, knots_t, knots_v), rtol=1e-6)
    np.testing.assert_allclose(values[:, 0, 0], values[:, 1, 1])


def test_resample_max_frames_computes_only_the_prefix():
    t = irregular_times(60)
    series = np.random.default_rng(2).random((60, 5, 5))
    full, grid = resample_to_grid(series, t, 0.5)
    part, grid_part = resample_to_grid(series, t, 0.5, max_frames=10)
    np.testing.assert_array_equal(part, full[:10])
    np.testing.assert_array_equal(grid_part, grid[:10])


def test_fit_frame_count_truncates_and_pads_with_last_frame():
    series = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.testing.assert_array_equal(fit_frame_count(series, 3), series[:3])
    padded = fit_frame_count(series, 8)
    assert padded.shape == (8, 2, 3)
    np.testing.assert_array_equal(padded[:5], series)
    for k in range(5, 8):
        np.testing.assert_array_equal(padded[k], series[-1])
    np.testing.assert_array_equal(fit_frame_count(series, 5), series)


@pytest.mark.parametrize("original", [40, 44, 47, 48, 49, 56, 64])
def test_center_crop_or_pad_round_trips(original):
    x = np.random.default_rng(original).random((3, original))
    y, cp = center_crop_or_pad(x, 48, axis=1)
    assert y.shape == (3, 48) and cp.original == original and cp.size == 48
    back = undo_center_crop_or_pad(y, cp, axis=1, fill=-1)
    if original <= 48:  # padding loses nothing
        np.testing.assert_array_equal(back, x)
    else:  # the central 48 come back, the cropped borders are the fill value
        np.testing.assert_array_equal(
            back[:, cp.start : cp.start + 48], x[:, cp.start : cp.start + 48]
        )
        assert (back[:, : cp.start] == -1).all() and (back[:, cp.start + 48 :] == -1).all()


def test_center_crop_or_pad_is_centred():
    _, crop = center_crop_or_pad(np.zeros((56, 2)), 48, axis=0)
    _, pad = center_crop_or_pad(np.zeros((44, 2)), 48, axis=0)
    assert crop.start == 4 and pad.start == -2


def make_series(e1: int, t_count: int = 90, n_pd: int = 3, seed: int = 0):
    """A small AIF-like series [T, 64, e1] with an LV blob near the centre and its mask."""
    rng = np.random.default_rng(seed)
    times = irregular_times(t_count, seed)
    ro_idx, e1_idx = np.mgrid[0:64, 0:e1]
    lv = (ro_idx - 30) ** 2 + (e1_idx - (e1 // 2 + 3)) ** 2 <= 16
    rv = (ro_idx - 30) ** 2 + (e1_idx - (e1 // 2 - 7)) ** 2 <= 16
    mask = np.zeros((64, e1), np.uint8)
    mask[lv], mask[rv] = 1, 2
    sr_t = times[n_pd:] - times[n_pd]
    bolus_lv = 8 * np.exp(-0.5 * ((sr_t - 20) / 4) ** 2)
    bolus_rv = 6 * np.exp(-0.5 * ((sr_t - 14) / 4) ** 2)
    sr = 1 + bolus_lv[:, None, None] * lv + bolus_rv[:, None, None] * rv
    sr = sr + rng.normal(0, 0.05, sr.shape)
    pd = np.full((n_pd, 64, e1), 20.0) + rng.normal(0, 0.2, (n_pd, 64, e1))
    series = np.concatenate([pd, sr]).astype(np.float32)
    return series, times.astype(np.float32), mask


@pytest.mark.parametrize("e1", [44, 48, 56])
def test_crop_pad_keeps_mask_aligned_and_restores(e1):
    series, times, mask = make_series(e1)
    params = AIFPreprocessing()

    pre = preprocess_aif_series(series, times, 3, params)
    mask_net = preprocess_mask(mask, params)

    assert pre.image.shape == (64, 64, 48) and pre.image.dtype == np.float32
    assert mask_net.shape == (64, 48) and mask_net.dtype == np.uint8
    assert pre.image.max() == pytest.approx(1.0)
    # the brightest pixel at peak LV enhancement lies in the LV label, the RV peak in the RV label
    lv_peak = np.unravel_index(np.argmax(pre.image[40]), (64, 48))
    rv_peak = np.unravel_index(np.argmax(pre.image[28]), (64, 48))
    assert mask_net[lv_peak] == 1 and mask_net[rv_peak] == 2
    assert (mask_net == 1).sum() == (mask == 1).sum()
    np.testing.assert_array_equal(restore_geometry(mask_net, pre), mask)
    probs = np.stack([mask_net == c for c in range(3)]).astype(np.float32)  # [C, 64, 48]
    np.testing.assert_array_equal(restore_geometry(probs, pre).argmax(0), mask)


def test_grid_starts_at_first_sr_frame_and_pd_frames_do_not_leak():
    times = np.array([0.0, 1.0, 5.0, 6.0, 7.5, 9.0], np.float32)  # 2 PD frames, then 4 SR
    series = np.ones((6, 64, 48), np.float32)
    series[:2] = 1000.0  # PD frames: bright, spatially uniform -> sensitivity map all ones
    series[2:] *= np.array([1.0, 2.0, 3.0, 4.0])[:, None, None]

    pre = preprocess_aif_series(series, times, 2)

    assert pre.n_valid == 9  # 5.0 .. 9.0 s every 0.5 s
    np.testing.assert_allclose(pre.grid_s, 0.5 * np.arange(64))
    expected = np.interp(5.0 + pre.grid_s[:9], times[2:], [1.0, 2.0, 3.0, 4.0]) / 4.0
    np.testing.assert_allclose(pre.image[:9, 10, 10], expected, rtol=1e-6)
    np.testing.assert_allclose(pre.image[9:, 10, 10], 1.0)  # padded with the last frame
    assert pre.scale == pytest.approx(4.0)


def test_no_pd_frames_skips_coil_correction():
    times = np.arange(70, dtype=np.float32) * 0.5
    rng = np.random.default_rng(3)
    series = rng.uniform(1, 2, (70, 64, 48)).astype(np.float32)
    pre = preprocess_aif_series(series, times, 0)
    np.testing.assert_allclose(pre.image, series[:64] / series[:64].max(), rtol=1e-6)


def shading(shape):
    """Smooth receive-coil profile: bright near one edge, ~4x darker on the far side."""
    ro, e1 = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((ro - 10.0) ** 2 + (e1 - 5.0) ** 2) / (2 * 45.0**2)).astype(np.float32)


def test_coil_correction_removes_known_smooth_shading():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0.5, 1.5, (20, 64, 56)).astype(np.float32)  # unshaded SR frames
    coil = shading((64, 56))
    pd = 30.0 * coil[None] * np.ones((2, 1, 1), np.float32)  # uniform PD seen through the coil

    ratio_before = (truth * coil) / truth
    exact = correct_coil_sensitivity(truth * coil, pd, smoothing_px=0.0, floor=0.05)
    smooth = correct_coil_sensitivity(truth * coil, pd, smoothing_px=2.0, floor=0.05)

    assert ratio_before.std() / ratio_before.mean() > 0.2
    np.testing.assert_allclose(exact, truth * coil.max(), rtol=1e-5)
    ratio = smooth / truth
    assert ratio.std() / ratio.mean() < 0.01


def test_coil_floor_limits_gain_in_air():
    pd = np.zeros((1, 32, 32), np.float32)
    pd[:, 8:24, 8:24] = 100.0  # body; air is 0
    sr = np.ones((4, 32, 32), np.float32)
    out = correct_coil_sensitivity(sr, pd, smoothing_px=1.0, floor=0.05)
    assert np.isfinite(out).all()
    assert out.max() == pytest.approx(1 / 0.05, rel=1e-5)
    assert out[:, 16, 16] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_smooth_matches_scipy(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(5).random((64, 56))
    np.testing.assert_allclose(
        gaussian_smooth(x, sigma), ndimage.gaussian_filter(x, sigma, mode="nearest"), atol=1e-6
    )


def bad_inputs():
    series = np.ones((10, 8, 6), np.float32)
    times = np.arange(10, dtype=np.float32)
    nan = series.copy()
    nan[3, 2, 2] = np.nan
    inf = series.copy()
    inf[0, 0, 0] = np.inf
    repeated = times.copy()
    repeated[5] = repeated[4]
    backwards = times[::-1].copy()
    return {
        "rank 2": (series[0], times[:8], 0),
        "rank 4": (series[None], times, 0),
        "empty": (series[:, :0], times, 0),
        "nan": (nan, times, 2),
        "inf": (inf, times, 2),
        "nan times": (series, np.where(times == 3, np.nan, times), 2),
        "one SR frame": (series, times, 9),
        "n_pd == T": (series, times, 10),
        "n_pd < 0": (series, times, -1),
        "n_pd float": (series, times, 2.0),
        "times repeated": (series, repeated, 2),
        "times decreasing": (series, backwards, 0),
        "len(times) != T": (series, times[:9], 2),
        "all zero": (np.zeros_like(series), times, 0),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input_raises_value_error(case):
    series, times, n_pd = bad_inputs()[case]
    with pytest.raises(ValueError):
        preprocess_aif_series(series, times, n_pd)


def test_restore_geometry_rejects_wrong_shape():
    series, times, _ = make_series(44)
    pre = preprocess_aif_series(series, times, 3)
    with pytest.raises(ValueError, match="64, 48"):
        restore_geometry(np.zeros((64, 44)), pre)


def test_imports_without_torch_or_scipy():
    code = (
        "import sys, quantification.aif_preprocessing; "
        "bad = [m for m in ('torch', 'lightning', 'hydra', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
