"""T1 maps of crops around the heart that hold no air: the noise comes from the fit residuals,
the maps keep their pixels and agree with the same images seen with their air border; a slice
whose myocardium has no finite value fails with its reason."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy import ndimage

from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from exports.mapping_pipeline import Acquisition, MappingPipeline, MappingSettings


@pytest.fixture(scope="module")
def molli(tmp_path_factory):
    """One MOLLI phantom patient, native and post-contrast (SNR 10-60, with motion)."""
    return write_mapping_phantoms(tmp_path_factory.mktemp("molli"), 1, seed=3, sequence="molli")


def _slices(path, slice_ids=("slice_0", "slice_2", "slice_4")):
    """(images, TIs, masks, myocardium label, crop around the heart without air) per slice."""
    with h5py.File(path, "r") as h5:
        for group in (h5["case_0000"][k] for k in slice_ids):
            labels = group["truth/labels"][()] == 1
            rows, cols = np.nonzero(labels)
            half = int(0.75 * max(np.ptp(rows), np.ptp(cols)))
            r, c = int(rows.mean()), int(cols.mean())
            crop = np.s_[:, r - half : r + half, c - half : c + half]
            yield (group["images"][()], group["ti_ms"][()], group["masks"][()], labels, crop,
                   group.attrs["level"])  # fmt: skip


def _acquisition(images, ti, masks, level):
    return Acquisition("case_0000", "slice", images.astype(np.float32), ti, masks, level,
                       sequence="molli")  # fmt: skip


@pytest.mark.parametrize(
    "modality", [pytest.param("t1_native", marks=pytest.mark.slow), "post_contrast"]
)
def test_crops_without_air_map_like_the_whole_field_of_view(molli, modality):
    pipeline = MappingPipeline()
    for images, ti, masks, labels, crop, level in _slices(molli[modality]):
        masked = [pipeline.t1_slice(_acquisition(images[s], ti, masks[s], level))
                  for s in (np.s_[:], crop)]  # fmt: skip
        whole = [pipeline.t1_slice(_acquisition(images[s], ti, None, level))
                 for s in (np.s_[:], crop)]  # fmt: skip
        assert whole[0].details["t1"]["noise_source"] == "background"
        for result in (masked[1], whole[1]):
            assert result.success
            assert result.details["t1"]["noise_source"] == "residuals"
            assert "not air" in result.details["t1"]["noise_note"]
        assert masked[1].n_pixels == masked[0].n_pixels
        full_median, crop_median = (np.nanmedian(r.values) for r in masked)
        assert crop_median == pytest.approx(full_median, rel=0.01)
        myocardium = [labels, labels[crop[1:]]]
        values = [w.values[m] for w, m in zip(whole, myocardium, strict=True)]
        assert np.isfinite(values[1]).mean() >= 0.95
        assert np.nanmedian(values[1]) == pytest.approx(np.nanmedian(values[0]), rel=0.01)


def test_the_frame_of_a_tissue_crop_is_not_taken_for_noise(molli):
    images, ti, masks, _, crop, level = next(_slices(molli["post_contrast"]))
    result = MappingPipeline().t1_slice(_acquisition(images[crop], ti, None, level))
    with h5py.File(molli["post_contrast"], "r") as h5:
        truth = h5["case_0000"]["slice_0"].attrs["noise_sigma"]
    assert result.details["t1"]["noise_sigma"] == pytest.approx(truth, rel=0.25)


def test_a_slice_without_a_finite_myocardial_value_fails_with_its_reason(molli):
    images, ti, masks, _, _, level = next(_slices(molli["t1_native"]))
    impossible = MappingSettings(t1_range_ms=(5000.0, 6000.0))
    result = MappingPipeline(impossible).t1_slice(_acquisition(images, ti, masks, level))
    assert not result.success and result.n_pixels == 0
    assert result.details["t1"]["fit_failed_fraction"] < 0.1
    assert result.reason.startswith("no finite myocardial value: all ")
    assert "outside the valid range 5000-6000" in result.reason


def test_a_wall_too_thin_for_the_pruning_is_pruned_less(molli):
    images, ti, masks, _, _, level = next(_slices(molli["t1_native"], ("slice_4",)))
    normal = MappingPipeline().t1_slice(_acquisition(images, ti, masks, level))
    assert normal.details["t1"]["prune_px_used"] == 2
    thin_masks = np.stack([ndimage.binary_erosion(m) for m in masks])  # a 4 px wall
    thin = MappingPipeline().t1_slice(_acquisition(images, ti, thin_masks, level))
    assert thin.details["t1"]["prune_px_used"] == 1  # 2 px would leave 1 pixel of 290
    assert thin.n_pixels >= 0.15 * thin_masks[0].sum()
    assert np.nanmedian(thin.values) == pytest.approx(np.nanmedian(normal.values), rel=0.01)

    thick = MappingSettings(prune_px=8)  # more than half the wall: nothing would be left
    result = MappingPipeline(thick).t1_slice(_acquisition(images, ti, masks, level))
    assert result.success and result.n_pixels > 0
    assert result.details["t1"]["prune_px_used"] < 8
