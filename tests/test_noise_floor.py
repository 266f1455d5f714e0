"""Rician noise floor: sigma from the image frame, floor removal before the relaxation fits."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic.rician_noise import add_rician_noise
from quantification.noise_floor import (
    air_sigma,
    background_sigma,
    remove_noise_floor,
    residual_sigma,
    slice_noise,
)
from quantification.relaxometry import fit_t1, fit_t2, t2_signal

TE_MS = np.array([0.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0])


def test_sigma_from_the_air_around_the_body():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:96, 0:96]
    body = np.hypot(rows - 48, cols - 48) < 36  # the frame (6 px) is air
    images = add_rician_noise(rng, np.where(body, 500.0, 0.0)[None].repeat(4, 0), 12.0)
    assert background_sigma(images) == pytest.approx(12.0, rel=0.05)
    assert np.isnan(background_sigma(images[:, :10, :10]))  # no frame in a 10 px image


def test_floor_removal_unbiases_the_squared_signal_and_the_t2_fit():
    rng = np.random.default_rng(1)
    clean = t2_signal(TE_MS, np.full(20000, 100.0), np.full(20000, 50.0), np.zeros(20000))
    noisy = add_rician_noise(rng, clean, 8.0)  # SNR 12.5 at TE 0, ~3.8 at TE 60
    floor_free = remove_noise_floor(noisy, 8.0)
    np.testing.assert_allclose((floor_free**2).mean(1), (clean**2).mean(1), rtol=0.03)
    raw, fixed = fit_t2(noisy, TE_MS, offset_fraction=0.0), fit_t2(floor_free, TE_MS,
                                                                   offset_fraction=0.0)  # fmt: skip
    assert np.nanmean(raw.t_ms) > 51.5  # the floor reads as slower decay
    assert np.nanmean(fixed.t_ms) == pytest.approx(50.0, abs=0.6)
    np.testing.assert_array_equal(remove_noise_floor(noisy, float("nan")), noisy)


def test_sigma_ignores_tissue_reaching_into_the_frame():
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[0:96, 0:96]
    body = np.hypot(rows - 48, cols - 70) < 40  # a fifth of the frame is tissue
    images = add_rician_noise(rng, np.where(body, 300.0, 0.0)[None].repeat(6, 0), 10.0)
    assert background_sigma(images) == pytest.approx(10.0, rel=0.03)
    frame = np.ones((96, 96), bool)
    frame[6:-6, 6:-6] = False
    assert np.median(images[:, frame]) / np.sqrt(2 * np.log(2)) > 10.5  # the median alone: high
    assert background_sigma(np.zeros((2, 40, 40))) == 0.0  # a zero-filled background


def _inversion_recovery_crop(rng, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue everywhere (no air): T1 500-1500 ms across the image, 11 inversion times."""
    ti = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])
    t1 = np.broadcast_to(np.linspace(500.0, 1500.0, 40), (40, 40))
    clean = np.abs(400.0 * (1 - 2 * np.exp(-ti[:, None, None] / t1)))
    return add_rician_noise(rng, clean, sigma), ti


def test_a_frame_of_tissue_is_not_taken_for_air_and_the_residuals_measure_the_noise():
    images, ti = _inversion_recovery_crop(np.random.default_rng(3), 8.0)
    sigma, why = air_sigma(images)
    assert np.isnan(sigma) and "not air" in why
    assert background_sigma(images) > 16.0  # what the frame alone would have said

    noise = slice_noise(images, lambda y: fit_t1(y, ti, model="t1_2p"), n_parameters=2)
    assert noise.source == "residuals" and noise.note == why
    assert noise.sigma == pytest.approx(8.0, rel=0.1)


def test_verified_air_is_used_as_it_is():
    rng = np.random.default_rng(4)
    rows, cols = np.mgrid[0:96, 0:96]
    body = np.hypot(rows - 48, cols - 48) < 36
    images = add_rician_noise(rng, np.where(body, 500.0, 0.0)[None].repeat(4, 0), 12.0)
    assert air_sigma(images) == (background_sigma(images), "")
    noise = slice_noise(images, lambda y: pytest.fail("no fit needed"), n_parameters=2)
    assert noise.source == "background" and noise.measured
    assert np.isnan(air_sigma(np.zeros((2, 40, 40)))[0])  # zero-filled: nothing to measure


def test_residual_sigma_is_the_chi_square_scale_of_the_residuals():
    rng = np.random.default_rng(5)
    rss = 9.0 * rng.chisquare(6, 50000)
    assert residual_sigma(rss, 6) == pytest.approx(3.0, rel=0.01)
    assert np.isnan(residual_sigma(np.full(4, np.nan), 6))
