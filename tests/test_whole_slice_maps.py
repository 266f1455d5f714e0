"""Whole-slice T1 and T2 maps: every pixel fitted, per sequence model."""

from __future__ import annotations

import numpy as np
import pytest

from exports.whole_slice_maps import whole_slice_map

TI_MOLLI = np.array([100, 180, 260, 1100, 1180, 1260, 2100, 2180, 3100, 4100, 5100.0])


def images_of(curve: np.ndarray, shape: tuple[int, int] = (3, 4)) -> np.ndarray:
    """[N, H, W]: one curve per pixel, amplitude rising across the image (and one flat pixel)."""
    gains = np.linspace(200, 900, shape[0] * shape[1]).reshape(shape)
    images = curve[:, None, None] * gains
    images[:, 0, 0] = 500.0  # background: no signal change
    return images


def test_t1_per_sequence_model():
    t1 = 1000.0
    stone = images_of(np.abs(1 - 2 * np.exp(-TI_MOLLI / t1)))
    result = whole_slice_map(stone, TI_MOLLI, "t1")
    assert result.map_ms.dtype == np.float32 and result.map_ms.shape == (3, 4)
    assert np.isnan(result.map_ms[0, 0])
    np.testing.assert_allclose(result.map_ms.ravel()[1:], t1, rtol=1e-4)
    assert result.r_squared.ravel()[1:].min() > 0.9999
    # MOLLI: apparent T1* = T1 / (B/A - 1) with B/A = 1.8; the Look-Locker correction undoes it
    molli = images_of(np.abs(1 - 1.8 * np.exp(-TI_MOLLI / (t1 / 0.8))))
    np.testing.assert_allclose(whole_slice_map(molli, TI_MOLLI, "t1", "molli").map_ms.ravel()[1:],
                               t1, rtol=1e-4)  # fmt: skip
    saturation = np.array([100, 300, 500, 700, 900, 1100.0])
    sasha = images_of(1 - np.exp(-saturation / 1200.0))
    np.testing.assert_allclose(whole_slice_map(sasha, saturation, "t1", "sasha").map_ms.ravel()[1:],
                               1200.0, rtol=1e-4)  # fmt: skip


def test_t2_from_t2_prepared_images():
    te = np.array([0.0, 25, 30, 35, 40, 45, 50, 55, 60])
    result = whole_slice_map(images_of(np.exp(-te / 48.0) + 0.02), te, "t2", "t2prep")
    np.testing.assert_allclose(result.map_ms.ravel()[1:], 48.0, rtol=1e-4)


def test_bad_requests_are_refused():
    te = np.array([0.0, 25, 30])
    with pytest.raises(ValueError, match="3 images; a T2 fit .* needs at least 4"):
        whole_slice_map(np.ones((3, 2, 2)), te, "t2")
    with pytest.raises(ValueError, match="t2 sequence 'molli'"):
        whole_slice_map(np.ones((4, 2, 2)), np.arange(4.0), "t2", "molli")
    with pytest.raises(ValueError, match="quantity 'ecv'"):
        whole_slice_map(np.ones((4, 2, 2)), np.arange(4.0), "ecv")
    with pytest.raises(ValueError, match=r"\[N, H, W\] with times \[N\]"):
        whole_slice_map(np.ones((4, 2, 2)), np.arange(3.0), "t1")
