"""The inline mapping command: T1, T2 and ECV maps from phantom files, with and without a model,
whole-slice maps without either."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from deployment.artifact import FORMAT, METADATA_KEYS, METADATA_NAME, weights_sha256
from exports.__main__ import main
from exports.mapping_pipeline import MYOCARDIUM_TASK


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """One phantom patient (5 slices: 2 basal, 2 mid, 1 apical) in the three modalities."""
    return write_mapping_phantoms(tmp_path_factory.mktemp("mapping"), 1, seed=3)


def _run(*args) -> int:
    return main(["mapping", *map(str, args)])


def _bias(maps_path, truth_path, quantity, truth_key):
    """Mean over successful slices of (mean map - mean truth on the same pixels)."""
    diffs = []
    with h5py.File(maps_path, "r") as out, h5py.File(truth_path, "r") as ref:
        for case_id in out:
            for slice_id, group in out[case_id].items():
                if not group.attrs["success"]:
                    continue
                values = group[quantity][()]
                truth = ref[case_id][slice_id][truth_key][()]
                ok = np.isfinite(values) & np.isfinite(truth)
                diffs.append(values[ok].mean() - truth[ok].mean())
    return float(np.mean(diffs)), len(diffs)


def test_t2_maps_from_the_stored_masks(phantoms, tmp_path):
    out = tmp_path / "maps.h5"
    assert _run("--input", phantoms["t2"], "--output", out) == 0
    with h5py.File(out, "r") as h5, h5py.File(phantoms["t2"], "r") as src:
        assert h5.attrs["mode"] == "t2" and h5.attrs["n_successful_slices"] == 5
        group = h5["case_0000/slice_2"]
        t2 = group["t2_ms"][()]
        assert t2.dtype == np.float32 and t2.shape == src["case_0000/slice_2/images"].shape[1:]
        finite = np.isfinite(t2)
        assert finite.sum() > 50
        assert np.all((t2[finite] >= 30) & (t2[finite] <= 100))
        labels = src["case_0000/slice_2/truth/labels"][()]
        assert (labels[finite] == 1).mean() > 0.95  # the map lies on the myocardium
        assert group.attrs["success"] and group.attrs["refined_images"] == 0
        segments = group["segments"][()]
        assert segments.shape == (16,)
        assert np.isfinite(segments[6:12]).all() and np.isnan(segments[:6]).all()  # a mid slice
        assert h5["case_0000"].attrs["patient_success"]
    summary = json.loads(out.with_suffix(".json").read_text())
    slice_2 = summary["cases"]["case_0000"]["slices"]["slice_2"]
    assert slice_2["success"] and slice_2["mean"] == pytest.approx(float(np.nanmean(t2)), rel=1e-5)
    assert summary["refinement_rate"] == 0.0
    bias, n = _bias(out, phantoms["t2"], "t2_ms", "truth/t2_ms")
    assert n == 5 and abs(bias) < 4.0  # loose: noisy phantom, moving coil shading (docs/results.md)

    # the RV insertion point from the images instead of the file attribute
    auto = tmp_path / "auto.h5"
    assert _run("--input", phantoms["t2"], "--output", auto, "--insertion", "auto") == 0
    with h5py.File(auto, "r") as h5:
        mid = h5["case_0000/slice_2"]
        assert mid.attrs["insertion_source"] == "estimated"  # accuracy: test_aha_segments.py
        assert np.isfinite(mid["segments"][()][6:12]).sum() >= 4


def test_ecv_maps_and_figures(phantoms, tmp_path):
    out, figures = tmp_path / "ecv.h5", tmp_path / "figures"
    code = _run("--native", phantoms["t1_native"], "--post", phantoms["post_contrast"],
                "--output", out, "--figures", figures)  # fmt: skip
    assert code == 0
    with h5py.File(out, "r") as h5:
        ecv = h5["case_0000/slice_0/ecv_percent"][()]
        assert np.isfinite(ecv).sum() > 50 and np.nanmax(ecv) <= 60 and np.nanmin(ecv) >= 10
        assert h5["case_0000/slice_4"].attrs["level"] == "apical"
        assert np.isfinite(h5["case_0000/slice_4/segments"][()][12:]).all()
    bias, n = _bias(out, phantoms["post_contrast"], "ecv_percent", "truth/ecv_percent")
    assert n == 5 and abs(bias) < 2.0
    pngs = sorted(p.name for p in figures.glob("*.png"))
    assert len(pngs) == 5 and pngs[0] == "case_0000_slice_0_ecv_percent.png"


def test_slice_with_too_few_valid_images_fails_and_a_corrupt_case_is_reported(phantoms, tmp_path):
    broken = tmp_path / "t2_broken.h5"
    shutil.copy(phantoms["t2"], broken)
    with h5py.File(broken, "r+") as h5:
        h5.copy("case_0000", "case_0001")  # a second case, to be corrupted
        masks = h5["case_0000/slice_0/masks"]
        cut = masks[()]
        rows, cols = np.nonzero(cut[0])
        cut[1:5, :, : int(cols.mean())] = 0  # 4 of 9 segmentations lose half the ring
        masks[...] = cut
        del h5["case_0001/slice_3/te_ms"]
    out = tmp_path / "maps.h5"
    assert _run("--input", broken, "--output", out) == 1  # one case failed, outputs written
    with h5py.File(out, "r") as h5:
        failed = h5["case_0000/slice_0"]
        assert not failed.attrs["success"]
        assert "5 valid T2-weighted images < 6" in failed.attrs["reason"]
        assert failed.attrs["refined_images"] == 4
        assert np.isnan(failed["t2_ms"][()]).all() and np.isnan(failed["segments"][()]).all()
        assert h5["case_0000/slice_1"].attrs["success"]
        assert h5["case_0001"].attrs["status"] == "failed"
        error = h5["case_0001"].attrs["error"]  # the contract reader's message
        assert "case 'case_0001', slice 'slice_3', key 'te_ms'" in error and str(broken) in error
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n_cases_failed"] == 1 and summary["refined_images"] == 4


class _RingModel(nn.Module):
    """Stands in for a trained U-Net: softmax-like [B, 2, 256, 256] of a fixed ring."""

    def __init__(self, ring: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ring", ring)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.ring.expand(x.shape[0], 1, 256, 256) + 0.0 * x
        return torch.cat([1.0 - p, p], dim=1)


def export_myocardium_model(module: nn.Module, path, task: str = MYOCARDIUM_TASK) -> None:
    """``module`` ([B, 1, 256, 256] -> [B, 2, 256, 256]) as a myocardium artifact at ``path``."""
    scripted = torch.jit.script(module)
    plain = path.with_suffix(".plain")
    torch.jit.save(scripted, str(plain))
    metadata = dict.fromkeys(METADATA_KEYS)
    metadata.update(
        format=FORMAT,
        task=task,
        classes=["background", "myocardium"],
        n_classes=2,
        output="softmax",
        input_shape=[None, 1, 256, 256],
        preprocessing={  # as MappingDataModule.preprocessing writes it
            "size": [256, 256],
            "interpolation": "bicubic",
            "normalisation": "percentile",
            "percentiles": [1.0, 99.0],
            "clip": True,
            "keep_aspect": False,
        },
        weights_sha256=weights_sha256(plain.read_bytes()),
    )
    torch.jit.save(scripted, str(path), _extra_files={METADATA_NAME: json.dumps(metadata)})


def _export(ring: torch.Tensor, path, task: str = MYOCARDIUM_TASK) -> None:
    """A fixed ``ring`` [1, 256, 256] as a myocardium artifact (tests/test_mrd_server.py)."""
    export_myocardium_model(_RingModel(ring), path, task)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_segmentation_artifact_replaces_the_stored_masks(phantoms, tmp_path):
    # an input without masks: one slice of the phantom
    unmasked = tmp_path / "t2_unmasked.h5"
    with h5py.File(phantoms["t2"], "r") as src, h5py.File(unmasked, "w") as dst:
        group = dst.create_group("case_0000/slice_2")
        for key in ("images", "te_ms"):
            group.create_dataset(key, data=src["case_0000/slice_2"][key][()])
        group.attrs.update(src["case_0000/slice_2"].attrs)
        dst["case_0000"].attrs.update(src["case_0000"].attrs)
        mask = src["case_0000/slice_2/masks"][0].astype(np.float32)
    assert _run("--input", unmasked, "--output", tmp_path / "no_model.h5") == 0
    with h5py.File(tmp_path / "no_model.h5", "r") as h5:  # no masks, no model: the whole slice
        assert h5["case_0000/slice_2"].attrs["whole_slice"]
        assert "segments" not in h5["case_0000/slice_2"]

    ring = F.interpolate(torch.from_numpy(mask)[None, None], size=(256, 256), mode="bilinear")
    model = tmp_path / "myo_unet.ts"
    _export(ring[0], model)
    out = tmp_path / "with_model.h5"
    assert _run("--model", model, "--input", unmasked, "--output", out) == 0
    reference = tmp_path / "stored_masks.h5"
    assert _run("--input", phantoms["t2"], "--output", reference) == 0
    with h5py.File(out, "r") as h5, h5py.File(reference, "r") as ref:
        assert h5.attrs["model"] == str(model)
        t2 = h5["case_0000/slice_2/t2_ms"][()]
        t2_ref = ref["case_0000/slice_2/t2_ms"][()]
        assert np.isfinite(t2).sum() > 0.5 * np.isfinite(t2_ref).sum()
        with h5py.File(phantoms["t2"], "r") as src:
            src_truth = src["case_0000/slice_2/truth/t2_ms"][()]
        truth = float(np.nanmean(src_truth[np.isfinite(t2_ref)]))
        # one slice at SNR 10-60: the 3-parameter fit's slice-level SD is ~3 ms on phantoms
        assert np.nanmean(t2_ref) == pytest.approx(truth, abs=3.0)
        # the test model's ring is image 0's in every image: it does not follow the motion
        assert np.nanmean(t2) == pytest.approx(truth, abs=4.0)

    wrong = tmp_path / "aif.ts"
    _export(ring[0], wrong, task="some_other_task")
    assert _run("--model", wrong, "--input", unmasked, "--output", tmp_path / "x.h5") == 2


@pytest.fixture(scope="module")
def molli(tmp_path_factory):
    """The same patient acquired with MOLLI: 5(3)3 native, 4(1)3(1)2 post-contrast."""
    return write_mapping_phantoms(tmp_path_factory.mktemp("molli"), 1, seed=3, sequence="molli")


def _slice_means(maps_path, truth_path):
    """(slice mean of the output, mean truth on the same pixels) of every successful slice."""
    pairs = []
    with h5py.File(maps_path, "r") as out, h5py.File(truth_path, "r") as ref:
        for slice_id, group in out["case_0000"].items():
            values = group["t1_ms"][()]
            truth = ref["case_0000"][slice_id]["truth/t1_ms"][()]
            ok = np.isfinite(values) & np.isfinite(truth)
            pairs.append((group.attrs["mean"], truth[ok].mean()))
    return np.array(pairs)


def test_t1_maps_with_the_model_of_each_slices_sequence(molli, tmp_path):
    out, figures = tmp_path / "t1.h5", tmp_path / "figures"
    assert _run("--t1", molli["t1_native"], "--output", out, "--segment-fit", "roi",
                "--figures", figures) == 0  # fmt: skip
    assert len(list(figures.glob("case_0000_slice_*_t1_ms.png"))) == 5
    with h5py.File(out, "r") as h5:
        assert h5.attrs["mode"] == "t1" and h5.attrs["n_successful_slices"] == 5
        assert h5["case_0000"].attrs["patient_success"]
        mid = h5["case_0000/slice_2"]
        assert mid.attrs["sequence"] == "molli" and mid.attrs["segment_fit"] == "roi"
        t1, r2 = mid["t1_ms"][()], mid["r_squared"][()]
        assert np.array_equal(np.isfinite(t1), np.isfinite(r2)) and np.nanmedian(r2) > 0.9
        assert np.isfinite(mid["segments"][()][6:12]).all()
    means = _slice_means(out, molli["t1_native"])
    assert np.abs(means[:, 0] / means[:, 1] - 1).max() < 0.04  # region fits, SNR 10-60

    # the STONE model on MOLLI images ignores the Look-Locker readout: far too low
    stone = tmp_path / "stone.h5"
    assert _run("--t1", molli["t1_native"], "--output", stone, "--t1-sequence", "stone") == 0
    low = _slice_means(stone, molli["t1_native"])
    assert (low[:, 0] / low[:, 1]).mean() < 0.98


def test_t1_sequence_falls_back_to_stone_with_a_line_when_the_file_does_not_say(
    phantoms, tmp_path, capsys
):
    unlabelled = tmp_path / "native.h5"
    shutil.copy(phantoms["t1_native"], unlabelled)
    with h5py.File(unlabelled, "r+") as h5:
        for group in h5["case_0000"].values():
            del group.attrs["sequence"]
    out = tmp_path / "t1.h5"
    assert _run("--t1", unlabelled, "--output", out) == 0
    assert "no slice attr 'sequence' on 5 T1 acquisition(s): fitted with the STONE model" in (
        capsys.readouterr().out
    )
    with h5py.File(out, "r") as h5:
        assert h5["case_0000/slice_0"].attrs["sequence"] == "stone"
    means = _slice_means(out, phantoms["t1_native"])
    assert np.abs(means[:, 0] / means[:, 1] - 1).max() < 0.02


def test_ecv_with_molli_native_and_post_contrast(molli, tmp_path):
    out = tmp_path / "ecv.h5"
    assert _run("--native", molli["t1_native"], "--post", molli["post_contrast"],
                "--output", out) == 0  # fmt: skip
    bias, n = _bias(out, molli["post_contrast"], "ecv_percent", "truth/ecv_percent")
    # loose: per-pixel MOLLI fits at SNR 10-60 carry a few % of T1 bias (docs/results.md: benchmark)
    assert n == 5 and abs(bias) < 4.0


def _without_masks(source, target):
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for case_id, case in src.items():
            dst.create_group(case_id).attrs.update(case.attrs)
            for slice_id, group in case.items():
                new = dst[case_id].create_group(slice_id)
                for key in ("images", "ti_ms", "te_ms"):
                    if key in group:
                        new.create_dataset(key, data=group[key][()])
                new.attrs.update(group.attrs)
    return target


def test_whole_slice_maps_without_masks_or_model(tmp_path):
    still = write_mapping_phantoms(tmp_path, 1, seed=3, noise=False, motion=False,
                                   sequence="molli")  # fmt: skip
    for source, flag, key in ((still["t1_native"], "--t1", "t1_ms"),
                              (still["t2"], "--input", "t2_ms")):  # fmt: skip
        unmasked = _without_masks(source, tmp_path / f"{key}_unmasked.h5")
        out = tmp_path / f"{key}_maps.h5"
        assert _run(flag, unmasked, "--output", out) == 0
        with h5py.File(out, "r") as h5, h5py.File(source, "r") as src:
            group = h5["case_0000/slice_2"]
            assert group.attrs["whole_slice"] and group.attrs["success"]
            assert "segments" not in group and group["r_squared"].shape == group[key].shape
            values = group[key][()]
            labels = src["case_0000/slice_2/truth/labels"][()]
            truth = src["case_0000/slice_2"][f"truth/{key}"][()]
            assert np.isnan(values[:8, :8]).all()  # air: no signal, no fit
            myo = (labels == 1) & np.isfinite(values)
            assert myo.sum() > 0.9 * (labels == 1).sum()
            assert np.median(values[myo] / truth[myo]) == pytest.approx(1.0, abs=0.01)


def test_t2_segments_from_region_fits(phantoms, tmp_path):
    out = tmp_path / "roi.h5"
    assert _run("--input", phantoms["t2"], "--output", out, "--segment-fit", "roi") == 0
    with h5py.File(out, "r") as h5, h5py.File(phantoms["t2"], "r") as src:
        for slice_id, group in h5["case_0000"].items():
            assert group.attrs["segment_fit"] == "roi"
            truth = src["case_0000"][slice_id]["truth/t2_ms"][()]
            values = group["t2_ms"][()]
            ok = np.isfinite(values) & np.isfinite(truth)
            assert group.attrs["mean"] == pytest.approx(truth[ok].mean(), abs=2.5)
            assert np.isfinite(group["segments"][()]).sum() >= 4


def test_t2_offset_shared_by_the_slices_of_a_patient(phantoms, tmp_path):
    out = tmp_path / "case.h5"
    assert _run("--input", phantoms["t2"], "--output", out, "--t2-offset-scope", "case") == 0
    slices = json.loads(out.with_suffix(".json").read_text())["cases"]["case_0000"]["slices"]
    betas = {s["details"]["t2"]["offset_fraction"] for s in slices.values()}
    assert len(betas) == 1 and {s["details"]["t2"]["offset_scope"] for s in slices.values()} == {
        "case"
    }
    with h5py.File(phantoms["t2"], "r") as src:
        truth = src["case_0000/slice_0"].attrs["t2_offset_fraction"]  # the phantom's B / A
    assert betas.pop() == pytest.approx(truth, abs=0.01)
    bias, n = _bias(out, phantoms["t2"], "t2_ms", "truth/t2_ms")
    assert n == 5 and abs(bias) < 2.0
