"""``python -m exports perfusion --dicom-out``: the MBF, PS, Vb and Visf maps of a perfusion case
back as DICOM Parametric Maps on the planes of the case's source images, read back with pydicom
and highdicom, values those of the HDF5 output within half a stored step."""

from __future__ import annotations

from pathlib import Path

import h5py
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from datamodules.synthetic.perfusion_phantom import simulate_case
from exports.__main__ import main
from formats.dicom.results import QUANTITIES
from formats.perfusion_contract import write_gd_case
from tests.dicom.vendor_dicom import Study, mr_image, save, sax_plane, to_uint16

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
