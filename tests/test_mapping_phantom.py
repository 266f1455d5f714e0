"""Synthetic mapping phantoms: relaxation physics, ECV consistency, geometry, motion, files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from skimage.measure import euler_number, label, regionprops

from datamodules.synthetic.mapping_phantom import (
    TE_T2_MS,
    simulate_mapping_patient,
    write_mapping_phantoms,
)
from formats.mapping_contract import (
    MODALITIES,
    open_mapping_file,
    read_mapping_slice,
    read_mapping_truth,
    scan_mapping_file,
)


@pytest.fixture(scope="module")
def clean_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Noise-free, motion-free phantoms of 3 patients: the closed-form signal holds exactly."""
    directory = tmp_path_factory.mktemp("clean")
    return write_mapping_phantoms(directory, n_patients=3, seed=5, noise=False, motion=False)


@pytest.fixture(scope="module")
def noisy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default phantoms (noise, motion) of 2 patients."""
    return write_mapping_phantoms(tmp_path_factory.mktemp("noisy"), n_patients=2, seed=5)


def _slices(path: Path):
    """Yield (info, slice, truth) of every slice in a file."""
    with open_mapping_file(path) as h5:
        for info in scan_mapping_file(path, require_masks=True):
            sl = read_mapping_slice(h5, info.case_id, info.slice_id, path, require_masks=True)
            yield info, sl, read_mapping_truth(h5, info.case_id, info.slice_id)


def _pure_pixels(labels: np.ndarray, label_value: int) -> np.ndarray:
    """Pixels of one label at least 2 px from any other (no partial volume there)."""
    return binary_erosion(labels == label_value, iterations=2)


@pytest.mark.parametrize("modality", MODALITIES)
def test_signals_follow_the_closed_form_relaxation_models(clean_files, modality):
    """In pure myocardium and blood the images are A * |1 - 2 exp(-TI/T1)| (T1 files) or
    A * (exp(-TE/T2) + b) (T2), with the true T1/T2 map and one amplitude A per pixel."""
    checked = 0
    for info, sl, truth in _slices(clean_files[modality]):
        value = truth["t2_ms" if modality == "t2" else "t1_ms"]
        tau = info.times_ms[:, None]
        for tissue in (1, 2):  # myocardium, LV blood
            pixels = _pure_pixels(truth["labels"], tissue)
            if not pixels.any():  # a thin apical wall
                continue
            signal = sl.images[:, pixels].astype(np.float64)  # [N, P]
            if modality == "t2":
                model = np.exp(-tau / value[pixels]) + info.attrs["t2_offset_fraction"]
            else:
                model = np.abs(1 - 2 * np.exp(-tau / value[pixels]))
            amplitude = (signal * model).sum(0) / (model * model).sum(0)  # least squares
            residual = np.abs(signal - amplitude * model).max() / signal.max()
            assert residual < 1e-4, (info.case_id, info.slice_id, tissue)
            checked += pixels.sum()
    assert checked > 1000


def test_t2_echo_times_and_tissue_values_are_realistic(clean_files):
    t2_myo, t2_blood, t1_myo, t1_blood, hct = [], [], [], [], []
    for info, _, truth in _slices(clean_files["t2"]):
        np.testing.assert_array_equal(info.times_ms, TE_T2_MS)
        t2_myo.append(np.nanmean(truth["t2_ms"][truth["labels"] == 1]))
        t2_blood.append(np.nanmean(truth["t2_ms"][truth["labels"] == 2]))
        assert 0 <= info.attrs["t2_offset_fraction"] <= 0.05
    for info, _, truth in _slices(clean_files["t1_native"]):
        t1_myo.append(np.nanmean(truth["t1_ms"][truth["labels"] == 1]))
        t1_blood.append(np.nanmean(truth["t1_ms"][truth["labels"] == 2]))
        hct.append(info.hematocrit)
        assert 80 <= info.times_ms[0] and info.times_ms[-1] <= 3700 and info.n_images == 11
    assert 40 < min(t2_myo) and max(t2_myo) < 70
    assert 195 < min(t2_blood) and max(t2_blood) < 255
    assert 900 < min(t1_myo) and max(t1_myo) < 1150
    assert 1450 < min(t1_blood) and max(t1_blood) < 1700
    assert 0.35 <= min(hct) and max(hct) <= 0.50


def test_post_contrast_t1_is_consistent_with_ecv_and_hematocrit(clean_files):
    """ECV = (1 - Hct) dR1_myo / dR1_blood, pixel by pixel, from the native and post truth."""
    native = {(i.case_id, i.slice_id): (i, t) for i, _, t in _slices(clean_files["t1_native"])}
    for info, _, truth in _slices(clean_files["post_contrast"]):
        n_info, n_truth = native[(info.case_id, info.slice_id)]
        np.testing.assert_array_equal(n_truth["labels"], truth["labels"])  # same geometry
        assert info.hematocrit == n_info.hematocrit
        assert info.times_ms[-1] < 1600 and info.n_images == 11
        myo = truth["labels"] == 1
        dr1_myo = 1 / truth["t1_ms"][myo] - 1 / n_truth["t1_ms"][myo]
        dr1_blood = 1 / info.attrs["t1_blood_ms"] - 1 / n_info.attrs["t1_blood_ms"]
        ecv = 100 * (1 - info.hematocrit) * dr1_myo / dr1_blood
        np.testing.assert_allclose(ecv, truth["ecv_percent"][myo], rtol=1e-4)
        assert np.isnan(truth["ecv_percent"][~myo]).all()
        assert 15 <= np.nanmin(truth["ecv_percent"]) and np.nanmax(truth["ecv_percent"]) <= 55
        assert 200 < info.attrs["t1_blood_ms"] < 450


def test_slices_are_rings_with_levels_and_varied_sizes(clean_files):
    areas: dict[str, list[float]] = {"basal": [], "mid": [], "apical": []}
    for info, sl, truth in _slices(clean_files["t1_native"]):
        assert 160 <= info.shape[0] <= 256 and 176 <= info.shape[1] <= 256
        np.testing.assert_array_equal(sl.masks[0], truth["labels"] == 1)  # mask of image 0
        ring = label(sl.masks[0], connectivity=2)
        assert ring.max() == 1, "one myocardium"
        assert euler_number(sl.masks[0], connectivity=2) == 0, "a ring with one hole"
        assert regionprops(ring)[0].eccentricity < 0.65
        assert {2, 3, 5} <= set(np.unique(truth["labels"]).tolist())  # LV, RV, other tissue
        areas[info.level].append(float(sl.masks[0].sum()) * info.case_attrs["pixel_mm"] ** 2)
        # partial volume: boundary pixels are mixtures, not two-level
        assert np.unique(sl.images[-1][truth["labels"] == 1]).size > 50
    assert [len(areas[k]) for k in ("basal", "mid", "apical")] == [6, 6, 3]
    assert np.mean(areas["apical"]) < np.mean(areas["basal"])


def _ray_meets(labels: np.ndarray, center_rc, angle_deg: float, value: int) -> bool:
    """Whether a ray from center (rows, cols) at angle_deg (counter-clockwise from +columns, rows
    down) crosses a pixel of label ``value``."""
    radius, a = np.arange(0, 80, 0.5), np.deg2rad(angle_deg)
    rows = np.round(center_rc[0] - radius * np.sin(a)).astype(int)
    cols = np.round(center_rc[1] + radius * np.cos(a)).astype(int)
    ok = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    return bool((labels[rows[ok], cols[ok]] == value).any())


def test_rv_insertion_angle_points_at_the_rv(clean_files):
    """Between the two insertion points (through the RV side) a ray from the LV centre meets RV
    blood; opposite to it, it does not."""
    for info, _, truth in _slices(clean_files["t2"]):
        ant, inf = info.attrs["rv_insertion_deg"], info.attrs["rv_inferior_insertion_deg"]
        assert 60 < ant < 160 and 200 < inf < 300, (ant, inf)
        center, labels = info.attrs["lv_center_rc"], truth["labels"]
        if info.level != "apical":
            assert _ray_meets(labels, center, (ant + inf) / 2, 3)
        assert not _ray_meets(labels, center, (ant + inf) / 2 + 180, 3)


def test_noise_level_and_motion_match_the_recorded_truth(noisy_files):
    for info, sl, truth in _slices(noisy_files["t1_native"]):
        sigma = info.attrs["noise_sigma"]
        corner = sl.images[:, :8, :8]  # air: Rayleigh noise of mean sigma sqrt(pi / 2)
        assert corner.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.15)
        shift = truth["shift_px"]
        assert shift.shape == (info.n_images, 2) and not shift[0].any()
        assert np.abs(shift).max() <= 4
        # rotation is about the LV centre, so the mask centroid moves by the shift
        c0 = np.argwhere(sl.masks[0]).mean(0)
        for n in range(1, info.n_images):
            np.testing.assert_allclose(np.argwhere(sl.masks[n]).mean(0) - c0, shift[n], atol=0.6)


def test_three_files_hold_the_same_patients_and_geometry(noisy_files):
    infos = {
        m: scan_mapping_file(p, modality=m, require_masks=True) for m, p in noisy_files.items()
    }
    keys = {m: [(i.case_id, i.slice_id, i.patient_id, i.shape, i.level) for i in v]
            for m, v in infos.items()}  # fmt: skip
    assert keys["t1_native"] == keys["t2"] == keys["post_contrast"]
    assert [k[0] for k in keys["t2"][:6]] == ["case_0000"] * 5 + ["case_0001"]
    assert {i.n_images for i in infos["t2"]} == {9}
    with h5py.File(noisy_files["t2"]) as f, h5py.File(noisy_files["post_contrast"]) as g:
        np.testing.assert_array_equal(
            f["case_0001/slice_3/truth/labels"][()], g["case_0001/slice_3/truth/labels"][()]
        )


def test_a_patient_depends_only_on_seed_and_index(noisy_files):
    patient = simulate_mapping_patient(seed=5, patient=1)
    with h5py.File(noisy_files["post_contrast"]) as f:
        np.testing.assert_array_equal(
            f["case_0001/slice_1/images"][()],
            patient.slices[1].acquisitions["post_contrast"].images,
        )
        assert f["case_0001"].attrs["patient_id"] == "P0001"
    other = simulate_mapping_patient(seed=6, patient=1, slices_per_patient=1)
    assert other.case_attrs["hematocrit"] != patient.case_attrs["hematocrit"]


@pytest.mark.parametrize("sequence", ["molli", "shmolli", "sasha"])
def test_t1_sequences_change_the_signal_not_the_patient(tmp_path, sequence):
    still = {"noise": False, "motion": False}
    stone = write_mapping_phantoms(tmp_path / "stone", 1, seed=5, slices_per_patient=2, **still)
    other = write_mapping_phantoms(tmp_path / sequence, 1, seed=5, slices_per_patient=2,
                                   sequence=sequence, **still)  # fmt: skip
    assert other["t1_native"].name.endswith(f"_{sequence}.h5")
    counts = {"molli": (8, 9), "shmolli": (7, 7), "sasha": (11, 11)}[sequence]
    for modality, n in zip(("t1_native", "post_contrast"), counts, strict=True):
        infos = scan_mapping_file(other[modality], modality=modality, require_masks=True)
        assert {i.n_images for i in infos} == {n}
        assert {i.attrs["sequence"] for i in infos} == {sequence}
        with h5py.File(stone[modality]) as a, h5py.File(other[modality]) as b:
            np.testing.assert_array_equal(a["case_0000/slice_1/truth/t1_ms"][()],
                                          b["case_0000/slice_1/truth/t1_ms"][()])  # fmt: skip
            assert a["case_0000/slice_1"].attrs["sequence"] == "stone"
    info = scan_mapping_file(other["t1_native"])[0]
    if sequence == "sasha":
        assert info.times_ms[-1] == np.inf
    else:  # the first inversion's images are one (irregular) beat apart
        rr = np.asarray(info.attrs["rr_intervals_ms"])
        assert 60_000 / 90 * 0.85 < rr.min() and rr.max() < 60_000 / 50 * 1.15
        assert info.attrs["scheme"] == ("5(3)3" if sequence == "molli" else "5(1)1(1)1")
    assert scan_mapping_file(other["t2"])[0].attrs["sequence"] == "t2prep"
