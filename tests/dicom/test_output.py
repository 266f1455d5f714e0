"""DICOM out: imported phantom study -> runtime -> ``--dicom-out`` -> read back with highdicom.

The T2 and ECV maps come back as Parametric Maps and the AIF LV/RV mask as a Segmentation, on
the source images' plane, in their study and frame of reference, referencing them, with values
within the stored rounding; ``dciodvfy`` (Debian's dicom3tools) finds no error in them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import highdicom as hd
import numpy as np
import pydicom
import pytest

from formats.dicom.results import QUANTITIES
from tests.dicom.conftest import run_cli
from tests.dicom.vendor_dicom import PhantomStudy, sop_uids


@pytest.fixture(scope="module")
def t2_outputs(imported, study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("t2_out")
    status, printed = run_cli(["mapping", "--input", imported[2]["t2"], "--output",
                               out / "maps.h5", "--dicom-out", out / "dicom", "--dicom-source",
                               study.root])  # fmt: skip
    return status, printed, out


@pytest.fixture(scope="module")
def ecv_outputs(imported, study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ecv_out")
    status, printed = run_cli([
        "mapping", "--native", imported[2]["t1_native"], "--post", imported[2]["post_contrast"],
        "--hematocrit", "0.42", "--output", out / "maps.h5", "--dicom-out", out / "dicom",
        "--dicom-source", study.root,
    ])  # fmt: skip
    return status, printed, out


@pytest.fixture(scope="module")
def aif_outputs(imported, study: PhantomStudy, aif_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("aif_out")
    status, printed = run_cli(["aif", "--model", aif_artifact, "--input", imported[2]["aif"],
                               "--output", out / "results.h5", "--dicom-out", out / "dicom",
                               "--dicom-source", study.root])  # fmt: skip
    return status, printed, out


def only(folder: Path, pattern: str) -> Path:
    (path,) = sorted(folder.glob(pattern))
    return path


def only_map(maps: Path, name: str) -> np.ndarray:
    with h5py.File(maps) as h5:
        (case,) = h5.values()
        (sl,) = (g for g in case.values() if isinstance(g, h5py.Group))
        return sl[name][()]


def real_world(pm: hd.pm.ParametricMap) -> tuple[np.ndarray, pydicom.Dataset]:
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    stored = pm.pixel_array.astype(np.float64)
    values = np.where(stored >= mapping.RealWorldValueFirstValueMapped,
                      stored * mapping.RealWorldValueSlope + mapping.RealWorldValueIntercept,
                      np.nan)  # fmt: skip
    return values, mapping


def assert_on_source_plane(result: pydicom.Dataset, source: Path) -> None:
    src = pydicom.dcmread(source, stop_before_pixels=True)
    shared = result.SharedFunctionalGroupsSequence[0]
    frame = result.PerFrameFunctionalGroupsSequence[0]
    assert result.StudyInstanceUID == src.StudyInstanceUID
    assert result.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert (result.Rows, result.Columns) == (src.Rows, src.Columns)
    np.testing.assert_allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, src.ImageOrientationPatient
    )
    np.testing.assert_allclose(
        frame.PlanePositionSequence[0].ImagePositionPatient, src.ImagePositionPatient
    )
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, src.PixelSpacing)
    assert result.PatientName == src.PatientName  # identifiers from the DICOM source


def test_t2_map_comes_back_as_a_parametric_map_in_ms(t2_outputs, study):
    status, printed, out = t2_outputs
    assert status == 0, printed
    assert "dicom-out: wrote 2" in printed
    pm = hd.pm.ParametricMap.from_file(only(out / "dicom", "*_t2_ms.dcm"))
    values, mapping = real_world(pm)
    t2 = only_map(out / "maps.h5", "t2_ms")
    assert np.array_equal(np.isnan(values), np.isnan(t2)) and np.isfinite(t2).sum() > 100
    assert np.nanmax(np.abs(values - t2)) <= QUANTITIES["t2_ms"].slope / 2 + 1e-6
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    referenced = {uid for _, _, uid in pm.get_source_image_uids()}
    assert referenced == set(sop_uids(study.files[9]))  # all nine T2-prepared images
    first = study.files[9][0]  # the slice's images share one plane
    assert_on_source_plane(pm, first)


def test_the_analysed_myocardium_comes_back_as_a_segmentation(t2_outputs, study):
    _, _, out = t2_outputs
    seg = hd.seg.segread(only(out / "dicom", "*_t2_ms_myocardium_seg.dcm"))
    assert seg.get_segment_description(1).segment_label == "Myocardium"
    source = seg.SourceImageSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source])[0, :, :, 0]
    np.testing.assert_array_equal(
        pixels.astype(bool), np.isfinite(only_map(out / "maps.h5", "t2_ms"))
    )
    assert_on_source_plane(seg, study.files[9][sop_uids(study.files[9]).index(source)])


def test_ecv_map_in_percent_references_native_and_post_images(ecv_outputs, study):
    status, printed, out = ecv_outputs
    assert status == 0, printed
    pm = hd.pm.ParametricMap.from_file(only(out / "dicom", "*_ecv_percent.dcm"))
    values, mapping = real_world(pm)
    ecv = only_map(out / "maps.h5", "ecv_percent")
    assert np.nanmax(np.abs(values - ecv)) <= 0.005 + 1e-6
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    series = {series for _, series, _ in pm.get_source_image_uids()}
    post, native = (pydicom.dcmread(study.files[n][0]).SeriesInstanceUID for n in (7, 5))
    assert series == {post, native}
    assert_on_source_plane(pm, study.files[7][0])


def test_aif_lv_mask_comes_back_as_a_segmentation_of_the_source_frame(aif_outputs, study):
    status, printed, out = aif_outputs
    assert status == 0, printed
    seg = hd.seg.segread(only(out / "dicom", "*_lv_rv_seg.dcm"))
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels[0] == "LV blood pool"
    source = seg.SourceImageSequence[0].ReferencedSOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source], combine_segments=True)[0]
    with h5py.File(out / "results.h5") as h5:
        (case,) = h5.values()
        mask = case["mask"][()]
    # frames were stored [E1, RO] by GE; the SEG is in the DICOM pixel grid again
    np.testing.assert_array_equal(pixels, mask.T)
    uids = sop_uids(study.files[3])
    assert source in uids
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    assert_on_source_plane(seg, study.files[3][uids.index(source)])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy not installed")
def test_dciodvfy_finds_no_error_in_our_segmentations_and_parametric_maps(
    t2_outputs, ecv_outputs, aif_outputs
):
    files = [p for _, _, out in (t2_outputs, ecv_outputs, aif_outputs)
             for p in sorted((out / "dicom").glob("*.dcm"))]  # fmt: skip
    assert len(files) == 5
    for path in files:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}:\n{report}"


def test_dicom_out_needs_the_source_folder(imported, tmp_path):
    status, _ = run_cli(["mapping", "--input", imported[2]["t2"], "--output", tmp_path / "m.h5",
                         "--dicom-out", tmp_path / "dicom"])  # fmt: skip
    assert status == 2
    assert not (tmp_path / "m.h5").exists()


def test_a_missing_source_image_is_named_and_the_rest_still_written(imported, study, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(study.root, partial)
    missing = partial / study.files[9][4].relative_to(study.root)
    missing.unlink()
    status, printed = run_cli(["mapping", "--input", imported[2]["t2"], "--output",
                               tmp_path / "m.h5", "--dicom-out", tmp_path / "dicom",
                               "--dicom-source", partial])  # fmt: skip
    assert status == 1
    assert "1 of 9 source images not found under" in printed
    assert (tmp_path / "m.h5").is_file() and not list((tmp_path / "dicom").glob("*.dcm"))


def test_our_own_segmentations_in_the_source_folder_are_not_taken_for_labels(
    t2_outputs, study, tmp_path
):
    _, _, out = t2_outputs
    source = tmp_path / "src"
    for path in study.files[9]:
        target = source / path.relative_to(study.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    shutil.copy(only(out / "dicom", "*_myocardium_seg.dcm"), source / "result_seg.dcm")
    status, printed = run_cli(["dicom-import", source, "--output", tmp_path / "t2.h5",
                               "--salt", "s"])  # fmt: skip
    assert status == 0
    assert "result_seg.dcm: a result of this tool (--dicom-out), not a label" in printed
    with h5py.File(tmp_path / "t2.h5") as h5:
        (case,) = h5.values()
        assert all("masks" not in sl for sl in case.values())
