"""Shape QC: largest object, Euler number and eccentricity agree with scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import euler_number as skimage_euler
from skimage.measure import label, regionprops

from quantification.mask_alignment import replace_failed_masks
from quantification.myocardium_shape import (
    eccentricity,
    euler_number,
    largest_object,
    shape_qc,
)


def _ring(shape=(96, 110), centre=(47.0, 52.0), r_in=12.0, r_out=19.0, axes=(1.0, 1.0), angle=0.0):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    dr, dc = rows - centre[0], cols - centre[1]
    u = (dr * np.cos(angle) + dc * np.sin(angle)) / axes[0]
    v = (-dr * np.sin(angle) + dc * np.cos(angle)) / axes[1]
    rho = np.hypot(u, v)
    return (rho >= r_in) & (rho <= r_out)


def _shapes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ring = _ring()
    c_shape = ring.copy()
    c_shape[40:55, 60:] = False  # a gap: no hole any more
    two_holes = _ring(r_in=0, r_out=20)
    two_holes[40:46, 45:50] = False
    two_holes[50:55, 55:60] = False
    diagonal = np.zeros((20, 20), bool)
    diagonal[5, 5] = diagonal[6, 6] = diagonal[7, 5] = diagonal[6, 4] = True  # diamond of corners
    blobs = np.zeros((80, 80), bool)
    for _ in range(6):
        r, c, s = rng.integers(5, 70), rng.integers(5, 70), rng.integers(3, 9)
        blobs[r : r + s, c : c + s] = True
    return {
        "ring": ring,
        "ellipse_ring": _ring(axes=(1.6, 0.8), angle=0.5, r_in=10, r_out=15),
        "c_shape": c_shape,
        "disc": _ring(r_in=0),
        "two_holes": two_holes,
        "corner_diamond": diagonal,
        "thin_line": np.eye(30, dtype=bool),
        "blobs": blobs,
        "random": rng.random((40, 50)) > 0.55,
    }


@pytest.mark.parametrize("name", list(_shapes()))
def test_euler_number_and_eccentricity_match_regionprops(name):
    mask = _shapes()[name]
    # whole mask: 8-connected objects, 4-connected holes (skimage connectivity=2 in 2-D)
    assert euler_number(mask) == skimage_euler(mask, connectivity=2)
    obj = largest_object(mask)
    props = regionprops(obj.astype(np.uint8))[0]
    assert euler_number(obj) == props.euler_number
    assert eccentricity(obj) == pytest.approx(props.eccentricity, abs=1e-9)


def test_largest_object_keeps_the_biggest_8_connected_component():
    mask = _shapes()["blobs"]
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())[1:]
    assert largest_object(mask).sum() == sizes.max()
    assert not largest_object(np.zeros((5, 5))).any()


def test_qc_accepts_one_round_ring_and_names_why_others_fail():
    shapes = _shapes()
    ok = shape_qc(shapes["ring"])
    assert ok.valid and ok.euler_number == 0 and ok.eccentricity < 0.1 and ok.reason == ""
    gap = shape_qc(shapes["c_shape"])
    assert not gap.valid and "Euler number 1" in gap.reason
    elongated = shape_qc(_ring(axes=(2.0, 0.8), r_in=8, r_out=12))
    assert not elongated.valid and "eccentricity" in elongated.reason
    assert shape_qc(_ring(axes=(2.0, 0.8), r_in=8, r_out=12), max_eccentricity=0.99).valid
    assert not shape_qc(shapes["two_holes"]).valid
    assert "area 0" in shape_qc(np.zeros((10, 10))).reason


def test_failed_mask_is_replaced_by_a_valid_one_moved_onto_it():
    ring = _ring(centre=(45.0, 50.0))
    moved = _ring(centre=(49.0, 47.0))  # the heart moved 4 px down, 3 px left
    broken = moved.copy()
    broken[42:57, 58:] = False  # segmentation failed: ring open on the right
    masks = np.stack([ring, broken, np.zeros_like(ring)])
    valid = np.array([shape_qc(m).valid for m in masks])
    assert valid.tolist() == [True, False, False]
    result = replace_failed_masks(masks, valid)
    assert result.replaced.tolist() == [False, True, True]
    assert result.donor.tolist() == [-1, 0, 0]
    # the replacement of the broken ring sits where the heart is in that image
    dice = 2 * (result.masks[1] & moved).sum() / (result.masks[1].sum() + moved.sum())
    assert dice > 0.95
    assert shape_qc(result.masks[1]).valid
    # an empty failed mask carries no geometry: the donor is used unchanged
    np.testing.assert_array_equal(result.masks[2], ring)
    none_valid = replace_failed_masks(masks[1:], np.array([False, False]))
    assert none_valid.excluded.all() and not none_valid.masks.any()
