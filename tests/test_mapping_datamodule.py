"""Mapping DataModules (data=t1_native|t2|post_contrast): configs, batches, splits, the 256x256
network grid and its inverse, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import hydra
import numpy as np
import pytest
import torch

from datamodules.mapping_datamodule import MappingDataModule
from datamodules.mapping_transforms import RandomTranslateFlipElastic
from datamodules.synthetic.mapping_phantom import GENERATOR_VERSION
from formats.mapping_contract import MappingContractError, open_mapping_file, read_mapping_slice
from quantification.image_resize import (
    ResizeGeometry,
    image_to_network,
    mask_from_network,
    mask_to_network,
    normalize_intensity,
    probability_from_network,
)
from tests.conftest import compose_train_config

IMAGES_PER_SLICE = {"t1_native": 11, "t2": 9, "post_contrast": 11}
# 4 phantom patients of 2 slices: 2 train, 1 val, 1 test
SMALL = [
    "data.n_patients=4",
    "data.slices_per_patient=2",
    "data.val_fraction=0.25",
    "data.test_fraction=0.25",
]


def make_datamodule(modality: str, data_dir: Path, run_dir: Path, *overrides: str):
    """The DataModule of ``python train.py data=<modality>``, shrunk; run outputs in run_dir."""
    cfg = compose_train_config(
        [f"data={modality}", f"paths.data_dir={data_dir}", *SMALL, "data.batch_size=4", *overrides],
        output_dir=run_dir,
    )
    return hydra.utils.instantiate(cfg.data)


@pytest.mark.parametrize("modality", ["t1_native", "t2", "post_contrast"])
def test_each_config_yields_batches_of_images_and_myocardium_masks(modality, data_dir, tmp_path):
    dm = make_datamodule(modality, data_dir, tmp_path)
    assert isinstance(dm, MappingDataModule) and dm.hparams.modality == modality
    dm.prepare_data()
    dm.setup("fit")
    n = IMAGES_PER_SLICE[modality]
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [2 * 2 * n, 2 * n, 2 * n]
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {
            "image", "mask", "case_id", "slice_id", "image_index", "time_ms", "native_shape",
            "pixel_spacing_mm",
        }  # fmt: skip
        assert batch["image"].shape == (4, 1, 256, 256) and batch["image"].dtype == torch.float32
        assert batch["mask"].shape == (4, 256, 256) and batch["mask"].dtype == torch.int64
        assert set(batch["mask"].unique().tolist()) == {0, 1}
        assert batch["native_shape"].shape == (4, 2) and len(batch["case_id"]) == 4
        assert torch.isfinite(batch["image"]).all()
    # evaluation order is deterministic: case, slice, image
    val = next(iter(dm.val_dataloader()))
    assert val["image_index"].tolist() == [0, 1, 2, 3] and val["slice_id"] == ["slice_0"] * 4


def test_split_is_by_patient_written_and_reusable(data_dir, tmp_path):
    dm = make_datamodule("t2", data_dir, tmp_path / "a")
    dm.prepare_data()
    dm.setup()
    written = json.loads((tmp_path / "a" / "split.json").read_text())
    assert written == dm.split and sorted(sum(written.values(), [])) == [
        f"case_{i:04d}" for i in range(4)
    ]
    patients = {
        name: {dm.datasets[name].slices[i].patient_id for i, _ in dm.datasets[name].items}
        for name in ("train", "val", "test")
    }
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"])
    again = make_datamodule(
        "post_contrast", data_dir, tmp_path / "b", f"data.split_file={tmp_path / 'a/split.json'}",
        "data.split_seed=7",
    )  # fmt: skip
    again.setup()
    assert again.split == dm.split  # the same patients, now for the post-contrast images


def test_max_train_images_keeps_whole_patients_first(data_dir, tmp_path):
    dm = make_datamodule("t2", data_dir, tmp_path, "data.max_train_images=20")
    dm.prepare_data()
    dm.setup()
    items = dm.datasets["train"].items
    assert len(items) == 20  # 2 slices x 9 images of one patient, then 2 of the next
    first = {dm.datasets["train"].slices[i].patient_id for i, _ in items[:18]}
    assert len(first) == 1
    assert len(dm.split["train"]) == 2
    assert len(dm.datasets["val"]) == 18  # evaluation sets are not capped


def test_evaluation_samples_map_back_to_the_native_mask(data_dir, tmp_path):
    """A val sample is the stored image normalised and resized; its mask maps back exactly."""
    dm = make_datamodule("t1_native", data_dir, tmp_path)
    dm.prepare_data()
    dm.setup()
    ds = dm.datasets["val"]
    sample = ds[13]  # slice_1, image 2
    info = ds.slices[ds.items[13][0]]
    assert (sample["slice_id"], sample["image_index"]) == ("slice_1", 2)
    with open_mapping_file(ds.path) as h5:
        stored = read_mapping_slice(h5, info.case_id, info.slice_id, ds.path)
    geometry = ResizeGeometry(*stored.images.shape[1:])
    expected = image_to_network(normalize_intensity(stored.images[2]), geometry)
    np.testing.assert_allclose(sample["image"][0].numpy(), expected, atol=1e-5)
    native = mask_from_network(sample["mask"], geometry)
    np.testing.assert_array_equal(native.numpy(), stored.masks[2])
    assert sample["time_ms"] == pytest.approx(info.times_ms[2])


def test_a_file_of_another_modality_is_rejected(data_dir, tmp_path):
    t1 = make_datamodule("t1_native", data_dir, tmp_path)
    t1.prepare_data()
    dm = make_datamodule("t2", data_dir, tmp_path, f"data.path={t1.file}")
    with pytest.raises(MappingContractError, match="key 'modality': expected modality 't2'"):
        dm.setup()


def test_a_phantom_cache_of_another_generator_version_is_rewritten(tmp_path):
    dm = make_datamodule("t2", tmp_path / "cache", tmp_path, "data.n_patients=1")
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"mapping_{m}_p1_seed0_s2.h5" for m in ("post_contrast", "t1_native", "t2")
    ]
    with h5py.File(dm.file, "a") as f:
        f.attrs["generator_version"] = GENERATOR_VERSION - 1
    dm.prepare_data()
    with h5py.File(dm.file) as f:
        assert f.attrs["generator_version"] == GENERATOR_VERSION


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("shape", [(160, 256), (236, 240), (256, 256), (199, 181), (300, 270)])
def test_resize_and_inverse_resize_round_trip_a_mask(shape, keep_aspect):
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    radius = np.hypot((rows - 0.45 * height) / 1.1, cols - 0.55 * width)
    ring = ((radius > 17) & (radius < 29)).astype(np.uint8)  # a myocardium-like ring
    geometry = ResizeGeometry(height, width, keep_aspect=keep_aspect)
    on_grid = mask_to_network(ring, geometry)
    assert on_grid.shape == (256, 256) and on_grid.dtype == np.uint8
    back = mask_from_network(on_grid, geometry)
    via_probability = probability_from_network(on_grid.astype(np.float32), geometry) >= 0.5
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    if max(shape) <= 256:  # upsampling on both axes: nearest neighbour is exactly invertible
        np.testing.assert_array_equal(back, ring)
    assert dice(back.astype(bool), ring.astype(bool)) >= 0.98
    assert dice(via_probability, ring.astype(bool)) >= 0.98
    # pixel centres map linearly (pad, then scale): so does the ring's centroid
    top, _, left, _ = geometry.padding
    expected = (np.argwhere(ring).mean(0) + 0.5 + [top, left]) * geometry.scale - 0.5
    np.testing.assert_allclose(np.argwhere(on_grid).mean(0), expected, atol=1.0)
    if keep_aspect:
        assert geometry.scale[0] == geometry.scale[1]


def test_stretch_geometry_and_torch_inputs():
    geometry = ResizeGeometry(128, 192, keep_aspect=False)
    assert geometry.padding == (0, 0, 0, 0) and geometry.scale == (2.0, 256 / 192)
    image = torch.rand(3, 128, 192)
    out = image_to_network(normalize_intensity(image), geometry)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 256, 256)
    with pytest.raises(ValueError, match=r"\[\.\.\., 128, 192\]"):
        image_to_network(torch.rand(100, 100), geometry)


def test_normalisation_maps_percentiles_to_zero_and_one():
    image = np.random.default_rng(0).gamma(2.0, 100.0, (2, 50, 60)).astype(np.float32)
    image[1] = 7 * image[0] + 50  # affine-invariant: both end up identical
    out = normalize_intensity(image, clip=False)
    for k in range(2):
        low, high = np.percentile(out[k], [1, 99])
        assert low == pytest.approx(0, abs=1e-3) and high == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)
    clipped = normalize_intensity(torch.from_numpy(image))
    assert isinstance(clipped, torch.Tensor) and clipped.min() == 0 and clipped.max() == 1
    np.testing.assert_allclose(clipped.numpy(), np.clip(out, 0, 1))
    assert not normalize_intensity(np.full((4, 4), 3.0, np.float32)).any()


def test_augmentation_moves_image_and_mask_together():
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[20:30, 10:40] = 1
    sample = {"image": mask[None].float() * 2 + 1, "mask": mask, "case_id": "c"}
    mirror = RandomTranslateFlipElastic(0, flip_rows_p=0, flip_cols_p=1, elastic_p=0)(sample)
    assert torch.equal(mirror["mask"], mask.flip(-1)) and mirror["case_id"] == "c"
    torch.testing.assert_close(mirror["image"], sample["image"].flip(-1))
    torch.manual_seed(0)
    warp = RandomTranslateFlipElastic(translate_px=6, elastic_p=1, elastic_px=1.5)
    for _ in range(5):
        out = warp(sample)
        assert not torch.equal(out["mask"], mask)
        inside = out["image"][0][out["mask"] == 1]
        assert (inside > 2.0).float().mean() > 0.9  # the image moved with the mask
        assert 0.7 < out["mask"].sum() / mask.sum() < 1.4
