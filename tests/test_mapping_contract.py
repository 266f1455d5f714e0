"""The mapping HDF5 contract: valid files read back, every violation is a clear error."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from formats.mapping_contract import (
    MappingContractError,
    open_mapping_file,
    read_mapping_image,
    read_mapping_slice,
    read_mapping_truth,
    scan_mapping_file,
)

N, H, W = 4, 12, 10


def write_valid(path: Path, modality: str = "t1_native") -> Path:
    """Two patients, two slices each, in the mapping contract."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for c in range(2):
            case = f.create_group(f"case_{c}")
            case.attrs.update(patient_id=f"P{c}", hematocrit=0.42)
            for s, level in enumerate(("basal", "apical")):
                g = case.create_group(f"slice_{s}")
                g.attrs.update(level=level, modality=modality)
                g["images"] = rng.random((N, H, W), dtype=np.float32)
                g["masks"] = (rng.random((N, H, W)) < 0.3).astype(np.uint8)
                g["te_ms" if modality == "t2" else "ti_ms"] = np.linspace(
                    100, 1000, N, dtype=np.float32
                )
                g["truth/labels"] = np.zeros((H, W), np.uint8)
    return path


def test_a_valid_file_scans_and_reads(tmp_path):
    path = write_valid(tmp_path / "ok.h5")
    infos = scan_mapping_file(path, modality="t1_native", require_masks=True)
    assert [(i.case_id, i.slice_id, i.level) for i in infos] == [
        ("case_0", "slice_0", "basal"), ("case_0", "slice_1", "apical"),
        ("case_1", "slice_0", "basal"), ("case_1", "slice_1", "apical"),
    ]  # fmt: skip
    info = infos[2]
    assert (info.patient_id, info.n_images, info.shape, info.time_key) == ("P1", N, (H, W), "ti_ms")
    assert info.hematocrit == pytest.approx(0.42)
    with open_mapping_file(path) as h5:
        sl = read_mapping_slice(h5, "case_1", "slice_0", path, require_masks=True)
        assert sl.images.shape == (N, H, W) and sl.images.dtype == np.float32
        np.testing.assert_allclose(sl.times_ms, np.linspace(100, 1000, N), rtol=1e-6)
        image, mask = read_mapping_image(h5, info, 3, path)
        np.testing.assert_array_equal(image, sl.images[3])
        np.testing.assert_array_equal(mask, sl.masks[3])
        assert set(read_mapping_truth(h5, "case_1", "slice_0")) == {"labels"}


def test_t2_files_use_echo_times(tmp_path):
    path = write_valid(tmp_path / "t2.h5", modality="t2")
    assert {i.time_key for i in scan_mapping_file(path, modality="t2")} == {"te_ms"}


# (mutation of slice case_1/slice_0 or its case, key named in the error, expected text)
Mutation = Callable[[h5py.File], None]


def _replace(key: str, value) -> Mutation:
    def mutate(f: h5py.File) -> None:
        g = f["case_1/slice_0"]
        del g[key]
        g[key] = value

    return mutate


def _delete(key: str) -> Mutation:
    def mutate(f: h5py.File) -> None:
        del f["case_1/slice_0"][key]

    return mutate


def _attr(where: str, key: str, value) -> Mutation:
    def mutate(f: h5py.File) -> None:
        if value is None:
            del f[where].attrs[key]
        else:
            f[where].attrs[key] = value

    return mutate


STRUCTURE_ERRORS = {
    "missing images": (_delete("images"), "images", "a dataset"),
    "images float64": (_replace("images", np.zeros((N, H, W))), "images", "dtype float32"),
    "images rank 2": (_replace("images", np.zeros((H, W), np.float32)), "images", "[N, H, W]"),
    "one image": (_replace("images", np.zeros((1, H, W), np.float32)), "images", "at least 2"),
    "masks other N": (
        _replace("masks", np.zeros((N - 1, H, W), np.uint8)),
        "masks",
        "one mask per image",
    ),
    "masks int64": (_replace("masks", np.zeros((N, H, W), np.int64)), "masks", "dtype uint8"),
    "times other N": (
        _replace("ti_ms", np.arange(N + 1, dtype=np.float32)),
        "ti_ms",
        "one time per image",
    ),
    "times with NaN": (
        _replace("ti_ms", np.array([1, np.nan, 3, 4], np.float32)),
        "ti_ms",
        "finite",
    ),
    "times not increasing": (
        _replace("ti_ms", np.array([100, 300, 200, 400], np.float32)),
        "ti_ms",
        "increasing",
    ),
    "times integer": (_replace("ti_ms", np.arange(N)), "ti_ms", "float32"),
    "missing times": (_delete("ti_ms"), "ti_ms", "a dataset"),
    "te in a T1 file": (
        lambda f: f["case_1/slice_0"].create_dataset("te_ms", data=np.arange(N, dtype=np.float32)),
        "te_ms",
        "only 'ti_ms'",
    ),  # fmt: skip
    "bad level": (_attr("case_1/slice_0", "level", "middle"), "level", "basal"),
    "missing modality": (_attr("case_1/slice_0", "modality", None), "modality", "one of"),
    "other modality": (_attr("case_1/slice_0", "modality", "t2"), "modality", "'t1_native'"),
    "missing patient_id": (_attr("case_1", "patient_id", None), "patient_id", "patient_id"),
    "hematocrit in percent": (_attr("case_1", "hematocrit", 42.0), "hematocrit", "(0, 1)"),
}


@pytest.mark.parametrize("name", STRUCTURE_ERRORS)
def test_structure_violations_name_file_case_slice_key_and_expectation(tmp_path, name):
    mutate, key, expected = STRUCTURE_ERRORS[name]
    path = write_valid(tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        mutate(f)
    with pytest.raises(MappingContractError) as err:
        scan_mapping_file(path, modality="t1_native", require_masks=True)
    message = str(err.value)
    assert str(path) in message and "'case_1'" in message and f"'{key}'" in message, message
    assert "expected" in message and expected in message and "found" in message, message
    if key not in ("patient_id", "hematocrit"):
        assert "'slice_0'" in message, message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("images", np.float32(np.nan), "NaN/Inf in image 2"),
        ("images", np.float32(np.inf), "NaN/Inf in image 2"),
        ("masks", np.uint8(2), "values [2] in image 2"),
    ],
)
def test_bad_pixels_are_rejected_when_read(tmp_path, key, value, expected):
    path = write_valid(tmp_path / "pixels.h5")
    with h5py.File(path, "a") as f:
        f[f"case_1/slice_0/{key}"][2, 3, 4] = value
    info = next(
        i for i in scan_mapping_file(path) if (i.case_id, i.slice_id) == ("case_1", "slice_0")
    )
    with open_mapping_file(path) as h5:
        read_mapping_image(h5, info, 1, path)  # other images are fine
        with pytest.raises(MappingContractError, match=re.escape(expected)):
            read_mapping_image(h5, info, 2, path)
        with pytest.raises(MappingContractError, match=f"'case_1', slice 'slice_0', key '{key}'"):
            read_mapping_slice(h5, "case_1", "slice_0", path)


def test_masks_are_optional_unless_required(tmp_path):
    path = write_valid(tmp_path / "nomask.h5")
    with h5py.File(path, "a") as f:
        del f["case_0/slice_1/masks"]
    assert not scan_mapping_file(path)[1].has_masks
    with pytest.raises(MappingContractError, match="slice 'slice_1', key 'masks'.*missing"):
        scan_mapping_file(path, require_masks=True)


def test_files_without_cases_or_slices_and_unreadable_files(tmp_path):
    with pytest.raises(MappingContractError, match="no such file"):
        scan_mapping_file(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(MappingContractError, match="readable HDF5"):
        scan_mapping_file(tmp_path / "text.h5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(MappingContractError, match="at least one case"):
        scan_mapping_file(tmp_path / "empty.h5")
    path = write_valid(tmp_path / "noslice.h5")
    with h5py.File(path, "a") as f:
        f.create_group("case_9").attrs["patient_id"] = "P9"
    with pytest.raises(MappingContractError, match="case 'case_9': expected at least one slice"):
        scan_mapping_file(path)
    with open_mapping_file(path) as h5, pytest.raises(MappingContractError, match="slice group"):
        read_mapping_slice(h5, "case_0", "slice_7", path)


def test_sasha_may_end_with_the_non_saturated_image_at_infinite_time(tmp_path):
    path = write_valid(tmp_path / "sasha.h5")
    with h5py.File(path, "r+") as f:
        g = f["case_0/slice_0"]
        del g["ti_ms"]
        g["ti_ms"] = np.array([100.0, 300.0, 500.0, np.inf], np.float32)
    with pytest.raises(MappingContractError, match=r"\+inf only as the last time of a "
                       r"sequence='sasha' slice"):  # fmt: skip
        scan_mapping_file(path)
    with h5py.File(path, "r+") as f:
        f["case_0/slice_0"].attrs["sequence"] = "sasha"
    info = scan_mapping_file(path)[0]
    assert info.times_ms[-1] == np.inf
    with h5py.File(path, "r+") as f:
        g = f["case_0/slice_0"]
        del g["ti_ms"]
        g["ti_ms"] = np.array([100.0, np.inf, 500.0, 700.0], np.float32)  # not last
    with pytest.raises(MappingContractError, match="key 'ti_ms'"):
        scan_mapping_file(path)
