"""``python -m exports mrd-import``: MRD image files written by the ismrmrd package -> contracts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules.synthetic.aif_phantom import write_aif_phantoms
from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from exports.__main__ import main
from formats.aif_contract import read_aif_case
from formats.mapping_contract import read_mapping_slice
from formats.mrd.header import minimal_header_xml
from formats.mrd.images import derived_image, frame_times_s
from tests.mrd_cases import aif_images, mapping_images, read_aif_phantom, write_mrd_file


@pytest.fixture(scope="module")
def aif_phantoms(tmp_path_factory: pytest.TempPathFactory):
    return write_aif_phantoms(tmp_path_factory.mktemp("aif") / "cases.h5", n_patients=1, seed=5)


def test_an_aif_session_file_becomes_an_aif_case_with_its_labels(aif_phantoms, tmp_path):
    series, times_s, n_pd, mask = read_aif_phantom(aif_phantoms, "P0000_rest")
    frames = aif_images(series, times_s, series_index=3)
    labels = derived_image(
        frames[0], mask.T.astype(np.uint16), 4, 0, {"SeriesDescription": ["INLINECMR", "AIF_LV_RV"]}
    )
    path = write_mrd_file(
        tmp_path / "session.h5",
        "dataset",
        {"image_3": frames, "image_4": [labels]},
        minimal_header_xml(3.0, patient_id="PAT-123"),
        config="inlinecmr_aif",
        parameters={"n_pd_frames": n_pd},
    )
    out = tmp_path / "cases.h5"
    assert main(["mrd-import", str(path), "--output", str(out)]) == 0
    with h5py.File(out) as h5:
        assert list(h5) == ["dataset_image_3"]
        case = read_aif_case(h5, "dataset_image_3", out)
        np.testing.assert_array_equal(case.series, series)
        np.testing.assert_allclose(case.times_s, frame_times_s(frames)[0])
        assert case.n_pd_frames == n_pd
        np.testing.assert_array_equal(case.mask, mask)
        attrs = h5["dataset_image_3"].attrs
        assert attrs["field_T"] == 3.0 and attrs["time_source"] == "acquisition"
        assert attrs["patient_id"] != "PAT-123" and len(attrs["patient_id"]) == 16  # hashed
    assert (
        main(
            [
                "mrd-import",
                str(path),
                "--output",
                str(out),
                "--keep-identifiers",
                "--n-pd-frames",
                "0",
            ]
        )
        == 0
    )
    with h5py.File(out) as h5:
        assert h5["dataset_image_3"].attrs["patient_id"] == "PAT-123"
        assert h5["dataset_image_3"].attrs["n_pd_frames"] == 0


def test_t2_slices_become_a_mapping_case(tmp_path):
    phantoms = write_mapping_phantoms(tmp_path / "phantoms", 1, seed=3)
    slices = ["slice_0", "slice_2", "slice_4"]
    images = mapping_images(phantoms["t2"], slices, "T2PrepDuration")
    path = write_mrd_file(
        tmp_path / "t2.h5",
        "2024-05-01 10:00:00",
        {"image_5": images},
        minimal_header_xml(1.5),
        parameters={"hematocrit": 0.42},
    )
    out = tmp_path / "t2_cases.h5"
    assert main(["mrd-import", str(path), "--output", str(out), "--modality", "t2"]) == 0
    with h5py.File(out) as h5, h5py.File(phantoms["t2"]) as src:
        [case_id] = list(h5)
        assert case_id == "2024-05-01_10_00_00" and h5[case_id].attrs["hematocrit"] == 0.42
        for k, (slice_id, level) in enumerate(zip(slices, ("basal", "mid", "apical"), strict=True)):
            got = read_mapping_slice(h5, case_id, f"series5_slice{k}", out)
            np.testing.assert_array_equal(got.images, src[f"case_0000/{slice_id}/images"][()])
            np.testing.assert_array_equal(got.info.times_ms, src[f"case_0000/{slice_id}/te_ms"][()])
            assert got.info.level == level and got.info.modality == "t2"
            assert h5[f"{case_id}/series5_slice{k}"].attrs["pixel_spacing_mm"].tolist() == [
                1.5,
                1.5,
            ]


def test_unusable_files_are_refused_with_the_reason(aif_phantoms, tmp_path, capsys):
    series, times_s, _, _ = read_aif_phantom(aif_phantoms, "P0000_rest")
    frames = aif_images(series, times_s)
    unknown = write_mrd_file(tmp_path / "unknown.h5", "dataset", {"image_3": frames}, "x")
    assert main(["mrd-import", str(unknown), "--output", str(tmp_path / "o.h5")]) == 2
    assert "cannot tell the modality" in capsys.readouterr().err
    for image in frames:
        image.head.acquisition_time_stamp = 0
    untimed = write_mrd_file(tmp_path / "untimed.h5", "dataset", {"image_3": frames}, "x")
    assert (
        main(["mrd-import", str(untimed), "--output", str(tmp_path / "o.h5"), "--modality", "aif"])
        == 2
    )
    err = capsys.readouterr().err
    assert "untimed.h5: /dataset/image_3: missing frame times" in err
    with h5py.File(tmp_path / "raw.h5", "w") as h5:
        h5.create_group("dataset").create_dataset("data", data=np.zeros(3))
    assert main(["mrd-import", str(tmp_path / "raw.h5"), "--output", str(tmp_path / "o.h5")]) == 2
    assert "raw.h5: expected at least one group with image_<n> series" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()  # nothing half-written
