"""Synthetic short-axis anatomy, contrast-agnostic synthesis and the myocardium OOD evaluation
on real components shrunk to run fast."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from datamodules.mapping_transforms import (
    AcquisitionArtefacts,
    ArtefactSettings,
    RandomTranslateFlipElastic,
)
from datamodules.short_axis_synthesis import ShortAxisSynthesisDataModule
from datamodules.synthetic import short_axis_anatomy as sa
from datamodules.synthetic.tissue_contrast import (
    READOUTS,
    ContrastSettings,
    physical_means,
    random_means,
    tissue_image,
)
from evaluation.independent_short_axis_phantom import write_independent_short_axis
from evaluation.myocardium_ood import (
    FAMILIES,
    dice,
    evaluate_file,
    hd95,
    summarize,
    write_generated_family,
    write_report,
)
from quantification.myocardium_shape import shape_qc


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("seed", range(6))
def test_label_maps_hold_a_short_axis_slice_whose_myocardium_passes_the_qc(seed):
    labels, info = sa.render_short_axis(rng(seed), sa.AnatomyRanges(), (128, 128))
    present = set(np.unique(labels))
    assert {sa.MYOCARDIUM, sa.LV_BLOOD} <= present
    assert len(present) >= 6  # chest, lungs, fat, ... around the heart
    qc = shape_qc(labels == sa.MYOCARDIUM)
    assert qc.valid and qc.euler_number == 0 and qc.eccentricity < 0.65
    assert 0.12 <= info["blood_pool_fraction"] <= 0.45
    assert info["level"] == sa.level_of_position(info["position"])
    again, _ = sa.render_short_axis(rng(seed), sa.AnatomyRanges(), (128, 128))
    np.testing.assert_array_equal(labels, again)  # depends only on the random stream


def test_the_lv_blood_pool_fills_the_configured_share_of_the_width():
    ranges = sa.AnatomyRanges(blood_pool_fraction=(0.4, 0.4), position=(0.5, 0.5),
                              elastic_mm=(0, 0), rotation_deg=(0, 0))  # fmt: skip
    labels, info = sa.render_short_axis(rng(1), ranges, (200, 200))
    cols = np.nonzero((labels == sa.LV_BLOOD) | (labels == sa.PAPILLARY))[1]
    diameter_fraction = (cols.max() - cols.min() + 1) / 200
    # mid slice (position 0.5): 1 - 0.55 * 0.5 ** 1.6 of the mid-ventricular diameter, +-harmonics
    expected = 0.4 * (1 - 0.55 * 0.5**1.6)
    assert abs(diameter_fraction - expected) < 0.06


def test_ranges_that_cannot_give_a_valid_ring_fail_clearly():
    flat = sa.AnatomyRanges(axis_ratio=(0.3, 0.35))  # eccentricity ~0.94: the QC rejects it
    with pytest.raises(RuntimeError, match="no valid myocardium ring"):
        sa.render_short_axis(rng(0), flat, (96, 96), max_tries=3)


def test_label_pool_round_trip_and_version_check(tmp_path):
    path = sa.write_label_pool(tmp_path / "pool.h5", 3, seed=5, size=64)
    pool = sa.read_label_pool(path)
    assert pool.shape == (3, 64, 64) and pool.dtype == np.uint8
    first, _ = sa.render_short_axis(sa._rng(5, 0), sa.AnatomyRanges(), (64, 64))
    np.testing.assert_array_equal(pool[0], first)
    with h5py.File(path, "a") as f:
        f.attrs["generator_version"] = 0
    with pytest.raises(ValueError, match="pool.h5: label pool version 0"):
        sa.read_label_pool(path)


def test_random_contrasts_keep_the_myocardium_blood_boundary():
    settings = ContrastSettings(min_myo_blood_contrast=0.2, group_p=1.0)
    for seed in range(20):
        means = random_means(rng(seed), settings)
        assert abs(means[sa.MYOCARDIUM] - means[sa.LV_BLOOD]) >= 0.2
        # grouped tissues share their mean (small jitter)
        assert abs(means[sa.RV_MYOCARDIUM] - means[sa.MYOCARDIUM]) < 0.15


def test_physical_readouts_follow_relaxation():
    settings = ContrastSettings(property_jitter=0.0)
    t2 = physical_means(rng(0), settings, "t2")  # T2-prep: blood (T2 230) > myocardium (50)
    assert t2[sa.LV_BLOOD] > t2[sa.MYOCARDIUM] and t2.max() == pytest.approx(1.0)
    post = [physical_means(rng(s), settings, "post_contrast") for s in range(10)]
    assert all(np.isfinite(p).all() and p.min() >= 0 for p in post)
    assert set(READOUTS) == {"t1_native", "post_contrast", "t2"}
    with pytest.raises(ValueError, match="readouts"):
        ContrastSettings(readouts=("molli_typo",))


def test_tissue_image_paints_every_label():
    labels, _ = sa.render_short_axis(rng(3), sa.AnatomyRanges(), (96, 96))
    image, myo_level, kind = tissue_image(labels, rng(4), ContrastSettings(texture_sd=(0, 0)))
    assert image.shape == labels.shape and image.dtype == np.float32
    assert kind in {"random", *READOUTS}
    assert np.allclose(image[labels == sa.MYOCARDIUM], myo_level, atol=1e-6)


def test_artefacts_scale_to_unit_range_and_noise_follows_snr():
    clean = torch.zeros(128, 128)
    clean[32:96, 32:96] = 1.0
    quiet = dict(resolution_p=0, ghosting_p=0, banding_p=0, bias_field_p=0, gamma_p=0)
    low = AcquisitionArtefacts(ArtefactSettings(snr=(3, 3), **quiet))(clean, 1.0, rng(0))
    high = AcquisitionArtefacts(ArtefactSettings(snr=(100, 100), **quiet))(clean, 1.0, rng(0))
    assert 0 <= float(low.min()) and float(low.max()) == pytest.approx(1.0)
    assert float(low[40:88, 40:88].std()) > 5 * float(high[40:88, 40:88].std())


def test_ghosting_puts_a_copy_half_a_field_away():
    clean = torch.zeros(64, 64)
    clean[24:40, 24:40] = 1.0
    settings = ArtefactSettings(ghosting_p=1, ghost_period=(2, 2), ghost_amplitude=(0.2, 0.2),
                                resolution_p=0, banding_p=0, bias_field_p=0, gamma_p=0,
                                snr=(1e4, 1e4), partial_volume_px=(0.0, 0.0))  # fmt: skip
    out = AcquisitionArtefacts(settings)(clean, 1.0, rng(1))
    ghost_rows = out[0:8, 24:40].mean() + out[56:64, 24:40].mean()  # shifted by 32 along rows
    ghost_cols = out[24:40, 0:8].mean() + out[24:40, 56:64].mean()
    assert max(ghost_rows, ghost_cols) > 0.1 and min(ghost_rows, ghost_cols) < 0.02


def test_label_warp_keeps_label_values():
    labels = torch.from_numpy(sa.render_short_axis(rng(2), sa.AnatomyRanges(), (96, 96))[0])
    warp = RandomTranslateFlipElastic(translate_px=8, rotate_deg=20, zoom=0.15, elastic_p=1)
    moved = warp.warp_labels(labels.long())
    assert moved.shape == labels.shape
    assert set(moved.unique().tolist()) <= set(labels.unique().tolist()) | {0}


def test_datamodule_draws_training_patches_and_fixed_held_out_images(tmp_path):
    dm = ShortAxisSynthesisDataModule(
        data_dir=str(tmp_path), pool_size=4, val_images=3, test_images=3, samples_per_epoch=6,
        batch_size=3, image_size=96, crop_size=64, split_out=str(tmp_path / "split.json"),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 1, 64, 64) and batch["mask"].shape == (3, 64, 64)
    assert 0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1
    val = dm.datasets["val"]
    first, again = val[1], val[1]
    assert first["image"].shape == (1, 96, 96)
    torch.testing.assert_close(first["image"], again["image"])  # seeded per index
    assert int(first["mask"].sum()) > 0
    assert set(json.loads((tmp_path / "split.json").read_text())) == {"train", "val", "test"}
    assert dm.preprocessing["normalisation"] == "percentile"


def test_hd95_and_dice_on_known_shapes():
    a = np.zeros((40, 40), bool)
    a[10:30, 10:30] = True
    assert dice(a, a) == 1.0 and hd95(a, a) == 0.0
    assert hd95(a, np.roll(a, 3, axis=0), spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert hd95(np.zeros_like(a), a) == float("inf")
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def _masks_of(path) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [f[c]["slice_0"]["masks"][()] for c in sorted(f)]


def test_ood_families_evaluate_a_segmenter_and_write_a_report(tmp_path):
    generated = write_generated_family(tmp_path / "hyp.h5", FAMILIES["hypertrophy"], 2, seed=9)
    independent = write_independent_short_axis(tmp_path / "ind.h5", 2, seed=9)
    oracle_masks = iter(m.astype(np.float32) for m in _masks_of(independent))
    perfect = evaluate_file(independent, lambda images: next(oracle_masks))
    assert len(perfect) >= 14  # 7-8 images per slice
    assert all(r.dsc == 1.0 and r.hd95_px == 0.0 and r.qc_valid for r in perfect)
    empty = evaluate_file(generated, lambda images: np.zeros(images.shape, np.float32))
    assert len(empty) == 4 and all(r.dsc == 0.0 and not r.qc_valid for r in empty)
    assert all(r.reference_qc_valid and r.hd95_mm == float("inf") for r in empty)
    assert summarize(perfect, True)["goal_met"] and not summarize(empty, True)["goal_met"]

    capped = evaluate_file(independent, lambda images: np.zeros(images.shape), max_images=3)
    assert len(capped) == 3
    metrics, files = write_report(
        {"model.ts": {"independent": perfect, "hypertrophy": empty}}, {"elapsed_s": 1}, tmp_path
    )
    assert metrics["families"]["model.ts"]["independent"]["qc_pass"] == 1.0
    assert "| hypertrophy | 4 | 0.000" in files["report"].read_text()
    assert files["examples"].read_bytes()[:4] == b"\x89PNG"


def test_evaluate_py_task_myocardium_ood_reports_every_family(tiny_myocardium_config, tmp_path):
    from evaluation.tasks import evaluate
    from tests.test_evaluate import compose_evaluate_config
    from train import train

    small = ["data.image_size=64", "data.crop_size=48", "trainer.fast_dev_run=true"]
    train(tiny_myocardium_config(["experiment=t1_native_pretrain", *small]))
    artifact = tmp_path / "run" / "export" / "myo_unet_n0.ts"  # a check run deploys nothing
    cfg = compose_evaluate_config(
        [
            "task=myocardium_ood",
            "logger=none",
            f"paths.data_dir={tmp_path / 'data'}",
            f"myocardium_ood.artifacts=[{artifact}]",
            "myocardium_ood.families=[in_distribution,severe_artefacts,independent]",
            "myocardium_ood.n_slices=2",
            "myocardium_ood.max_images=3",
        ],
        tmp_path / "eval",
    )
    metrics = evaluate(cfg)
    rows = metrics["families"]["myo_unet_n0.ts"]
    assert list(rows) == ["in_distribution", "severe_artefacts", "independent"]
    assert [rows[f]["n_images"] for f in rows] == [3, 3, 3]
    assert rows["in_distribution"]["out_of_distribution"] is False
    assert (tmp_path / "eval" / "figures" / "myocardium_ood_examples.png").is_file()
