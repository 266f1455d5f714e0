"""The legacy AIF LV detector (method.md §A3) on phantoms, its failure reasons, its labelling
CLI."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.synthetic.aif_phantom import (
    CLASSIC,
    AIFScan,
    simulate_aif_scan,
    write_aif_phantoms,
)
from evaluation.detection_outcome import FAILURE_REASONS, detection_outcome
from exports.__main__ import main as cli
from formats.aif_contract import scan_aif_file
from quantification.legacy_aif_detector import (
    LegacyDetectorSettings,
    detect_lv_legacy,
    estimate_noise_sd,
    kmeans_curves,
)
from quantification.lv_mask import LABEL_LV, LABEL_RV


def phantom_scans(n: int, seed: int, clean: bool) -> list[AIFScan]:
    """``n`` phantom scans of the classic family (dual-sequence AIF images with PD frames, as the
    legacy detector was built for); ``clean``: normal bolus timing and strength, PD SNR >= 40."""
    rng, scans = np.random.default_rng(seed), []
    while len(scans) < n:
        scan = simulate_aif_scan(rng, CLASSIC)
        if not clean or (scan.attrs["bolus"] == "normal" and scan.attrs["snr_pd"] >= 40):
            scans.append(scan)
    return scans


def detect(scan: AIFScan) -> np.ndarray:
    return detect_lv_legacy(scan.series, scan.times_s, scan.n_pd_frames).labels


def test_it_finds_the_lv_on_clean_phantoms():
    scans = phantom_scans(20, seed=11, clean=True)
    outcomes = [detection_outcome(detect(scan), scan.mask) for scan in scans]
    rate = np.mean([o.success for o in outcomes])
    dice = np.mean([o.lv_dice for o in outcomes])
    print(f"legacy detector, 20 clean phantoms: detection {100 * rate:.0f} %, LV Dice {dice:.3f}")
    assert rate >= 0.95
    assert dice > 0.85


def test_its_failure_modes_are_counted_on_mixed_phantoms():
    """Weak and late boluses and low SNR included: failures are rare and each has a reason."""
    scans = phantom_scans(30, seed=5, clean=False)
    outcomes = [detection_outcome(detect(scan), scan.mask) for scan in scans]
    reasons = Counter(o.reason or "success" for o in outcomes)
    print(f"legacy detector, 30 mixed phantoms: {dict(reasons)}")
    assert set(reasons) <= {"success", *FAILURE_REASONS}
    assert sum(reasons.values()) == 30
    assert reasons["success"] >= 27


def test_it_labels_the_rv_too_and_the_rv_enhances_first():
    scan = phantom_scans(1, seed=3, clean=True)[0]
    result = detect_lv_legacy(scan.series, scan.times_s, scan.n_pd_frames)
    rv, ref_rv = result.labels == LABEL_RV, scan.mask == LABEL_RV
    assert 2 * (rv & ref_rv).sum() / (rv.sum() + ref_rv.sum()) > 0.7
    assert result.rv_arrival_s < result.lv_arrival_s
    assert result.found and result.reason == ""
    assert result.labels.shape == scan.mask.shape and result.labels.dtype == np.uint8


def test_it_is_deterministic():
    scan = phantom_scans(1, seed=4, clean=False)[0]
    np.testing.assert_array_equal(detect(scan), detect(scan))


def test_pure_noise_gives_an_empty_mask_with_the_reason():
    rng = np.random.default_rng(0)
    noise = np.abs(rng.normal(0, 1, (60, 64, 48)) + 1j * rng.normal(0, 1, (60, 64, 48)))
    result = detect_lv_legacy(noise.astype(np.float32), np.arange(60.0), n_pd_frames=2)
    assert not result.found
    assert result.reason and (result.labels == 0).all()
    assert result.n_enhancing < 0.01 * noise[0].size  # almost nothing passes the SNR tests


def test_a_stricter_upslope_threshold_keeps_fewer_pixels():
    scan = phantom_scans(1, seed=3, clean=True)[0]
    loose = detect_lv_legacy(scan.series, scan.times_s, scan.n_pd_frames)
    strict = detect_lv_legacy(
        scan.series, scan.times_s, scan.n_pd_frames, LegacyDetectorSettings(upslope_fraction=0.6)
    )
    assert strict.n_enhancing < loose.n_enhancing
    assert strict.n_foreground == loose.n_foreground


@pytest.mark.parametrize(
    "series, n_pd, message",
    [
        (np.zeros((60, 64)), 2, "T, RO, E1"),
        (np.full((60, 64, 48), np.nan), 2, "NaN"),
        (np.ones((60, 64, 48)), 59, "n_pd_frames"),
    ],
)
def test_bad_input_is_refused_with_the_reason(series, n_pd, message):
    with pytest.raises(ValueError, match=message):
        detect_lv_legacy(series.astype(np.float32), np.arange(60.0), n_pd)


def test_noise_sd_is_estimated_from_frame_differences():
    rng = np.random.default_rng(1)
    anatomy = rng.uniform(0, 100, (1, 32, 32))
    ramp = np.linspace(0, 1, 80)[:, None, None]  # slow contrast change
    frames = anatomy * (1 + ramp) + rng.normal(0, 2.0, (80, 32, 32))
    assert estimate_noise_sd(frames) == pytest.approx(2.0, rel=0.05)


def test_kmeans_splits_early_from_late_curves():
    t = np.arange(40)
    early = np.exp(-0.5 * ((t - 10) / 3) ** 2)
    late = np.exp(-0.5 * ((t - 20) / 3) ** 2)
    rng = np.random.default_rng(2)
    curves = np.concatenate(
        [early + rng.normal(0, 0.05, (15, 40)), late + rng.normal(0, 0.05, (9, 40))]
    )
    _, labels = kmeans_curves(curves, 2, seed=3)
    assert len(set(labels[:15])) == 1 and len(set(labels[15:])) == 1
    assert labels[0] != labels[-1]


def square(mask: np.ndarray, r0: int, c0: int, size: int, label: int) -> np.ndarray:
    mask = mask.copy()
    mask[r0 : r0 + size, c0 : c0 + size] = label
    return mask


@pytest.mark.parametrize(
    "predicted, reason",
    [
        (square(np.zeros((64, 48), np.uint8), 30, 20, 6, LABEL_LV), ""),
        (np.zeros((64, 48), np.uint8), "empty"),
        (square(np.zeros((64, 48), np.uint8), 2, 2, 5, LABEL_LV), "outside the heart"),
        (square(np.zeros((64, 48), np.uint8), 30, 28, 6, LABEL_LV), "picked the RV"),
        (square(np.zeros((64, 48), np.uint8), 30, 20, 2, LABEL_LV), "partial LV"),
    ],
)
def test_each_failure_gets_its_reason(predicted, reason):
    reference = square(square(np.zeros((64, 48), np.uint8), 30, 20, 6, LABEL_LV), 30, 28, 6, 2)
    outcome = detection_outcome(predicted, reference)
    assert outcome.reason == reason
    assert outcome.success == (reason == "")


def test_a_reference_without_lv_is_an_error():
    with pytest.raises(ValueError, match="no LV pixel"):
        detection_outcome(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        detection_outcome(np.zeros((4, 4), np.uint8), np.ones((4, 5), np.uint8))


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Four phantom scans with their masks removed, and the labelled original."""
    folder = tmp_path_factory.mktemp("unlabelled")
    labelled = write_aif_phantoms(folder / "labelled.h5", n_patients=2, seed=3)
    path = folder / "cases.h5"
    shutil.copy(labelled, path)
    with h5py.File(path, "r+") as h5:
        for case_id in h5:
            del h5[case_id]["mask"]
    return path, labelled


def test_cli_legacy_labels_an_unlabelled_contract_file(unlabelled, tmp_path):
    path, labelled = unlabelled
    output = tmp_path / "labels.h5"
    assert cli(["aif", "--legacy", "--input", str(path), "--output", str(output)]) == 0

    infos = scan_aif_file(output, require_mask=True)  # a training-ready contract file
    assert sorted(i.case_id for i in infos) == [
        "P0000_rest",
        "P0000_stress",
        "P0001_rest",
        "P0001_stress",
    ]
    with h5py.File(output) as out, h5py.File(labelled) as ref:
        for case_id in out:
            assert out[case_id].attrs["label_source"] == "legacy_aif_detector"
            outcome = detection_outcome(out[case_id]["mask"][()], ref[case_id]["mask"][()])
            assert outcome.success, (case_id, outcome)
            np.testing.assert_array_equal(out[case_id]["series"][()], ref[case_id]["series"][()])
    summary = json.loads(output.with_suffix(".json").read_text())
    assert {s["status"] for s in summary["cases"].values()} == {"ok"}


def test_cli_legacy_reports_a_broken_case_and_labels_the_rest(unlabelled, tmp_path, capsys):
    path, _ = unlabelled
    broken = tmp_path / "broken.h5"
    shutil.copy(path, broken)
    with h5py.File(broken, "r+") as h5:
        del h5["P0001_rest"]["times_s"]
    output = tmp_path / "labels.h5"
    assert cli(["aif", "--legacy", "--input", str(broken), "--output", str(output)]) == 1
    assert "P0001_rest: SKIPPED" in capsys.readouterr().out
    with h5py.File(output) as out:
        assert "P0001_rest" not in out and "mask" in out["P0000_rest"]


def test_cli_aif_needs_a_model_or_legacy(unlabelled, tmp_path, capsys):
    path, _ = unlabelled
    assert cli(["aif", "--input", str(path), "--output", str(tmp_path / "out.h5")]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert not (tmp_path / "out.h5").exists()
