"""Pixel-wise relaxometry fits: recovery, polarity restoration, degenerate pixels, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

from quantification.relaxometry import (
    FLAG_AT_BOUND,
    FLAG_FLAT,
    FLAG_NEGATIVE_AMPLITUDE,
    FLAG_NONFINITE,
    estimate_offset_fraction,
    fit_t1,
    fit_t2,
    t1_signal,
    t2_signal,
)

TE_MS = np.array([0.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0])  # phantom T2-prep
TI_MS = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])  # native STONE


def test_t2_three_parameter_recovery_noiseless_on_an_image_stack():
    rng = np.random.default_rng(0)
    t2 = rng.uniform(30, 120, (20, 30))
    a = rng.uniform(200, 2000, (20, 30))
    b = rng.uniform(0, 80, (20, 30))
    fit = fit_t2(t2_signal(TE_MS, a, t2, b), TE_MS)
    assert fit.t_ms.shape == (20, 30) and fit.valid.all()
    np.testing.assert_allclose(fit.t_ms, t2, rtol=1e-4)
    np.testing.assert_allclose(fit.amplitude, a, rtol=1e-3)
    np.testing.assert_allclose(fit.offset, b, atol=1e-2 * a.max())
    assert np.all(fit.r_squared > 0.999999)


def test_t1_two_parameter_recovery_from_magnitude_restores_the_polarity():
    t1 = np.array([250.0, 450.0, 1000.0, 1600.0])
    a = np.array([800.0, 1200.0, 1000.0, 900.0])
    signed = t1_signal(TI_MS, a, t1)
    fit = fit_t1(np.abs(signed), TI_MS)
    np.testing.assert_allclose(fit.t_ms, t1, rtol=1e-4)
    np.testing.assert_allclose(fit.amplitude, a, rtol=1e-4)
    np.testing.assert_array_equal(fit.polarity, np.sign(signed).astype(np.int8))


def test_t1_three_parameter_option_recovers_an_imperfect_inversion():
    t1 = np.array([300.0, 900.0, 1500.0])
    a = np.array([1000.0, 1000.0, 700.0])
    b = 1.8 * a  # inversion efficiency 0.9
    signal = np.abs(t1_signal(TI_MS, a, t1, b))
    fit = fit_t1(signal, TI_MS, model="t1_3p")
    np.testing.assert_allclose(fit.t_ms, t1, rtol=1e-3)
    np.testing.assert_allclose(fit.offset / fit.amplitude, 1.8, rtol=1e-3)


def test_times_in_any_order_give_the_same_fit():
    t1, a = np.array([700.0]), np.array([1000.0])
    order = np.random.default_rng(1).permutation(TI_MS.size)
    shuffled = fit_t1(np.abs(t1_signal(TI_MS, a, t1))[order], TI_MS[order])
    assert shuffled.t_ms[0] == pytest.approx(700.0, rel=1e-4)


def test_noisy_t2_and_t1_are_unbiased_and_match_scipy_curve_fit():
    rng = np.random.default_rng(2)
    n = 4000
    t2_signals = t2_signal(TE_MS, np.full(n, 1000.0), np.full(n, 50.0), np.full(n, 20.0))
    noisy = t2_signals + rng.normal(0, 5.0, t2_signals.shape)  # SNR 200
    fit = fit_t2(noisy, TE_MS)
    assert fit.valid.mean() > 0.99
    assert np.nanmean(fit.t_ms) == pytest.approx(50.0, abs=0.3)
    assert 0.5 < np.nanstd(fit.t_ms) < 5.0  # noise propagates, it is not smoothed away
    # the same pixels with scipy's Levenberg-Marquardt, started from the truth
    for k in range(5):
        popt, _ = curve_fit(lambda te, a, t2, b: a * np.exp(-te / t2) + b, TE_MS, noisy[:, k],
                            p0=(1000.0, 50.0, 20.0), maxfev=5000)  # fmt: skip
        assert fit.t_ms[k] == pytest.approx(popt[1], rel=1e-3)

    t1_signals = np.abs(t1_signal(TI_MS, np.full(n, 1000.0), np.full(n, 1000.0)))
    noisy_t1 = np.abs(t1_signals + rng.normal(0, 5.0, t1_signals.shape))
    fit1 = fit_t1(noisy_t1, TI_MS)
    assert np.nanmean(fit1.t_ms) == pytest.approx(1000.0, rel=0.003)


def test_t2_with_an_offset_shared_by_the_slice_is_exact_and_far_less_noisy():
    rng = np.random.default_rng(5)
    t2 = rng.uniform(45, 60, 3000)
    a = rng.uniform(800, 1200, 3000)
    clean = t2_signal(TE_MS, a, t2, 0.03 * a)  # B / A = 0.03 for the whole slice
    fit = fit_t2(clean, TE_MS, offset_fraction=0.03)
    np.testing.assert_allclose(fit.t_ms, t2, rtol=1e-5)
    np.testing.assert_allclose(fit.offset, 0.03 * a, rtol=1e-5)
    assert estimate_offset_fraction(clean, TE_MS) == pytest.approx(0.03, abs=1e-4)

    noisy = clean + rng.normal(0, 40.0, clean.shape)  # SNR 25
    beta = estimate_offset_fraction(noisy, TE_MS)
    assert beta == pytest.approx(0.03, abs=0.01)
    shared, free = fit_t2(noisy, TE_MS, offset_fraction=beta), fit_t2(noisy, TE_MS)
    err_shared, err_free = shared.t_ms - t2, free.t_ms - t2
    assert abs(np.nanmean(err_shared)) < 0.5 and np.nanstd(err_shared) < 6.0
    assert np.nanstd(err_shared) < 0.3 * np.nanstd(err_free)  # free B is nearly degenerate


def test_degenerate_pixels_are_flagged_nan_and_never_raise():
    good = t2_signal(TE_MS, np.array([1000.0]), np.array([50.0]), np.array([10.0]))[:, 0]
    cases = {
        "nan": np.where(np.arange(TE_MS.size) == 3, np.nan, good),
        "inf": np.where(np.arange(TE_MS.size) == 0, np.inf, good),
        "flat": np.full(TE_MS.size, 500.0),
        "zeros": np.zeros(TE_MS.size),
        "rising": good[::-1].copy(),
        "too_slow": t2_signal(TE_MS, np.array([1000.0]), np.array([1e5]), np.array([0.0]))[:, 0],
        "good": good,
    }
    fit = fit_t2(np.stack(list(cases.values()), axis=1), TE_MS)
    flags = dict(zip(cases, fit.flags, strict=True))
    assert flags["nan"] & FLAG_NONFINITE and flags["inf"] & FLAG_NONFINITE
    assert flags["flat"] & FLAG_FLAT and flags["zeros"] & FLAG_FLAT
    assert flags["rising"] & (FLAG_NEGATIVE_AMPLITUDE | FLAG_AT_BOUND)
    assert flags["too_slow"] & FLAG_AT_BOUND
    assert flags["good"] == 0
    assert np.isnan(fit.t_ms[:-1]).all() and np.isfinite(fit.t_ms[-1])

    t1_fit = fit_t1(np.stack([np.full(TI_MS.size, np.nan), np.ones(TI_MS.size)], 1), TI_MS)
    assert np.isnan(t1_fit.t_ms).all() and (t1_fit.flags != 0).all()


def test_mismatched_times_are_a_clear_error():
    with pytest.raises(ValueError, match=r"N = len\(times\) = 9"):
        fit_t2(np.zeros((11, 4)), TE_MS)
    with pytest.raises(ValueError, match="model must be"):
        fit_t1(np.zeros((11, 4)), TI_MS, model="t1_4p")  # type: ignore[arg-type]
