"""Receive-coil gains from the heart's motion: recovered from the images, then divided out."""

from __future__ import annotations

import numpy as np
import pytest

from quantification.coil_shading import estimate_coil_gradient, image_gains
from quantification.relaxometry import fit_t1, fit_t2, t1_signal, t2_signal

TE_MS = np.array([0.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0])
TI_MS = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])


def _polar_t2(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free T2-prepared samples [9, 60, 8] of a myocardium with T2 45-60 ms."""
    t2 = rng.uniform(45, 60, (60, 8))
    a = rng.uniform(800, 1200, (60, 8))
    return t2_signal(TE_MS, a, t2, 0.03 * a), t2


def test_the_coil_gradient_is_recovered_and_the_t2_fit_becomes_exact():
    rng = np.random.default_rng(0)
    polar, t2 = _polar_t2(rng)
    shifts = np.vstack([[0.0, 0.0], rng.normal(0, 1.5, (TE_MS.size - 1, 2))])  # px
    gradient = np.array([0.012, -0.02])  # 1/px: 1-3 % gain change per pixel of motion
    shaded = polar * image_gains(shifts, gradient)[:, None, None]
    biased = fit_t2(shaded, TE_MS).t_ms
    assert np.abs(biased - t2).max() > 1.0  # the shading alone costs > 1 ms

    estimate = estimate_coil_gradient(shaded, shifts, lambda y: fit_t2(y, TE_MS))
    np.testing.assert_allclose(estimate.gradient_per_px, gradient, atol=2e-4)
    assert estimate.rss_after < 1e-3 * estimate.rss_before
    corrected = fit_t2(shaded / estimate.gains[:, None, None], TE_MS).t_ms
    assert np.abs(corrected - t2).max() < 0.05


def test_t1_fits_are_corrected_too_and_no_motion_is_the_identity():
    rng = np.random.default_rng(1)
    t1 = rng.uniform(900, 1200, (40, 6))
    polar = np.abs(t1_signal(TI_MS, np.full(t1.shape, 1000.0), t1))
    shifts = np.vstack([[0.0, 0.0], rng.normal(0, 1.0, (TI_MS.size - 1, 2))])
    shaded = polar * image_gains(shifts, np.array([-0.015, 0.01]))[:, None, None]
    estimate = estimate_coil_gradient(shaded, shifts, lambda y: fit_t1(y, TI_MS))
    corrected = fit_t1(shaded / estimate.gains[:, None, None], TI_MS).t_ms
    assert np.abs(corrected / t1 - 1).max() < 1e-3

    still = estimate_coil_gradient(polar, np.zeros((TI_MS.size, 2)), lambda y: fit_t1(y, TI_MS))
    np.testing.assert_array_equal(still.gains, 1.0)
    with pytest.raises(ValueError, match="shifts_px must be"):
        estimate_coil_gradient(polar, np.zeros((3, 2)), lambda y: fit_t1(y, TI_MS))
