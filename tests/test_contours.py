"""Mask outlines for ROI overlays: closed loops along pixel edges that enclose the mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from quantification.contours import mask_outlines


def signed_area(outline: np.ndarray) -> float:
    """Shoelace area in (row, col) coordinates: positive for clockwise on screen (rows down)."""
    rows, cols = outline[:-1, 0], outline[:-1, 1]
    return 0.5 * float(np.dot(cols, np.roll(rows, -1)) - np.dot(rows, np.roll(cols, -1)))


def test_a_rectangle_is_its_four_corners():
    mask = np.zeros((6, 8), bool)
    mask[1:4, 2:7] = True
    [outline] = mask_outlines(mask)
    assert outline.tolist() == [[1, 2], [1, 7], [4, 7], [4, 2], [1, 2]]
    assert signed_area(outline) == 15.0


def test_diagonal_neighbours_share_one_outline_and_holes_run_the_other_way():
    pinch = np.zeros((4, 4), bool)
    pinch[1, 1] = pinch[2, 2] = True
    assert len(mask_outlines(pinch)) == 1  # 8-connected, as the LV blob rule
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    outer, hole = mask_outlines(ring)
    assert signed_area(outer) == 25.0 and signed_area(hole) == -1.0
    assert mask_outlines(np.zeros((3, 3), int)) == []


def test_outlines_enclose_exactly_the_mask_pixels():
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((24, 20)) > 0.45)
        outlines = mask_outlines(mask)
        assert sum(signed_area(o) for o in outlines) == mask.sum()
        for outline in outlines:
            assert np.array_equal(outline[0], outline[-1])
            steps = np.abs(np.diff(outline, axis=0))
            assert np.all((steps[:, 0] == 0) | (steps[:, 1] == 0))  # along pixel edges
            assert outline.min() >= 0 and np.all(outline.max(axis=0) <= mask.shape)
