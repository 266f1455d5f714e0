"""DICOM import of bad input: every case gets a message naming the file or series and the
reason, the other series are still imported, and nothing is half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

import formats.dicom.contract_writer as dicom_contract_writer
from formats.dicom.importer import ImportOptions, import_dicom
from formats.mapping_contract import scan_mapping_file
from tests.dicom.conftest import run_cli
from tests.dicom.vendor_dicom import Study, mr_image, save, sax_plane

TE_MS = (0.0, 25.0, 40.0, 55.0)


def t2_series(folder: Path, study: Study, number: int, shape=(16, 16), **extra) -> list[Path]:
    """A small Siemens T2-prep series (T2-prep in the image comments) of 4 images."""
    uid, plane, paths = generate_uid(), sax_plane(shape, 2.0), []
    for i, te in enumerate(TE_MS):
        pixels = np.full(shape, 1000 * np.exp(-te / 50), np.uint16)
        attrs = {"ImageComments": f"T2 prep. duration = {te:g} ms", "EchoTime": 1.3, **extra}
        ds = mr_image(pixels, study, uid, number, f"T2map series {number}", i + 1, plane,
                      "SIEMENS", **attrs)  # fmt: skip
        paths.append(save(ds, folder / f"s{number}" / f"im{i}.dcm"))
    return paths


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Study]:
    """A folder with one good T2 series (number 1)."""
    study = Study()
    t2_series(tmp_path / "src", study, 1)
    return tmp_path / "src", study


def imported(src: Path, out: Path, *flags: str) -> tuple[int, str]:
    return run_cli(["dicom-import", src, "--output", out, "--salt", "s", *flags])


def assert_good_series_imported(printed: str, out: Path) -> None:
    assert "imported  series 1 'T2map series 1'" in printed
    assert len(scan_mapping_file(out)) == 1


def test_an_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    status, _ = imported(tmp_path / "empty", tmp_path / "out.h5")
    assert status == 2 and not (tmp_path / "out.h5").exists()
    with pytest.raises(ValueError, match=r"empty: the folder holds no files"):
        import_dicom(tmp_path / "empty", tmp_path / "out.h5")


def test_non_dicom_files_are_skipped_and_counted(good, tmp_path):
    src, _ = good
    (src / "report.pdf").write_bytes(b"%PDF-1.4 not dicom")
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "DICOMDIR.txt").write_text("index")
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 0
    assert "2 not DICOM (skipped)" in printed
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_only_non_dicom_files_import_nothing_and_write_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("hello")
    status, printed = imported(tmp_path / "src", tmp_path / "out.h5")
    assert status == 1 and "1 not DICOM" in printed
    assert not (tmp_path / "out.h5").exists()


def test_corrupt_dicom_files_are_named_and_the_rest_imported(good, tmp_path):
    src, study = good
    garbage = src / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    cut = src / "cut_header.dcm"
    cut.write_bytes(t2_series(tmp_path / "other", study, 9)[0].read_bytes()[:500])
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    assert f"skipped   file {garbage}: " in printed
    assert (
        f"skipped   file {cut}: an MR image without Rows / Columns: damaged or truncated" in printed
    )
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_a_truncated_file_skips_its_series_naming_the_file(good, tmp_path):
    src, study = good
    paths = t2_series(src, study, 2, shape=(16, 18))
    paths[2].write_bytes(paths[2].read_bytes()[:-200])  # cut in the pixel data
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    reason = f"{paths[2]}: truncated: its pixel data needs 576 bytes, the file holds 376"
    assert f"skipped   series 2 'T2map series 2' (3 files): {reason}" in printed
    assert f"skipped   file {reason}" in printed
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_mixed_matrix_sizes_skip_the_series(good, tmp_path):
    src, study = good
    t2_series(src, study, 3)
    odd = pydicom.dcmread(src / "s3" / "im1.dcm")
    odd.Rows, odd.Columns = 12, 16
    odd.PixelData = np.ones((12, 16), np.uint16).tobytes()
    odd.save_as(src / "s3" / "im1.dcm")
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    assert (
        "skipped   series 3 'T2map series 3' (4 files): mixed matrix sizes: 16x16 (3 images), "
        "12x16 (1 images)" in printed
    )
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_a_mapping_series_without_times_is_skipped_never_guessed(good, tmp_path):
    src, study = good
    for path in t2_series(src, study, 4):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = ds.ProtocolName = "MOLLI SAX"
        del ds.ImageComments
        ds.save_as(path)
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    reason = (
        "skipped   series 4 'MOLLI SAX' (4 files): no inversion times found (ImageComments "
        "'TI <ms>': missing on 4 of 4 images; InversionTime: missing on 4 of 4 images)"
    )
    assert reason in printed
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_a_constant_echo_time_is_not_taken_for_t2_prep_durations(good, tmp_path):
    src, study = good
    for path in t2_series(src, study, 5):
        ds = pydicom.dcmread(path)
        del ds.ImageComments
        ds.save_as(path)
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    assert ("EchoTime: 1.3 on every image (the readout echo time, not a T2-preparation time)"
            in printed)  # fmt: skip


def non_image(path: Path, sop_class: str, study: Study) -> Path:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", study.study_uid, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        sop_class, ds.SOPInstanceUID)  # fmt: skip
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_report_and_a_presentation_state_among_the_images_are_named_and_left_out(good, tmp_path):
    src, study = good
    report = non_image(src / "s1" / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.22", study)
    state = non_image(src / "s1" / "pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1", study)
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 0
    assert f"{report}: not an image: structured report or key object (Enhanced SR" in printed
    assert f"{state}: not an image: presentation state (Grayscale Softcopy" in printed
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_a_compressed_file_without_a_decoder_skips_its_series_naming_the_syntax(
    good, tmp_path, monkeypatch
):
    src, study = good
    for path in t2_series(src, study, 6, shape=(16, 20)):
        save(pydicom.dcmread(path), path, "jpeg_lossless")
    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(decoder, "_available", {})  # as if pylibjpeg-libjpeg were not installed
    status, printed = imported(src, tmp_path / "out.h5")
    assert status == 1
    assert "skipped   series 6 'T2map series 6' (4 files): " in printed
    assert (
        "no decoder installed for JPEG Lossless, Non-Hierarchical, First-Order Prediction"
        in printed
    )
    assert "install one of: gdcm" in printed
    assert_good_series_imported(printed, tmp_path / "out.h5")


def test_pd_frames_after_saturation_recovery_frames_are_refused(tmp_path):
    study, plane, uid = Study(), sax_plane((16, 16), 5.0), generate_uid()
    for t in range(8):
        ds = mr_image(np.full((16, 16), 100 + t, np.uint16), study, uid, 8, "perfusion AIF",
                      t + 1, plane, "SIEMENS", AcquisitionTime=f"1010{t:02d}.000",
                      ImageComments="PD" if t in (0, 5) else "SR")  # fmt: skip
        save(ds, tmp_path / "src" / f"{t}")
    status, printed = imported(tmp_path / "src", tmp_path / "out.h5")
    assert status == 1
    assert "proton-density frame 5 comes after saturation-recovery frames" in printed


def test_an_unusable_labels_file_stops_the_import(good, tmp_path):
    src, _ = good
    bad = tmp_path / "labels.npy"
    np.save(bad, np.full((16, 16), 7, np.uint8))
    status, _ = imported(src, tmp_path / "out.h5", "--labels", str(bad))
    assert status == 2 and not (tmp_path / "out.h5").exists()
    with pytest.raises(
        ValueError, match=r"labels\.npy: label values \[7\] are not in the 'inline'"
    ):
        import_dicom(src, tmp_path / "out.h5", ImportOptions(labels=(bad,), salt="s"))


def test_a_crash_while_writing_leaves_no_file_behind(good, tmp_path, monkeypatch):
    src, _ = good
    out = tmp_path / "out" / "t2.h5"
    out.parent.mkdir()
    out.write_bytes(b"the previous import")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dicom_contract_writer, "write_mapping_slice", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        import_dicom(src, out, ImportOptions(salt="s"))
    assert out.read_bytes() == b"the previous import"
    assert [p.name for p in out.parent.iterdir()] == ["t2.h5"]  # no temporary file left
    shutil.rmtree(out.parent)
