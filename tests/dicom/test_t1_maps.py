"""T1 maps of the imported MOLLI series: back as a DICOM Parametric Map with ``--t1
--dicom-out``, and the same series cropped around the heart (no air in the crop) maps like the
whole field of view."""

from __future__ import annotations

import json
import shutil

import h5py
import highdicom as hd
import numpy as np
import pytest

from tests.dicom.conftest import run_cli
from tests.dicom.test_output import assert_on_source_plane, only, only_map, real_world
from tests.dicom.vendor_dicom import PhantomStudy, sop_uids


@pytest.fixture(scope="module")
def t1_outputs(imported, study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("t1_out")
    status, printed = run_cli(["mapping", "--t1", imported[2]["t1_native"], "--output",
                               out / "maps.h5", "--dicom-out", out / "dicom", "--dicom-source",
                               study.root])  # fmt: skip
    return status, printed, out


def test_t1_map_comes_back_as_a_parametric_map_in_ms(t1_outputs, study):
    status, printed, out = t1_outputs
    assert status == 0, printed
    assert "dicom-out: wrote 2" in printed
    pm = hd.pm.ParametricMap.from_file(only(out / "dicom", "*_t1_ms.dcm"))
    values, mapping = real_world(pm)
    t1 = only_map(out / "maps.h5", "t1_ms")
    assert np.array_equal(np.isnan(values), np.isnan(t1)) and np.isfinite(t1).sum() > 50
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    referenced = {uid for _, _, uid in pm.get_source_image_uids()}
    assert referenced == set(sop_uids(study.files[5]))  # the Siemens MOLLI native series
    assert_on_source_plane(pm, study.files[5][0])


def _cropped(source, target):
    """A copy of the T1 file cropped to the myocardium's extent: no air left."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as h5:
        for case in h5.values():
            for group in (g for g in case.values() if isinstance(g, h5py.Group)):
                rows, cols = np.nonzero(group["masks"][()].any(axis=0))
                half = int(0.5 * max(np.ptp(rows), np.ptp(cols)))
                r, c = int(rows.mean()), int(cols.mean())
                for key in ("images", "masks"):
                    data = group[key][()][:, r - half : r + half, c - half : c + half]
                    del group[key]
                    group.create_dataset(key, data=data)
    return target


def test_a_crop_without_air_maps_like_the_whole_field_of_view(imported, t1_outputs, tmp_path):
    cropped = _cropped(imported[2]["t1_native"], tmp_path / "cropped.h5")
    status, printed = run_cli(["mapping", "--t1", cropped, "--output", tmp_path / "crop.h5"])
    assert status == 0, printed
    full = only_map(t1_outputs[2] / "maps.h5", "t1_ms")
    crop = only_map(tmp_path / "crop.h5", "t1_ms")
    assert np.isfinite(crop).sum() >= 0.95 * np.isfinite(full).sum()  # the crop cuts a little
    assert np.nanmedian(crop) == pytest.approx(np.nanmedian(full), rel=0.01)
    summary = json.loads((tmp_path / "crop.json").read_text())
    (case,) = summary["cases"].values()
    (sl,) = case["slices"].values()
    assert sl["success"] and sl["details"]["t1"]["noise_source"] == "residuals"
