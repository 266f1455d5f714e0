"""Polar resampling about the myocardial centroid and the inverse map to Cartesian pixels."""

from __future__ import annotations

import numpy as np
import pytest

from quantification.polar import from_polar, polar_coordinates, polar_geometry, to_polar


def _ring(shape=(130, 150), centre=(61.3, 77.8), r_in=17.0, r_out=26.0, squash=1.15):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    rho = np.hypot((rows - centre[0]) / squash, cols - centre[1])
    return (rho >= r_in) & (rho <= r_out)


def test_round_trip_of_pixel_coordinates_is_within_half_a_pixel_inside_the_ring():
    mask = _ring()
    geometry = polar_geometry(mask, n_angles=120, n_depth=16)
    rows, cols = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(float)
    polar = to_polar(np.stack([rows, cols]), geometry)
    assert polar.shape == (2, 120, 16)
    back = from_polar(polar, geometry)
    _, _, inside = polar_coordinates(geometry)
    assert (inside & mask).sum() > 0.97 * mask.sum()  # the ring covers the myocardium
    error = np.hypot(back[0] - rows, back[1] - cols)[inside]
    assert error.max() < 0.5
    assert np.isnan(back[0][~inside]).all()


def test_grid_runs_from_endocardium_to_epicardium_counter_clockwise_from_plus_columns():
    mask = _ring(squash=1.0)
    geometry = polar_geometry(mask, n_angles=8, n_depth=4)
    # pixel edges at 16.5 and 26.5 px, found to within the jaggedness of a digital circle
    assert geometry.r_inner == pytest.approx(np.full(8, 16.75), abs=1.0)
    assert geometry.r_outer == pytest.approx(np.full(8, 26.5), abs=1.0)
    rows, cols = geometry.sample_points()
    # bin 1 is centred on 67.5 deg: up (smaller row) and right of the centre
    assert rows[1, 0] < geometry.centre[0] and cols[1, 0] > geometry.centre[1]
    # depth grows outwards
    radius = np.hypot(rows - geometry.centre[0], cols - geometry.centre[1])
    assert np.all(np.diff(radius, axis=1) > 0)


def test_polar_grid_aligns_images_of_a_moved_heart():
    rows, cols = np.mgrid[0:130, 0:150].astype(float)

    def anatomy(shift):  # a smooth "T2" pattern fixed to the heart, which moved by shift
        r, c = rows - 61.3 - shift[0], cols - 77.8 - shift[1]
        return 50 + 8 * np.cos(np.arctan2(-r, c)) + 0.3 * np.hypot(r, c)

    reference = to_polar(anatomy((0, 0)), polar_geometry(_ring()))
    moved_mask = _ring(centre=(61.3 + 3.0, 77.8 - 2.0))
    moved = to_polar(anatomy((3.0, -2.0)), polar_geometry(moved_mask))
    assert np.abs(moved - reference).max() < 0.5  # a few % of the pattern's 16-unit range


def test_gap_in_the_ring_is_bridged_and_bad_input_is_rejected():
    mask = _ring()
    mask[55:68, 95:] = False  # open on the right
    geometry = polar_geometry(mask, n_angles=60)
    assert np.isfinite(geometry.r_inner).all() and np.isfinite(geometry.r_outer).all()
    with pytest.raises(ValueError, match="non-empty"):
        polar_geometry(np.zeros((10, 10)))
    with pytest.raises(ValueError, match=r"\[\.\.\., 60, 16\]"):
        from_polar(np.zeros((30, 16)), geometry)
