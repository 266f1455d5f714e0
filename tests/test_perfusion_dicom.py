"""Perfusion and DICOM: ``python -m exports perfusion --dicom-out`` writes the MBF, PS, Vb and
Visf maps of a case as DICOM Parametric Maps on the planes of its source images (read back with
pydicom and highdicom, values those of the HDF5 output within half a stored step); the DICOM
import tells the perfusion imaging series from the AIF series (names of the three vendors,
slices, matrix) and writes them as one dual-sequence case, which maps end to end."""

from __future__ import annotations

from pathlib import Path

import h5py
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from datamodules.synthetic.perfusion_phantom import simulate_case, write_perfusion_phantoms
from exports.__main__ import main
from formats.dicom.importer import import_dicom
from formats.dicom.results import QUANTITIES
from formats.dicom.series_kind import perfusion_role, task_from_name
from formats.perfusion_contract import write_gd_case
from quantification.saturation_recovery import SEQUENCE_ATTRS
from tests.dicom.vendor_dicom import (
    Study,
    _clock,
    mr_image,
    save,
    sax_plane,
    to_uint16,
    write_perfusion,
)

SHAPE = (20, 16)  # rows x columns: not square, so a transposed map would not fit its source
N_SLICES, N_FRAMES = 2, 40


def _write_source_series(folder: Path, images_gd: np.ndarray, times_s: np.ndarray) -> list[str]:
    """The case's frames as one Siemens MR series (slice by slice, frame by frame); returns
    the SOP Instance UIDs in that order."""
    study, series_uid = Study(), generate_uid()
    scale = 3000.0 / float(images_gd.max())
    uids = []
    for s in range(N_SLICES):
        plane = sax_plane(SHAPE, 2.0, offset_mm=10.0 * s)
        for t in range(N_FRAMES):
            ds = mr_image(
                to_uint16(np.clip(images_gd[s, t], 0, None), scale), study, series_uid, 11,
                "tfl perfusion sax", s * N_FRAMES + t + 1, plane, "SIEMENS",
                TriggerTime=round(1000 * float(times_s[t]), 1),
            )  # fmt: skip
            save(ds, folder / f"{s}_{t:03d}.dcm")
            uids.append(str(ds.SOPInstanceUID))
    return uids


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    """A perfusion file of two cases (the second without source UIDs) and the DICOM source."""
    root = tmp_path_factory.mktemp("perf_dicom")
    case = simulate_case(np.random.default_rng(3), n_slices=N_SLICES, shape=SHAPE,
                         n_frames=N_FRAMES)  # fmt: skip
    uids = _write_source_series(root / "dicom", case.perfusion_gd, case.times_s)
    with h5py.File(root / "cases.h5", "w") as h5:
        for name in ("stress", "not_from_dicom"):
            write_gd_case(h5, name, case.aif_gd, case.perfusion_gd, case.times_s, 0.42,
                          case.truth["segments"])  # fmt: skip
        h5["stress/perfusion_gd"].attrs["sop_instance_uids"] = uids
    return root


def test_maps_come_back_as_parametric_maps_on_their_source_planes(case_files, tmp_path, capsys):
    out = tmp_path / "dicom_out"
    status = main(["perfusion", "--input", str(case_files / "cases.h5"), "--output",
                   str(tmp_path / "maps.h5"), "--dicom-out", str(out), "--dicom-source",
                   str(case_files / "dicom")])  # fmt: skip
    printed = capsys.readouterr().out
    # the case imported from elsewhere cannot be written as DICOM, and says why
    assert status == 1
    assert "not_from_dicom" in printed and "sop_instance_uids" in printed
    names = ("mbf_ml_min_g", "ps_ml_min_g", "vb_ml_g", "visf_ml_g")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"stress_slice{s}_{n}.dcm" for s in range(N_SLICES) for n in names
    )
    sources = {}
    for path in sorted((case_files / "dicom").iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources[str(ds.SOPInstanceUID)] = ds
    series_uids = set()
    with h5py.File(tmp_path / "maps.h5") as maps:
        for s in range(N_SLICES):
            for name in names:
                pm = hd.pm.ParametricMap.from_dataset(
                    pydicom.dcmread(out / f"stress_slice{s}_{name}.dcm")
                )
                series_uids.add(pm.SeriesInstanceUID)
                mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
                slope = float(mapping.RealWorldValueSlope)
                assert slope == QUANTITIES[name].slope
                stored = pm.pixel_array.astype(np.float64)
                expected = maps[f"stress/{name}"][s].astype(np.float64)
                assert stored.shape == SHAPE
                np.testing.assert_array_equal(stored == 0, np.isnan(expected))
                inside = np.isfinite(expected) & (expected < 65535 * slope)
                assert inside.sum() > 0.5 * expected.size
                np.testing.assert_allclose(stored[inside] * slope, expected[inside],
                                           atol=slope / 2 + 1e-6)  # fmt: skip
                # on the plane of the slice's frames, in their study, referencing them
                (reference,) = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence[:1]
                source = sources[str(reference.ReferencedSOPInstanceUID)]
                assert int(source.InstanceNumber) == s * N_FRAMES + 1
                plane = pm.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
                found = [float(v) for v in plane.ImagePositionPatient]
                np.testing.assert_allclose(found, [float(v) for v in source.ImagePositionPatient])
                assert pm.StudyInstanceUID == source.StudyInstanceUID
                assert pm.FrameOfReferenceUID == source.FrameOfReferenceUID
                assert pm.SeriesNumber == 11 + 2000
    assert len(series_uids) == 1  # one output series for the source series


def test_dicom_out_needs_its_source_folder(case_files, tmp_path, capsys):
    status = main(["perfusion", "--input", str(case_files / "cases.h5"), "--output",
                   str(tmp_path / "maps.h5"), "--dicom-out", str(tmp_path / "out")])  # fmt: skip
    assert status == 2
    assert "--dicom-source" in capsys.readouterr().err
    assert not (tmp_path / "maps.h5").exists()


# ------------------------------------------------------------------------------ DICOM import


@pytest.mark.parametrize(
    ("names", "positions", "matrix", "role"),
    [
        ("tfl_perf_sax SR_perfusion", 3, (192, 111), "perfusion"),  # Siemens imaging series
        ("Perfusion_AIF TS_AIF", 1, (64, 48), "aif"),  # Siemens AIF series
        ("perfusion sa", 3, (144, 144), "perfusion"),  # Philips
        ("perfusion sa dual bolus aif", 1, (48, 48), "aif"),  # Philips, named AIF
        ("mpi stress fgre-et", 3, (128, 96), "perfusion"),  # GE
        ("firstpass aif", 1, (48, 40), "aif"),  # GE, named AIF
        ("firstpass", 1, (48, 40), "aif"),  # one low-resolution slice: an AIF series
        ("firstpass", 1, (160, 128), "perfusion"),  # one slice at imaging resolution
    ],
)
def test_perfusion_series_are_told_apart_by_name_slices_and_matrix(names, positions, matrix,
                                                                    role):  # fmt: skip
    text = names.lower()  # as series_text() gives them
    assert task_from_name(text) == "aif"  # the perfusion family (AIF or imaging series)
    assert perfusion_role(text, positions, matrix) == role


@pytest.fixture(scope="module")
def dual_study(tmp_path_factory):
    """A Siemens dual-sequence perfusion acquisition of the phantom as DICOM: the AIF series
    (one slice, 32 x 24 px) and the imaging series (3 slices, 20 x 16 px), PD frames first."""
    root = tmp_path_factory.mktemp("dual_dicom")
    phantoms = write_perfusion_phantoms(root / "phantoms.h5", seed=2, shape=SHAPE, n_frames=30)
    with h5py.File(phantoms) as h5:
        g = h5["stress_dual"]
        case = {key: g[key][()] for key in ("series", "mask", "perfusion", "times_s")}
        case["n_pd"] = int(g.attrs["n_pd_frames"])
        case["aif_timing"] = {k: g["series"].attrs[k] for k in SEQUENCE_ATTRS}
        case["timing"] = {k: g["perfusion"].attrs[k] for k in SEQUENCE_ATTRS}
    study = Study()
    write_perfusion(root / "dicom" / "aif", case["series"], case["times_s"], case["n_pd"], study,
                    20, "siemens", description="Perfusion_AIF")  # fmt: skip
    frames, series_uid = case["perfusion"], generate_uid()
    scale = 3000.0 / float(frames.max())
    for s in range(frames.shape[0]):
        plane = sax_plane(SHAPE, 2.0, offset_mm=10.0 * s)
        for t in range(frames.shape[1]):
            ds = mr_image(
                to_uint16(frames[s, t], scale), study, series_uid, 21, "tfl_perf_sax",
                s * frames.shape[1] + t + 1, plane, "SIEMENS",
                AcquisitionTime=_clock(37000, float(case["times_s"][t]) + 0.1 * s),
                ImageComments="PD" if t < case["n_pd"] else "SR",
            )  # fmt: skip
            save(ds, root / "dicom" / "imaging" / f"{s}_{t:03d}.dcm")
    case["scale"] = scale
    return root, case


def test_import_writes_the_imaging_and_aif_series_as_one_dual_sequence_case(dual_study,
                                                                             tmp_path):  # fmt: skip
    root, case = dual_study
    report = import_dicom(root / "dicom", tmp_path / "study.h5")
    assert set(report.outputs) == {"aif", "perfusion"}, report.lines()
    kinds = {s.number: s.kind for s in report.series}
    assert kinds == {"20": "aif", "21": "perfusion"}
    path = report.outputs["perfusion"]
    with h5py.File(path, "a") as h5:
        (case_id,) = h5
        group = h5[case_id]
        images = group["perfusion"]
        n_slices, n_frames = case["perfusion"].shape[:2]
        assert images.shape == (n_slices, n_frames, *SHAPE)
        # slices in the import's order (along the normal), each where its frames were
        written = [sax_plane(SHAPE, 2.0, offset_mm=10.0 * s).position for s in range(n_slices)]
        for k, position in enumerate(images.attrs["image_position_patient"]):
            s = int(np.argmin([np.linalg.norm(position - w) for w in written]))
            np.testing.assert_allclose(position, written[s], atol=1e-3)
            np.testing.assert_allclose(images[k], np.round(case["perfusion"][s] * case["scale"]),
                                       atol=0.5)  # fmt: skip
        assert len(images.attrs["sop_instance_uids"]) == n_slices * n_frames
        assert images.attrs["n_pd_frames"] == case["n_pd"] == group.attrs["n_pd_frames"]
        assert group["series"].shape == case["series"].shape
        np.testing.assert_allclose(group["times_s"][()], case["times_s"] - case["times_s"][0],
                                   atol=1e-3)  # fmt: skip
        # what DICOM does not carry: the LV of the AIF series and the sequence timing
        assert "mask" not in group
        group.create_dataset("mask", data=case["mask"].astype(np.uint8))
        group["series"].attrs.update(case["aif_timing"])
        images.attrs.update(case["timing"])
    status = main(["perfusion", "--input", str(path), "--output", str(tmp_path / "maps.h5"),
                   "--dicom-out", str(tmp_path / "out"), "--dicom-source",
                   str(root / "dicom")])  # fmt: skip
    assert status == 0
    assert len(list((tmp_path / "out").glob(f"{case_id}_slice*_mbf_ml_min_g.dcm"))) == n_slices
