"""Whole-slice maps (every pixel with signal, native geometry) and the region signals of the
segment fits."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from datamodules.synthetic.rician_noise import add_rician_noise
from datamodules.synthetic.sequence_signals import (
    look_locker_schedule,
    look_locker_signal,
    t2prep_signal,
)
from exports.mapping_pipeline import CorrectedPolar
from exports.whole_slice_maps import WholeSliceMap, whole_slice_map
from quantification.noise_floor import remove_noise_floor
from quantification.polar import polar_geometry, to_polar

TE_MS = np.array([0.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0])


def _disc_phantom(size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A disc of tissue in air: (tissue mask, T1 map rising from 400 to 1600 ms left to right)."""
    rows, cols = np.mgrid[0:size, 0:size]
    tissue = np.hypot(rows - size / 2, cols - size / 2) < size / 3
    return tissue, np.broadcast_to(np.linspace(400.0, 1600.0, size), (size, size)).copy()


def test_molli_whole_slice_t1_map_in_the_native_geometry():
    tissue, t1 = _disc_phantom()
    schedule = look_locker_schedule("5(3)3", np.full(11, 900.0))
    order = np.argsort(schedule.ti_ms)
    clean = np.abs(1000.0 * look_locker_signal(schedule, t1, 1 / 3000.0))[order] * tissue
    images = add_rician_noise(np.random.default_rng(0), clean, 5.0)  # SNR 200
    result = whole_slice_map(images, schedule.ti_ms[order], "t1", "molli")
    assert isinstance(result, WholeSliceMap)
    assert result.map_ms.shape == t1.shape and result.map_ms.dtype == np.float32
    np.testing.assert_allclose(np.nanmedian(result.map_ms[tissue] / t1[tissue]), 1.0, atol=0.01)
    assert np.isfinite(result.map_ms[tissue]).mean() > 0.98
    assert np.isnan(result.map_ms[~tissue]).mean() > 0.99  # air: no signal, not fitted
    assert np.nanmin(result.r_squared[tissue]) > 0.9
    assert np.array_equal(np.isfinite(result.r_squared), np.isfinite(result.map_ms))


def test_t2_whole_slice_map_with_the_shared_offset():
    tissue, t1 = _disc_phantom()
    t2 = t1 / 20.0  # 20-80 ms
    clean = t2prep_signal(TE_MS, t2, 800.0, offset_fraction=0.03) * tissue
    images = add_rician_noise(np.random.default_rng(1), clean, 4.0)
    result = whole_slice_map(images, TE_MS, "t2")
    np.testing.assert_allclose(np.nanmedian(result.map_ms[tissue] / t2[tissue]), 1.0, atol=0.01)


def test_auto_without_a_known_sequence_fits_stone_and_says_so(caplog):
    ti = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])
    images = np.abs(500.0 * (1 - 2 * np.exp(-ti[:, None, None] / np.full((6, 6), 900.0))))
    with caplog.at_level(logging.WARNING, logger="exports.whole_slice_maps"):
        result = whole_slice_map(images, ti, "t1")
    assert "fitted with the STONE model" in caplog.text
    np.testing.assert_allclose(result.map_ms, 900.0, rtol=1e-4)


def test_bad_input_is_a_clear_error():
    images = np.ones((9, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, H, W\] with N = len\(times_ms\)"):
        whole_slice_map(images, TE_MS[:5], "t2")
    with pytest.raises(ValueError, match="quantity must be 't1' or 't2'"):
        whole_slice_map(images, TE_MS, "ecv")
    with pytest.raises(ValueError, match="T2 maps are fitted from T2-prepared images"):
        whole_slice_map(images, TE_MS, "t2", "molli")


def test_region_signals_are_unbiased_near_the_null_point():
    """``--segment-fit roi``: the mean of M^2 minus 2 sigma^2 over a region is unbiased for its
    S^2, also where S is below the noise (an inversion's null point); the mean of the per-pixel
    floor removal, clipped at zero, is not."""
    rows, cols = np.mgrid[0:64, 0:64]
    radius = np.hypot(rows - 32, cols - 32)
    ring = (radius > 12) & (radius < 22)
    geometry = polar_geometry(ring, n_angles=60, n_depth=8)
    truth = np.array([0.0, 0.3, 1.0, 5.0])  # in units of sigma
    images = add_rician_noise(np.random.default_rng(2), truth[:, None, None] * ring, 1.0)
    squared = np.stack([to_polar(image**2, geometry) for image in images])
    corrected = CorrectedPolar(squared, squared, 1.0, np.ones(4))
    region = ring & (radius > 14) & (radius < 20)
    signals = corrected.region_signals(geometry, ring, region[None])[:, 0]
    np.testing.assert_allclose(signals, truth, atol=0.15)
    clipped = remove_noise_floor(images, 1.0)[:, region].mean(axis=1)
    assert clipped[0] > 0.4 and clipped[1] > 0.5  # biased high below the noise
