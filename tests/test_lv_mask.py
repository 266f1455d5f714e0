"""Probability map -> masks: connected components, the method.md §A6 threshold rule, label maps."""

import h5py
import numpy as np
import pytest
from scipy import ndimage

from datamodules.synthetic.aif_phantom import write_aif_phantoms
from quantification.lv_mask import (
    STRUCTURE_8,
    largest_component,
    lv_mask_from_probability,
    masks_from_probabilities,
)


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_largest_component_keeps_the_biggest_blob():
    mask = disk((64, 48), (20, 20), 5) | disk((64, 48), (45, 30), 3)
    out = largest_component(mask)
    assert out.dtype == bool and out.shape == mask.shape
    np.testing.assert_array_equal(out, disk((64, 48), (20, 20), 5))


def test_largest_component_is_8_connected():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True  # touching only by corners: one component
    mask[5, 0] = mask[5, 1] = True
    np.testing.assert_array_equal(largest_component(mask), np.eye(6, dtype=bool) & mask)


def test_largest_component_empty_and_tie():
    assert not largest_component(np.zeros((5, 5), bool)).any()
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[4, 4] = True
    out = largest_component(mask)
    assert out.sum() == 1 and out[0, 0]  # tie: first in raster order


def test_threshold_removes_the_weaker_of_two_blobs():
    strong, weak = disk((64, 48), (20, 15), 4), disk((64, 48), (45, 35), 4)
    p = 0.9 * strong + 0.6 * weak
    mask, t = lv_mask_from_probability(p)
    np.testing.assert_array_equal(mask, strong)
    # weak blob survives while 0.6 > t * 0.9, i.e. up to t = 0.66; it is gone at 0.67
    assert t == pytest.approx(0.67)


def test_threshold_on_smooth_maps_keeps_the_brighter_peak():
    yy, xx = np.indices((64, 48))
    p = 0.95 * np.exp(-((yy - 20) ** 2 + (xx - 15) ** 2) / 20.0)
    p += 0.7 * np.exp(-((yy - 45) ** 2 + (xx - 35) ** 2) / 20.0)
    mask, t = lv_mask_from_probability(p)
    assert t > 0.5
    assert mask[20, 15] and not mask[45, 35]
    np.testing.assert_array_equal(mask, p > t * p.max())


def test_single_blob_stays_at_start():
    p = 0.8 * disk((64, 48), (30, 20), 5)
    mask, t = lv_mask_from_probability(p)
    assert t == 0.5
    np.testing.assert_array_equal(mask, p > 0.4)


def test_all_zero_map_gives_empty_mask():
    mask, t = lv_mask_from_probability(np.zeros((64, 48), np.float32))
    assert mask.dtype == bool and not mask.any() and t == 0.5


def test_no_single_blob_falls_back_to_largest_blob_at_start():
    big, small = disk((64, 48), (20, 15), 5), disk((64, 48), (45, 35), 3)
    p = 1.0 * (big | small)  # same probability: no threshold separates them
    mask, t = lv_mask_from_probability(p)
    assert t == 0.5
    np.testing.assert_array_equal(mask, big)


def test_threshold_arguments_are_checked():
    with pytest.raises(ValueError):
        lv_mask_from_probability(np.zeros((4, 4)), step=0.0)
    with pytest.raises(ValueError):
        lv_mask_from_probability(np.zeros((2, 4, 4)))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def test_masks_from_probabilities_three_classes():
    shape = (64, 48)
    lv, rv, spur = disk(shape, (30, 28), 5), disk(shape, (30, 14), 5), disk(shape, (55, 40), 2)
    logits = np.zeros((3, *shape))
    logits[0] = 4.0
    logits[1] += 8.0 * lv + 4.5 * spur  # spurious LV blob, less probable than the true LV
    logits[2] += 8.0 * rv
    labels = masks_from_probabilities(softmax(logits), n_classes=3)
    assert labels.dtype == np.uint8 and labels.shape == shape
    np.testing.assert_array_equal(labels == 1, lv)
    np.testing.assert_array_equal(labels == 2, rv)


def test_masks_from_probabilities_no_lv_decision_gives_no_lv():
    shape = (32, 32)
    logits = np.zeros((3, *shape))
    logits[0] = 3.0
    logits[1] += 2.0 * disk(shape, (10, 10), 3)  # LV never the most probable class
    logits[2] += 6.0 * disk(shape, (20, 20), 3)
    labels = masks_from_probabilities(softmax(logits), n_classes=3)
    assert not (labels == 1).any()
    np.testing.assert_array_equal(labels == 2, disk(shape, (20, 20), 3))


@pytest.mark.parametrize("n_classes", [1, 2])
def test_masks_from_probabilities_sigmoid(n_classes):
    shape = (64, 48)
    lv = disk(shape, (30, 28), 5)
    p = np.full(shape, 0.02)
    p[lv] = 0.97
    p[5, 5] = 0.3  # below 0.5: never LV
    labels = masks_from_probabilities(p[None].astype(np.float32), n_classes=n_classes)
    np.testing.assert_array_equal(labels, lv.astype(np.uint8))


def test_masks_from_probabilities_two_channel_softmax():
    shape = (32, 32)
    lv = disk(shape, (16, 16), 4)
    logits = np.stack([np.full(shape, 2.0), 6.0 * lv])
    labels = masks_from_probabilities(softmax(logits), n_classes=2)
    np.testing.assert_array_equal(labels, lv.astype(np.uint8))


def test_masks_from_probabilities_checks_channels():
    with pytest.raises(ValueError):
        masks_from_probabilities(np.zeros((3, 8, 8)), n_classes=2)
    with pytest.raises(ValueError):
        masks_from_probabilities(np.zeros((1, 8, 8)), n_classes=3)


# ------------------------------------------- the one-pass rule against threshold-by-threshold


def repeated_labelling_rule(p_lv: np.ndarray) -> tuple[np.ndarray, float]:
    """The rule as it was first written (label at every threshold until one blob): the
    reference for :func:`lv_mask_from_probability`, which labels only where it can matter."""
    p = np.where(np.isfinite(p_lv), p_lv, 0.0).astype(np.float64)
    p_max = float(p.max(initial=0.0))
    if p_max <= 0.0:
        return np.zeros(p.shape, dtype=bool), 0.5
    for t in np.round(0.5 + 0.01 * np.arange(50), 10):
        mask = p > t * p_max
        if ndimage.label(mask, structure=STRUCTURE_8)[1] == 1:
            return mask, float(t)
    return largest_component(p > 0.5 * p_max), 0.5


def network_like_maps(truth_lv: np.ndarray, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """LV probability maps as a network gives them for a phantom's LV: the blurred truth, plus
    up to three weaker or equal distractor blobs, noise, and quantised plateaus now and then."""
    maps = []
    yy, xx = np.indices(truth_lv.shape)
    for _ in range(n):
        p = ndimage.gaussian_filter(truth_lv.astype(np.float64), rng.uniform(0.5, 3.0))
        p *= rng.uniform(0.5, 1.0) / max(p.max(), 1e-9)
        for _ in range(rng.integers(0, 4)):
            centre = rng.uniform(0, truth_lv.shape)
            width = rng.uniform(1.0, 30.0)
            height = rng.choice([rng.uniform(0.2, 1.0), p.max()])
            p += height * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / width)
        p += rng.normal(0.0, rng.choice([0.0, 0.01, 0.05]), p.shape)
        if rng.random() < 0.3:
            p = np.round(p, 1)  # saturated plateaus: ties between blobs
        maps.append(np.clip(p, 0.0, 1.0))
    return maps


def test_one_pass_rule_equals_the_threshold_by_threshold_rule_on_phantom_cases(tmp_path):
    path = write_aif_phantoms(tmp_path / "cases.h5", n_patients=2, seed=21)
    rng = np.random.default_rng(0)
    maps = []
    with h5py.File(path) as h5:
        for group in h5.values():
            maps += network_like_maps(group["mask"][()] == 1, rng, 120)
    maps += [np.round(rng.random((64, 48)), 2) for _ in range(20)]  # noise: many blobs
    thresholds = []
    for p in maps:
        mask, t = lv_mask_from_probability(p)
        expected_mask, expected_t = repeated_labelling_rule(p)
        np.testing.assert_array_equal(mask, expected_mask)
        assert t == expected_t
        thresholds.append(t)
    assert len(maps) == 500
    # the cases cover the rule's branches: at start, raised, and the fallback on ties
    assert 0.5 < np.mean(np.array(thresholds) == 0.5) < 0.95 and max(thresholds) > 0.6
