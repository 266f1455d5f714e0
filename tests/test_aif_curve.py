"""AIF curve (partial-volume rule) and first-pass features on analytic gamma-variate curves."""

import numpy as np
import pytest

from quantification.aif_curve import AIFFeatures, aif_curve, aif_features, aif_features_batch

STEP_S = 0.5
T = np.arange(64) * STEP_S  # the 0.5 s grid, 64 samples


def gamma_variate(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """(t - t0)^alpha exp(-(t - t0)/beta) for t > t0, scaled to a peak of 1 at t0 + alpha*beta."""
    tau = np.clip(t - t0, 0.0, None)
    return (tau / (alpha * beta)) ** alpha * np.exp(alpha - tau / beta)


# (t0, alpha, beta): first-pass arrival, shape and width; recirculation peaks 9 s after the peak
CASES = [(10.0, 3.0, 1.3), (8.0, 4.0, 1.0), (12.3, 2.5, 1.2), (6.0, 3.0, 1.0)]
BASELINE, AMPLITUDE, RECIRC, RECIRC_DELAY_S, RECIRC_WIDTH = 0.05, 0.35, 0.3, 9.0, 1.2


def aif_model(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Baseline + first pass + a delayed, smaller and wider recirculation gamma-variate."""
    beta_r = RECIRC_WIDTH * beta
    t_recirc_peak = t0 + alpha * beta + RECIRC_DELAY_S
    recirc = gamma_variate(t, t_recirc_peak - alpha * beta_r, alpha, beta_r)
    return BASELINE + AMPLITUDE * (gamma_variate(t, t0, alpha, beta) + RECIRC * recirc)


def analytic_features(t0: float, alpha: float, beta: float) -> dict[str, float]:
    """Features of the noise-free model from its closed form / a fine time grid."""
    peak = t0 + alpha * beta
    foot = t0 + beta * (np.sqrt(alpha) - 1.0) ** 2  # steepest-tangent ∩ baseline, closed form
    fine = np.linspace(peak, peak + RECIRC_DELAY_S, 80001)
    i_valley = int(np.argmin(aif_model(fine, t0, alpha, beta)))
    assert 0 < i_valley < fine.size - 1  # a true minimum between first pass and recirculation
    valley = float(fine[i_valley])
    in_pass = (T >= foot) & (T <= valley)
    auc = float(np.sum(aif_model(T, t0, alpha, beta)[in_pass] - BASELINE))
    return {"foot_s": foot, "peak_s": peak, "valley_s": valley, "auc": auc}


def on_grid(t_s: float) -> float:
    """The grid time nearest to t_s: sample-valued features are compared to it (± one sample)."""
    return round(t_s / STEP_S) * STEP_S


@pytest.mark.parametrize("case", CASES)
def test_features_on_noise_free_gamma_variates(case):
    t0, alpha, beta = case
    want = analytic_features(*case)
    f = aif_features(aif_model(T, *case), step_s=STEP_S)
    assert isinstance(f, AIFFeatures)
    assert abs(f.peak_s - want["peak_s"]) <= STEP_S
    assert abs(f.foot_s - want["foot_s"]) <= STEP_S
    assert abs(f.foot_s - t0) <= 2 * STEP_S  # the tangent foot sits just after the true arrival
    assert abs(f.valley_s - on_grid(want["valley_s"])) <= STEP_S
    assert f.auc == pytest.approx(want["auc"], rel=0.05)
    assert f.baseline == pytest.approx(BASELINE, abs=1e-6)
    assert f.peak_value == pytest.approx(BASELINE + AMPLITUDE, abs=0.01)
    assert f.first_pass_s == pytest.approx(f.valley_s - f.foot_s)
    assert f.auc_s == pytest.approx(f.auc * STEP_S)


@pytest.mark.parametrize("case", CASES)
def test_features_are_robust_to_one_percent_noise(case):
    want = analytic_features(*case)
    clean = aif_model(T, *case)
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0.0, 0.01 * clean.max(), size=(50, T.size))
    f = aif_features_batch(noisy, step_s=STEP_S)
    assert np.all(np.abs(f["peak_s"] - want["peak_s"]) <= STEP_S)
    assert np.all(np.abs(f["foot_s"] - want["foot_s"]) <= STEP_S)
    assert np.all(np.abs(f["valley_s"] - on_grid(want["valley_s"])) <= STEP_S)
    assert np.median(np.abs(f["auc"] / want["auc"] - 1.0)) < 0.05
    assert np.all(np.abs(f["baseline"] - BASELINE) < 0.005)


def test_batch_matches_single_curves():
    curves = np.stack([aif_model(T, *case) for case in CASES])
    batch = aif_features_batch(curves)
    for i, curve in enumerate(curves):
        single = aif_features(curve)
        for name, values in batch.items():
            assert getattr(single, name) == pytest.approx(values[i])


def test_auc_is_a_sum_of_samples_of_paper_size():
    # a typical clinical AIF: foot ~14 s, peak ~18 s, peak value ~0.385 (docs/method.md §A7)
    curve = 0.02 + 0.365 * gamma_variate(T, 13.5, 3.0, 1.5) + 0.1 * gamma_variate(T, 22.0, 3.0, 2.5)
    f = aif_features(curve)
    assert 13.0 <= f.foot_s <= 15.0 and f.peak_s == 18.0
    assert 4.0 < f.auc < 8.0  # the paper's AUC ~6: a plain sum of 0.5 s samples
    assert f.auc_s == pytest.approx(f.auc / 2)


def test_no_recirculation_ends_the_first_pass_at_the_end_of_the_series():
    f = aif_features(BASELINE + AMPLITUDE * gamma_variate(T, 10.0, 3.0, 1.5))
    assert f.valley_s == T[-1]


def test_flat_curve_is_degenerate_but_finite():
    f = aif_features(np.full(64, 0.1))
    assert f.foot_s == f.peak_s == f.valley_s == 0.0
    assert f.auc == 0.0 and f.baseline == pytest.approx(0.1)


def test_features_reject_bad_input():
    with pytest.raises(ValueError):
        aif_features(np.full(64, np.nan))
    with pytest.raises(ValueError):
        aif_features(np.zeros((2, 64)))


def make_series(weights: np.ndarray, mask: np.ndarray, bolus: np.ndarray) -> np.ndarray:
    """Series [T, RO, E1]: pixel p of the mask = weights[p] * bolus(t); outside: bright noise."""
    series = np.zeros((bolus.size, *mask.shape))
    series[:, mask] = bolus[:, None] * weights[None, :]
    series[:, ~mask] = 100.0  # brighter than any LV pixel, must be ignored
    return series


def test_aif_curve_keeps_the_brightest_15_percent_at_peak_enhancement():
    rng = np.random.default_rng(1)
    mask = np.zeros((64, 48), bool)
    mask[30:34, 20:25] = True  # 20 LV pixels -> 15 % = 3 kept
    weights = rng.permutation(np.arange(1.0, 21.0))  # distinct brightness: 18, 19, 20 are kept
    bolus = 0.1 + gamma_variate(T, 8.0, 3.0, 1.5)
    series = make_series(weights, mask, bolus)
    # the dimmest pixel is the brightest of all in frame 0 (before contrast): must not be picked
    series[0, mask] = np.where(weights == 1.0, 50.0, series[0, mask])
    curve = aif_curve(series.astype(np.float32), mask)
    assert curve.dtype == np.float32 and curve.shape == (64,)
    want = bolus * 19.0
    want[0] = series[0, mask][weights >= 18].mean()
    np.testing.assert_allclose(curve, want, rtol=1e-5)


def test_aif_curve_ties_and_small_masks():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    bolus = gamma_variate(np.arange(10.0), 2.0, 2.0, 1.0)
    flat = make_series(np.ones(16), mask, bolus)  # all tied: all kept
    np.testing.assert_allclose(aif_curve(flat, mask), bolus, rtol=1e-6)
    small = np.zeros((8, 8), bool)
    small[3, 3:6] = True  # 3 pixels: 15 % -> at least the single brightest
    series = make_series(np.array([1.0, 3.0, 2.0]), small, bolus)
    np.testing.assert_allclose(aif_curve(series, small, keep_fraction=0.15), 3.0 * bolus, rtol=1e-6)


def test_aif_curve_rejects_empty_mask_and_bad_shapes():
    with pytest.raises(ValueError):
        aif_curve(np.ones((10, 8, 8)), np.zeros((8, 8), bool))
    with pytest.raises(ValueError):
        aif_curve(np.ones((10, 8, 8)), np.ones((8, 9), bool))
