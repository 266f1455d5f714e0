"""Segmentation options of the mapping pipeline: one segmentation per slice from the fused
probabilities of its images, and the clean-up of a predicted mask before its shape QC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deployment.artifact import load_artifact
from exports.mapping_pipeline import Acquisition, MappingPipeline, MappingSettings
from exports.mask_preparation import clean_myocardium
from exports.myocardium_segmenter import MyocardiumSegmenter
from quantification.myocardium_shape import euler_number, shape_qc
from tests.test_mapping_runtime import export_myocardium_model


def _ring(size: int = 64) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    distance = np.hypot(rows - size / 2, cols - size / 2)
    return (distance > 12) & (distance < 18)


class _IntensityModel(nn.Module):
    """P(myocardium) = the normalised image itself: bright pixels are myocardium."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([1.0 - x, x], dim=1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_slice_segmented_once_from_the_mean_probability_of_its_images(tmp_path):
    ring = _ring()
    rows, cols = np.mgrid[0:64, 0:64]
    gap = ring & (np.abs(cols - 32) <= 2) & (rows < 32)  # one image misses a piece of the wall
    images = np.stack([ring, ring, ring & ~gap]).astype(np.float32) * 100.0 + 1.0
    path = tmp_path / "myo.ts"
    export_myocardium_model(_IntensityModel(), path)
    per_image = MyocardiumSegmenter(load_artifact(path))
    fused = MyocardiumSegmenter(load_artifact(path), fuse_slice=True)
    assert not shape_qc(per_image(images)[2]).valid  # alone, the third image's ring is open
    masks = fused(images)
    assert all(shape_qc(m).valid for m in masks) and (masks == masks[0]).all()
    np.testing.assert_allclose(
        fused.probabilities(images)[0], per_image.probabilities(images).mean(axis=0), atol=1e-6
    )

    times = np.array([100.0, 1000.0, 3000.0])
    acquisition = Acquisition("case", "slice", images, times, level="mid", sequence="molli")
    settings = MappingSettings(fuse_slice=True, min_valid_t1=1)
    prepared = MappingPipeline(settings, fused).prepare(acquisition)
    assert prepared.valid.all() and not prepared.replaced.any()


def test_the_clean_up_closes_a_small_gap_and_fills_holes_in_the_wall():
    ring = _ring()
    rows, cols = np.mgrid[0:64, 0:64]
    open_ring = ring & ~((np.abs(cols - 32) <= 1) & (rows < 32))  # a 3 px gap
    assert euler_number(open_ring) == 1
    closed = clean_myocardium(open_ring)
    assert euler_number(closed) == 0 and shape_qc(closed).valid
    assert (closed ^ ring).sum() < (open_ring ^ ring).sum()

    holed = ring.copy()
    holed[31:33, 47:49] = False  # a hole inside the wall (not the cavity)
    assert euler_number(holed) == -1
    filled = clean_myocardium(holed)
    assert euler_number(filled) == 0 and (filled == ring).all()

    island = ring | (np.hypot(rows - 4, cols - 4) < 3)
    assert (clean_myocardium(island) == ring).all()  # islands go, a good ring stays as it is
    assert (clean_myocardium(ring) == ring).all()
    assert not clean_myocardium(open_ring, gap_px=0)[open_ring == 0].any()

    masks = np.stack([open_ring] * 3)  # stored masks through the pipeline's QC
    acquisition = Acquisition("case", "slice", masks * 100.0, np.array([100.0, 1000, 3000]),
                              masks, level="mid")  # fmt: skip
    for cleanup, passed in ((False, 0), (True, 3)):
        settings = MappingSettings(mask_cleanup=cleanup)
        assert MappingPipeline(settings).prepare(acquisition).valid.sum() == passed
