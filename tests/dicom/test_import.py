"""DICOM import: a scanner export of the phantoms (Siemens, Philips, GE layouts) -> contracts.

One phantom patient is written as four series of three vendors into one folder with non-DICOM
files beside them, imported once with ``python -m exports dicom-import``, and the contract
files are checked against what was written: times, order, units, geometry, reference maps,
sequence, identifiers and labels.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest

from exports.__main__ import main as cli
from formats.aif_contract import read_aif_case, scan_aif_file
from formats.contract_errors import plain
from formats.dicom.identifiers import pseudonym
from formats.mapping_contract import read_mapping_slice, scan_mapping_file
from tests.dicom.conftest import SALT
from tests.dicom.vendor_dicom import (
    MOLLI_RUNS_3_3_5,
    Study,
    acquisition_order,
    mr_image,
    save,
    sax_plane,
    sop_uids,
    to_uint16,
    write_siemens_t2prep,
)


def only_slice(path: Path):
    infos = scan_mapping_file(path)
    assert len(infos) == 1
    with h5py.File(path) as h5:
        return read_mapping_slice(h5, infos[0].case_id, infos[0].slice_id, path)


# ------------------------------------------------------------------------------ the whole folder


def test_every_series_is_found_in_any_nesting_and_written_one_file_per_kind(imported):
    status, printed, paths = imported
    assert status == 0, printed
    assert all(p.is_file() for p in paths.values())
    assert printed.count("imported  series") == 4
    assert "2 not DICOM (skipped)" in printed  # README.txt and notes.json
    assert "series 7 'T1map_SAX post' (12 files) as post_contrast" in printed
    assert "study_t2.h5:/anon-" in printed


def all_attrs_text(path: Path) -> str:
    """Every attr value of every group and dataset of an HDF5 file, as one string."""
    with h5py.File(path) as h5:
        objects = [h5]
        h5.visit(lambda name: objects.append(h5[name]))
        return " ".join(str(plain(v)) for obj in objects for v in obj.attrs.values())


def test_no_name_birth_date_or_patient_id_reaches_the_hdf5(imported, study):
    _, _, paths = imported
    for path in paths.values():
        joined = all_attrs_text(path)
        for identifier in (study.study.patient_name, "Doe", study.study.birth_date,
                           study.study.patient_id, "ACC42"):  # fmt: skip
            assert identifier not in joined, (path, identifier)
    case = scan_mapping_file(paths["t2"])[0]
    assert case.patient_id == pseudonym(study.study.patient_id, SALT)


def test_keep_identifiers_keeps_the_patient_id_but_never_the_name(study, tmp_path):
    out = tmp_path / "t2.h5"
    assert cli(["dicom-import", str(study.root), "--output", str(out), "--task", "t2",
                "--keep-identifiers"]) in (0, 1)  # fmt: skip
    info = scan_mapping_file(out)[0]
    assert info.patient_id == "PAT-001"
    assert info.case_attrs["study_date"] == "20240305"
    assert "Doe" not in str(info.case_attrs) and "19700101" not in str(info.case_attrs)


# ------------------------------------------------------------------------------ vendor rules


def test_siemens_molli_ti_from_image_comments_frames_in_ti_order(imported, study):
    sl = only_slice(imported[2]["t1_native"])
    native = study.acquisitions["t1_native"]
    np.testing.assert_allclose(sl.times_ms, np.round(native.times_ms, 1), atol=1e-3)
    expected = np.round(native.images * study.scales[5])  # stored values, no rescale tags
    np.testing.assert_array_equal(sl.images, np.clip(expected, 0, 65535))
    assert sl.info.attrs["times_source"] == "ImageComments 'TI <ms>'"
    assert sl.info.attrs["sequence"] == "molli"
    order = acquisition_order(MOLLI_RUNS_3_3_5)
    by_ti = [sop_uids(study.files[5])[order.index(i)] for i in range(11)]
    assert sl.info.attrs["sop_instance_uids"] == by_ti


def test_philips_private_ti_precise_scaling_and_t1_map_kept_apart(imported, study):
    sl = only_slice(imported[2]["post_contrast"])
    post = study.acquisitions["post_contrast"]
    assert sl.info.modality == "post_contrast" and sl.images.shape[0] == 11  # no map among them
    np.testing.assert_allclose(sl.times_ms, post.times_ms, rtol=1e-6)  # float32 private tag
    assert sl.info.attrs["times_source"] == "Philips private (2005,1572)"
    # each image had its own RescaleSlope and scale slope: only stored / SS gives it back
    tolerance = 0.5 / study.scales[7][:, None, None] + 1e-3
    assert (np.abs(sl.images - post.images) <= tolerance).all()
    assert sl.info.attrs["pixel_scaling"] == "Philips floating point (2005,100E)"
    # the scanner's T1 MAP: RescaleSlope 0.5 applied, its scale slope 123 not
    expected_map = np.round(np.nan_to_num(post.truth_ms) / 0.5) * 0.5
    np.testing.assert_allclose(sl.reference_ms, expected_map, atol=1e-3)
    assert sl.info.attrs["sequence"] == "molli"  # from the TI pattern: name says only T1map
    assert sl.info.attrs["reference_sop_instance_uid"] == sop_uids(study.files[7])[-1]


def test_siemens_t2_prep_from_image_comments_jpeg_lossless_decoded(imported, study):
    sl = only_slice(imported[2]["t2"])
    t2 = study.acquisitions["t2"]
    np.testing.assert_array_equal(sl.times_ms, [0, 25, 30, 35, 40, 45, 50, 55, 60])
    np.testing.assert_array_equal(
        sl.images, np.clip(np.round(t2.images * study.scales[9]), 0, 65535)
    )
    assert sl.info.attrs["sequence"] == "t2prep"
    assert (
        pydicom.dcmread(study.files[9][0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    )


def test_ge_perfusion_cumulative_trigger_time_pd_frames_and_readout_first(imported, study):
    path = imported[2]["aif"]
    (info,) = scan_aif_file(path)
    with h5py.File(path) as h5:
        case = read_aif_case(h5, info.case_id, path)
    aif = study.aif
    np.testing.assert_allclose(case.times_s, aif.times_s - aif.times_s[0], atol=1e-5)
    assert case.n_pd_frames == aif.n_pd_frames == 3
    # GE stored the frames [E1, RO] (phase encoding along the columns); the contract has [RO, E1]
    assert case.series.shape == aif.series.shape == (len(aif.times_s), 64, aif.series.shape[2])
    np.testing.assert_array_equal(case.series, np.round(aif.series * study.scales[3]))
    assert case.attrs["transposed"] is True or case.attrs["transposed"] == 1
    assert case.attrs["times_source"] == "TriggerTime (GE, cumulative)"
    assert case.attrs["field_T"] == 1.5 and case.attrs["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert len(case.attrs["sop_instance_uids"]) == len(aif.times_s)


def test_slices_keep_their_geometry_and_pair_up_across_modalities(imported, study):
    slices = {k: only_slice(imported[2][k]) for k in ("t1_native", "post_contrast", "t2")}
    ids = {(s.info.case_id, s.info.slice_id) for s in slices.values()}
    assert len(ids) == 1  # native, post and T2 of one location share case and slice ids
    attrs = slices["t2"].info.attrs
    plane = study.plane
    np.testing.assert_allclose(attrs["image_position_patient"], plane.position, atol=1e-3)
    np.testing.assert_allclose(attrs["image_orientation_patient"], [*plane.row, *plane.col],
                               atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(attrs["pixel_spacing_mm"], [study.pixel_mm] * 2)
    assert attrs["field_strength_T"] == 1.5 and attrs["manufacturer"] == "SIEMENS"
    assert attrs["series_description"] == "T2map_SAX"
    assert attrs["level"] == "mid" and attrs["level_source"] == "location 1 of 1 base to apex"


# ------------------------------------------------------------------------------ labels


def test_labels_from_npz_and_from_a_seg_in_the_folder_become_masks(imported, study):
    t2, native, post = (only_slice(imported[2][k]) for k in ("t2", "t1_native", "post_contrast"))
    np.testing.assert_array_equal(t2.masks, study.acquisitions["t2"].masks)
    np.testing.assert_array_equal(post.masks[np.argsort(np.argsort(post.times_ms))],
                                  study.acquisitions["post_contrast"].masks)  # fmt: skip
    np.testing.assert_array_equal(native.masks, study.acquisitions["t1_native"].masks)
    assert "seg_" in native.info.attrs["label_source"]
    assert t2.info.attrs["label_source"].endswith("labels.npz")


def ring_contour(plane, centre_px, radius_px, n=90) -> np.ndarray:
    """Closed circle in patient coordinates (LPS mm) on ``plane``: [n * 3] ContourData."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rows = centre_px[0] + radius_px * np.sin(angles)
    cols = centre_px[1] + radius_px * np.cos(angles)
    points = (plane.position + cols[:, None] * plane.spacing_mm[1] * plane.row
              + rows[:, None] * plane.spacing_mm[0] * plane.col)  # fmt: skip
    return points.ravel()


def write_rtstruct(path: Path, study: Study, images: list[Path], contours: dict) -> Path:
    """An RT Structure Set with one ROI per name, contours without image references."""
    ref = pydicom.dcmread(images[0], stop_before_pixels=True)
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = hd.UID()
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "RTSTRUCT", ref.PatientID, ref.StudyInstanceUID
    ds.SeriesInstanceUID = hd.UID()
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, data) in enumerate(contours.items(), start=1):
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = study.frame_uid
        ds.StructureSetROISequence.append(roi)
        contour = pydicom.Dataset()
        contour.ContourGeometricType, contour.NumberOfContourPoints = (
            "CLOSED_PLANAR",
            len(data) // 3,
        )
        contour.ContourData = [round(float(v), 4) for v in data]
        item = pydicom.Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, [contour]
        ds.ROIContourSequence.append(item)
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def t2_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Study, object, list[Path]]:
    """A small Siemens T2-prep series alone (64 x 72 pixels)."""
    root = tmp_path_factory.mktemp("t2_only")
    study = Study()
    rng = np.random.default_rng(0)
    te = np.array([0.0, 25, 40, 55])
    images = 500 * np.exp(-te[:, None, None] / 50.0) * (1 + 0.01 * rng.random((4, 64, 72)))
    plane = sax_plane((64, 72), 2.0)
    files, _ = write_siemens_t2prep(root, images, te, study, plane, 4)
    return root, study, plane, files


def test_rtstruct_endo_and_epi_contours_are_rasterised_on_the_slice_grid(t2_only, tmp_path):
    root, study, plane, files = t2_only
    labels = tmp_path / "rs.dcm"
    write_rtstruct(labels, study, files, {
        "LV endocardium": ring_contour(plane, (32.0, 36.0), 10.0),
        "LV epicardium": ring_contour(plane, (32.0, 36.0), 16.0),
    })  # fmt: skip
    out = tmp_path / "t2.h5"
    assert cli(["dicom-import", str(root), "--output", str(out), "--labels", str(labels),
                "--salt", SALT]) == 0  # fmt: skip
    sl = only_slice(out)
    rows, cols = np.mgrid[:64, :72]
    radius = np.hypot(rows - 32.0, cols - 36.0)
    ring = (radius >= 10.0) & (radius < 16.0)
    for mask in sl.masks:  # a contour without image references: the same mask on every image
        assert (mask.astype(bool) ^ ring).sum() <= 0.04 * ring.sum()
        assert not mask[radius < 9.5].any() and not mask[radius > 16.5].any()


def test_nifti_labels_are_sampled_through_their_affine(t2_only, tmp_path):
    root, _, plane, _ = t2_only
    label_image = np.zeros((64, 72), np.uint8)
    label_image[20:30, 30:40] = 3  # myocardium (inline convention)
    label_image[40:44, 10:20] = 1  # LV: not a mapping mask
    # a NIfTI as dcm2niix writes it: i along the columns, j along the rows, RAS affine
    affine = np.eye(4)
    affine[:3, 0] = plane.row * plane.spacing_mm[1] * [-1, -1, 1]
    affine[:3, 1] = plane.col * plane.spacing_mm[0] * [-1, -1, 1]
    affine[:3, 2] = plane.normal * 8.0 * [-1, -1, 1]
    affine[:3, 3] = plane.position * [-1, -1, 1]
    volume = label_image.T[:, :, None]
    path = tmp_path / "labels.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, affine), path)
    out = tmp_path / "t2.h5"
    assert cli(["dicom-import", str(root), "--output", str(out), "--labels", str(path),
                "--salt", SALT]) == 0  # fmt: skip
    sl = only_slice(out)
    np.testing.assert_array_equal(sl.masks[2], label_image == 3)

    acdc = tmp_path / "acdc.nii.gz"  # ACDC values: 2 is the myocardium there
    nibabel.save(nibabel.Nifti1Image(np.where(volume == 3, 2, 0).astype(np.uint8), affine), acdc)
    assert cli(["dicom-import", str(root), "--output", str(out), "--labels", str(acdc),
                "--label-convention", "acdc", "--salt", SALT]) == 0  # fmt: skip
    np.testing.assert_array_equal(only_slice(out).masks[0], label_image == 3)


def test_a_t1_map_in_its_own_series_is_attached_to_the_weighted_slice(tmp_path):
    study = Study()
    plane = sax_plane((32, 32), 2.0)
    ti = np.array([100.0, 180, 260, 1100, 1180, 2100, 3100, 4100])
    images = 800 * np.abs(1 - 2 * np.exp(-ti[:, None, None] / 1000.0)) * np.ones((8, 32, 32))
    uid = hd.UID()
    for i, t in enumerate(ti):
        ds = mr_image(to_uint16(images[i], 1.0), study, uid, 11, "MOLLI 5(3)3 SAX", i + 1, plane,
                      "SIEMENS", InversionTime=float(t))  # fmt: skip
        save(ds, tmp_path / "src" / f"w{i}")
    t1 = np.full((32, 32), 1000.0)
    ds = mr_image(to_uint16(t1, 1.0), study, hd.UID(), 12, "MOLLI 5(3)3 SAX_T1MAP", 1, plane,
                  "SIEMENS", ImageType=["DERIVED", "PRIMARY", "T1 MAP", "ND"])  # fmt: skip
    save(ds, tmp_path / "src" / "map")
    out = tmp_path / "t1.h5"
    status = cli(["dicom-import", str(tmp_path / "src"), "--output", str(out), "--salt", SALT])
    assert status == 0
    sl = only_slice(out)
    np.testing.assert_array_equal(sl.reference_ms, t1)
    np.testing.assert_array_equal(sl.times_ms, ti)  # InversionTime only: the standard tag
    assert sl.info.attrs["times_source"] == "InversionTime"


@pytest.mark.parametrize("syntax", ["jpeg_ls", "jpeg2000", "rle"])
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(t2_only, tmp_path, syntax):
    _, study, plane, files = t2_only
    reference = np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype(np.float32)
    root = tmp_path / syntax
    for path in files:
        ds = pydicom.dcmread(path)
        save(ds, root / path.name, syntax)
    out = tmp_path / f"{syntax}.h5"
    assert cli(["dicom-import", str(root), "--output", str(out), "--salt", SALT]) == 0
    np.testing.assert_array_equal(only_slice(out).images, reference)
