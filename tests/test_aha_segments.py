"""AHA 16 segments from the RV insertion point, RV-based estimation, and method.md §B4 rules."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from quantification.aha_segments import (
    aha_segment_map,
    aha_segments,
    estimate_rv_insertion,
    patient_success,
    segment_means,
    slice_success,
)
from quantification.polar import polar_geometry


def test_basal_mid_and_apical_segments_from_the_anterior_insertion_point():
    insertion = 120.0  # standard orientation: RV on the left, septum counter-clockwise
    offsets = np.array([30, 90, 150, 210, 270, 330.0])
    assert aha_segments(insertion + offsets, insertion, "basal").tolist() == [2, 3, 4, 5, 6, 1]
    assert aha_segments(insertion + offsets, insertion, "mid").tolist() == [8, 9, 10, 11, 12, 7]
    apical = aha_segments(insertion + np.array([60, 150, 240, 330.0]), insertion, "apical")
    assert apical.tolist() == [14, 15, 16, 13]  # septal segment centred on the septum
    assert aha_segments(np.array([np.nan]), insertion, "mid").tolist() == [0]


@pytest.mark.parametrize("level", ["basal", "mid", "apical"])
@pytest.mark.parametrize("turn", [0.0, 37.0, 200.0, -75.0])
def test_segments_rotate_with_the_insertion_point(level, turn):
    angles = np.linspace(0, 359, 360)
    base = aha_segments(angles, 100.0, level)
    turned = aha_segments(angles + turn, 100.0 + turn, level)
    np.testing.assert_array_equal(base, turned)
    # a mirrored image (septum clockwise) mirrors the segments
    mirrored = aha_segments(2 * 100.0 - angles, 100.0, level, direction=-1)
    np.testing.assert_array_equal(base, mirrored)


def test_segment_map_and_means_on_a_ring():
    rows, cols = np.mgrid[0:80, 0:80].astype(float)
    rho = np.hypot(rows - 40, cols - 40)
    ring = (rho >= 15) & (rho <= 22)
    seg = aha_segment_map(ring, (40.0, 40.0), 90.0, "mid")
    assert set(np.unique(seg)) == {0, *range(7, 13)}
    values = seg.astype(float) * 10.0  # segment k has value 10 k
    means = segment_means(np.where(ring, values, np.nan), seg)
    assert means.shape == (16,)
    np.testing.assert_allclose(means[6:12], np.arange(7, 13) * 10.0)
    assert np.isnan(means[:6]).all() and np.isnan(means[12:]).all()


def test_slice_and_patient_success_rules():
    assert slice_success(6, 6) and not slice_success(5, 6)
    assert slice_success([8, 9], 8) and not slice_success([8, 7], 8)
    assert patient_success(["basal", "mid", "apical", "mid"])
    assert not patient_success(["basal", "mid", "mid"])


@pytest.fixture(scope="module")
def phantom_t2(tmp_path_factory) -> str:
    paths = write_mapping_phantoms(tmp_path_factory.mktemp("aha"), 1, seed=5, noise=False)
    return str(paths["t2"])


def test_rv_insertion_estimated_from_the_rv_matches_the_phantom_truth(phantom_t2):
    with h5py.File(phantom_t2, "r") as h5:
        for slice_id in ("slice_0", "slice_2"):  # basal, mid
            group = h5["case_0000"][slice_id]
            images, masks = group["images"][()], group["masks"][()] > 0
            geometries = [polar_geometry(m) for m in masks]
            found = estimate_rv_insertion(images, masks, geometries)
            assert found is not None and found.source == "estimated" and found.direction == 1
            truth = float(group.attrs["rv_insertion_deg"])
            error = (found.anterior_deg - truth + 180.0) % 360.0 - 180.0
            assert abs(error) < 25.0, (slice_id, found, truth)
