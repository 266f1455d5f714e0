"""Blood T1, the ECV formula, boundary pruning and valid ranges."""

from __future__ import annotations

import numpy as np
import pytest

from quantification.ecv import (
    blood_disc,
    blood_pool_pixels,
    blood_signal,
    blood_t1,
    ecv_percent,
    prune_boundary,
    restrict_to_range,
)
from quantification.relaxometry import t1_signal

TI_MS = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])


def test_ecv_equals_the_hand_computed_value():
    # native myocardium 1000 ms, post 450 ms; blood 1600 -> 300 ms; Hct 0.45
    # (1/450 - 1/1000) / (1/300 - 1/1600) = 0.00122222 / 0.00270833 = 0.451282; x 0.55 x 100
    assert ecv_percent(1000.0, 450.0, 1600.0, 300.0, 0.45) == pytest.approx(24.8205, abs=1e-3)
    maps = ecv_percent(np.array([1000.0, np.nan]), np.array([450.0, 400.0]), 1600.0, 300.0, 0.45)
    assert maps[0] == pytest.approx(24.8205, abs=1e-3) and np.isnan(maps[1])
    assert np.isnan(ecv_percent(1000.0, 450.0, 300.0, 300.0, 0.45))  # no contrast in blood
    with pytest.raises(ValueError, match="hematocrit must be a fraction"):
        ecv_percent(1000.0, 450.0, 1600.0, 300.0, 45.0)


def _slice_with_blood(t1_blood_ms: float, papillary: bool) -> tuple[np.ndarray, np.ndarray]:
    """T1-weighted images [11, 64, 64] of a ring around blood, optionally a papillary muscle."""
    rows, cols = np.mgrid[0:64, 0:64].astype(float)
    rho = np.hypot(rows - 30.0, cols - 33.0)
    myo = (rho >= 12) & (rho <= 18)
    t1 = np.where(myo, 1000.0, np.where(rho < 12, t1_blood_ms, 250.0))
    if papillary:  # 10 pixels of muscle inside the 5 px disc
        t1[np.hypot(rows - 33.5, cols - 36.5) <= 1.8] = 1000.0
    images = np.abs(t1_signal(TI_MS, np.full(t1.shape, 1000.0), t1))
    return images, np.broadcast_to(myo, images.shape)


def test_blood_t1_from_the_disc_at_the_myocardial_centroid():
    disc = blood_disc((64, 64), (30.0, 33.0))
    assert disc.sum() == 81  # pixel centres within 5 px
    images, masks = _slice_with_blood(1550.0, papillary=False)
    fit = blood_t1(images, masks, TI_MS)
    assert float(fit.t_ms) == pytest.approx(1550.0, rel=1e-4)
    # a papillary muscle reaching into the disc: the median ignores it, the mean does not
    images, masks = _slice_with_blood(1550.0, papillary=True)
    assert float(blood_t1(images, masks, TI_MS).t_ms) == pytest.approx(1550.0, rel=1e-4)
    assert float(blood_t1(images, masks, TI_MS, statistic="mean").t_ms) < 1540.0
    # an excluded image (empty mask) is left out
    masks = masks.copy()
    masks[3] = False
    assert np.isnan(blood_signal(images, masks)[3])
    assert float(blood_t1(images, masks, TI_MS).t_ms) == pytest.approx(1550.0, rel=1e-4)


def _small_cavity(shift_rc: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """An apical-like slice: blood cavity of radius 4 px (the 5 px disc reaches the ring),
    myocardium with partial volume over 1.5 px; one [64, 64] image per TI, shifted by shift_rc
    from image 5 on (the heart moved)."""
    images, masks = [], []
    for n, ti in enumerate(TI_MS):
        dr, dc = shift_rc if n >= 5 else (0.0, 0.0)
        rows, cols = np.mgrid[0:64, 0:64].astype(float)
        rho = np.hypot(rows - 30.2 - dr, cols - 33.4 - dc)
        myo_fraction = np.clip((rho - 3.25) / 1.5, 0, 1) * np.clip((17.75 - rho) / 1.5, 0, 1)
        blood = np.clip((4.25 - rho) / 1.5, 0, 1)
        signal = (
            blood * t1_signal(np.array([ti]), 1000.0, np.array(1550.0))[0]
            + myo_fraction * t1_signal(np.array([ti]), 800.0, np.array(1000.0))[0]
        )
        images.append(np.abs(signal))
        masks.append(myo_fraction >= 0.5)
    return np.stack(images), np.stack(masks)


def test_blood_t1_uses_cavity_pixels_away_from_the_myocardium():
    images, masks = _small_cavity()
    curves, margin = blood_pool_pixels(images, masks)
    assert 0 < curves.shape[1] < 81 and margin == 2.0  # only the heart of the cavity
    assert float(blood_t1(images, masks, TI_MS).t_ms) == pytest.approx(1550.0, rel=1e-3)
    # the disc signal's median mixes in the partial-volume ring: biased low
    assert float(blood_t1(images, masks, TI_MS, statistic="median").t_ms) < 1540.0
    # the disc follows the heart when it moves between images
    moved, moved_masks = _small_cavity(shift_rc=(2.0, -1.5))
    assert float(blood_t1(moved, moved_masks, TI_MS).t_ms) == pytest.approx(1550.0, rel=1e-3)
    with pytest.raises(ValueError, match="statistic must be"):
        blood_t1(images, masks, TI_MS, statistic="mode")


def test_pruning_removes_endo_and_epicardial_border_pixels():
    rows, cols = np.mgrid[0:64, 0:64].astype(float)
    rho = np.hypot(rows - 31.0, cols - 31.0)
    ring = (rho >= 12) & (rho < 18)
    pruned = prune_boundary(ring, 1)
    assert pruned.sum() < ring.sum() and not (pruned & ~ring).any()
    # kept = ring pixels whose 4 neighbours (up, down, left, right) are all ring
    p = np.pad(ring, 1)
    all_four = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    np.testing.assert_array_equal(pruned, ring & all_four)
    np.testing.assert_array_equal(prune_boundary(ring, 0), ring)
    assert prune_boundary(ring, 2).sum() < pruned.sum()


def test_values_outside_the_valid_range_become_nan():
    out = restrict_to_range(np.array([29.9, 30.0, 55.0, 100.0, 100.1, np.nan]), (30.0, 100.0))
    np.testing.assert_array_equal(np.isnan(out), [True, False, False, False, True, True])
