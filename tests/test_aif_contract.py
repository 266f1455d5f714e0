"""The AIF HDF5 data contract (docs/data_contracts.md): scanning, reading, and the lazy Dataset."""

import pickle
from collections.abc import Callable

import h5py
import numpy as np
import pytest
import torch

from datamodules.aif_dataset import AIFHDF5Dataset
from formats.aif_contract import (
    AIFContractError,
    read_aif_case,
    scan_aif_file,
    write_aif_case,
)


def write_case(
    h5: h5py.File,
    case_id: str,
    e1: int = 48,
    t_count: int = 50,
    n_pd: int = 2,
    *,
    mask: bool = True,
    seed: int = 0,
) -> None:
    """One valid case: PD frames, a bolus in an LV disc, irregular times, LV/RV mask."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.7, 1.3, t_count)).astype(np.float32)
    ro_idx, e1_idx = np.mgrid[0:64, 0:e1]
    lv = (ro_idx - 32) ** 2 + (e1_idx - e1 // 2) ** 2 <= 12
    rv = (ro_idx - 32) ** 2 + (e1_idx - e1 // 2 + 8) ** 2 <= 12
    bolus = 5 * np.exp(-0.5 * ((times - times[n_pd] - 15) / 4) ** 2)
    series = 1 + bolus[:, None, None] * lv + rng.normal(0, 0.02, (t_count, 64, e1))
    series[:n_pd] = 10.0
    g = h5.create_group(case_id)
    g["series"] = series.astype(np.float32)
    g["times_s"] = times
    if mask:
        g["mask"] = (lv + 2 * rv).astype(np.uint8)
    g["truth_lv_signal"] = bolus.astype(np.float32)  # extra datasets are ignored
    g.attrs["patient_id"] = f"P{seed:03d}"
    g.attrs["n_pd_frames"] = n_pd
    g.attrs["site"] = "phantom"
    g.attrs["field_T"] = 1.5
    g.attrs["stress"] = bool(seed % 2)
    g.attrs["phantom_seed"] = seed  # extra attrs are kept, not checked


@pytest.fixture
def aif_file(tmp_path):
    path = tmp_path / "aif.h5"
    with h5py.File(path, "w") as h5:
        for i, e1 in enumerate([44, 48, 56, 64]):
            write_case(h5, f"case{i}", e1=e1, t_count=40 + 30 * i, seed=i)
    return path


def test_scan_valid_file(aif_file):
    infos = scan_aif_file(aif_file, require_mask=True)
    assert [i.case_id for i in infos] == ["case0", "case1", "case2", "case3"]
    assert [i.shape for i in infos] == [(64, 44), (64, 48), (64, 56), (64, 64)]
    assert [i.n_frames for i in infos] == [40, 70, 100, 130]
    info = infos[1]
    assert info.patient_id == "P001" and info.has_mask
    assert info.attrs["n_pd_frames"] == 2 and info.attrs["stress"] is True
    assert info.attrs["phantom_seed"] == 1 and info.attrs["site"] == "phantom"


def test_read_case(aif_file):
    with h5py.File(aif_file, "r") as h5:
        case = read_aif_case(h5, "case2", aif_file)
    assert case.series.shape == (100, 64, 56) and case.series.dtype == np.float32
    assert case.times_s.shape == (100,) and case.n_pd_frames == 2
    assert case.mask.shape == (64, 56) and set(np.unique(case.mask)) == {0, 1, 2}
    assert case.patient_id == "P002"


def replace(key: str, value) -> Callable[[h5py.Group], None]:
    def mutate(g: h5py.Group) -> None:
        del g[key]
        g[key] = value

    return mutate


def edit(key: str, fn) -> Callable[[h5py.Group], None]:
    def mutate(g: h5py.Group) -> None:
        value = fn(g[key][()])
        del g[key]
        g[key] = value

    return mutate


def set_attr(key: str, value) -> Callable[[h5py.Group], None]:
    def mutate(g: h5py.Group) -> None:
        if value is None:
            del g.attrs[key]
        else:
            g.attrs[key] = value

    return mutate


def delete(key: str) -> Callable[[h5py.Group], None]:
    def mutate(g: h5py.Group) -> None:
        del g[key]

    return mutate


def with_value(index, value):
    def fn(a):
        a = a.copy()
        a[index] = value
        return a

    return fn


VIOLATIONS = {  # name: (key named in the error, mutation of the case group)
    "missing series": ("series", delete("series")),
    "missing times_s": ("times_s", delete("times_s")),
    "series rank 2": ("series", edit("series", lambda a: a.reshape(a.shape[0], -1))),
    "series rank 4": ("series", edit("series", lambda a: a[None])),
    "series float64": ("series", edit("series", lambda a: a.astype(np.float64))),
    "series int16": ("series", edit("series", lambda a: a.astype(np.int16))),
    "series NaN": ("series", edit("series", with_value((5, 3, 3), np.nan))),
    "series Inf": ("series", edit("series", with_value((0, 0, 0), np.inf))),
    "series is a group": ("series", lambda g: (delete("series")(g), g.create_group("series"))),
    "mask shape": ("mask", edit("mask", lambda a: a[:, :-2])),
    "mask dtype": ("mask", edit("mask", lambda a: a.astype(np.int32))),
    "mask value 3": ("mask", edit("mask", with_value((0, 0), 3))),
    "times repeated": ("times_s", edit("times_s", with_value(7, 0.0))),
    "times NaN": ("times_s", edit("times_s", with_value(7, np.nan))),
    "times too short": ("times_s", edit("times_s", lambda a: a[:-1])),
    "times rank 2": ("times_s", edit("times_s", lambda a: a[:, None])),
    "times int": ("times_s", edit("times_s", lambda a: np.arange(len(a)))),
    "missing patient_id": ("patient_id", set_attr("patient_id", None)),
    "empty patient_id": ("patient_id", set_attr("patient_id", "")),
    "numeric patient_id": ("patient_id", set_attr("patient_id", 17)),
    "missing n_pd_frames": ("n_pd_frames", set_attr("n_pd_frames", None)),
    "negative n_pd_frames": ("n_pd_frames", set_attr("n_pd_frames", -1)),
    "float n_pd_frames": ("n_pd_frames", set_attr("n_pd_frames", 2.0)),
    "n_pd_frames leaves 1 SR": ("n_pd_frames", set_attr("n_pd_frames", 49)),
    "field_T text": ("field_T", set_attr("field_T", "1.5T")),
    "stress text": ("stress", set_attr("stress", "yes")),
}


def read_everything(path, require_mask=False):
    infos = scan_aif_file(path, require_mask=require_mask)
    with h5py.File(path, "r") as h5:
        for info in infos:
            read_aif_case(h5, info.case_id, path, require_mask=require_mask)


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_contract_violation_names_file_case_and_key(tmp_path, name):
    key, mutate = VIOLATIONS[name]
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as h5:
        write_case(h5, "good", seed=1)
        write_case(h5, "bad_case", seed=2)
        mutate(h5["bad_case"])

    with pytest.raises(AIFContractError) as err:
        read_everything(path)

    message = str(err.value)
    assert str(path) in message and "'bad_case'" in message and f"'{key}'" in message
    assert "expected" in message and "found" in message


def test_missing_mask_only_fails_when_required(tmp_path):
    path = tmp_path / "nomask.h5"
    with h5py.File(path, "w") as h5:
        write_case(h5, "unlabelled", mask=False)
    assert scan_aif_file(path)[0].has_mask is False
    with pytest.raises(AIFContractError, match="'unlabelled', key 'mask'"):
        scan_aif_file(path, require_mask=True)
    sample = AIFHDF5Dataset(path, ["unlabelled"], require_mask=False)[0]
    assert "mask" not in sample and sample["image"].shape == (64, 64, 48)
    with pytest.raises(AIFContractError, match="'mask'"):
        AIFHDF5Dataset(path, ["unlabelled"])[0]


def test_unknown_case_id(aif_file):
    with pytest.raises(AIFContractError, match="'nope'"):
        AIFHDF5Dataset(aif_file, ["nope"])[0]


def test_truncated_non_hdf5_and_missing_files(tmp_path, aif_file):
    truncated = tmp_path / "truncated.h5"
    data = aif_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.h5"
    text.write_text("not an HDF5 file\n")
    for path in (truncated, text, tmp_path / "missing.h5"):
        with pytest.raises(AIFContractError, match=str(path)):
            read_everything(path)


def test_empty_file_has_no_cases(tmp_path):
    path = tmp_path / "empty.h5"
    h5py.File(path, "w").close()
    with pytest.raises(AIFContractError, match="at least one case"):
        scan_aif_file(path)


def test_dataset_sample(aif_file):
    flips = []

    def transform(sample):
        flips.append(sample["case_id"])
        return sample

    ds = AIFHDF5Dataset(aif_file, ["case0", "case2"], transform=transform)
    assert ds._h5 is None  # lazy: nothing opened in __init__
    sample = ds[1]
    assert sample["image"].shape == (64, 64, 48) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (64, 48) and sample["mask"].dtype == torch.int64
    assert sample["case_id"] == "case2" and flips == ["case2"]
    assert float(sample["image"].max()) == pytest.approx(1.0)
    assert set(sample["mask"].unique().tolist()) == {0, 1, 2}
    # the LV label sits on the pixels that enhance at the LV peak
    peak_frame = sample["image"][30]
    assert peak_frame[sample["mask"] == 1].mean() > 3 * peak_frame[sample["mask"] == 0].mean()


def test_dataset_pickles_and_reopens_after_fork(aif_file):
    ds = AIFHDF5Dataset(aif_file, ["case0", "case1"])
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._h5 is None
    torch.testing.assert_close(clone[0]["image"], first["image"])
    ds._pid = -1  # as seen from a forked worker: the inherited handle must not be used
    old = ds._h5
    ds[1]
    assert ds._h5 is not old
    ds.close()
    clone.close()


def test_dataset_in_dataloader_with_workers(aif_file):
    ids = ["case0", "case1", "case2", "case3"]
    ds = AIFHDF5Dataset(aif_file, ids)
    expected = {i: ds[k] for k, i in enumerate(ids)}  # opens a handle in the parent first
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["image"].shape == (2, 64, 64, 48)
        assert batch["mask"].shape == (2, 64, 48) and batch["mask"].dtype == torch.int64
        for k, case_id in enumerate(batch["case_id"]):
            torch.testing.assert_close(batch["image"][k], expected[case_id]["image"])
            torch.testing.assert_close(batch["mask"][k], expected[case_id]["mask"])
            seen.append(case_id)
    assert seen == ids


def test_write_aif_case_stores_the_contract_dtypes_and_checks_what_it_wrote(tmp_path):
    path = tmp_path / "written.h5"
    series = np.random.default_rng(0).random((12, 8, 6))  # float64 in, float32 stored
    with h5py.File(path, "w") as h5:
        info = write_aif_case(
            h5,
            "c0",
            series,
            np.arange(12) * 0.9,
            2,
            "P1",
            mask=np.ones((8, 6)),
            attrs={"site": "A"},
        )
        assert (info.n_frames, info.shape, info.has_mask) == (12, (8, 6), True)
        with pytest.raises(AIFContractError, match=r"case 'bad', key 'times_s'.*increasing"):
            write_aif_case(h5, "bad", series, np.zeros(12), 0, "P2")
    case = read_aif_case(h5py.File(path), "c0", path)
    assert case.series.dtype == np.float32 and case.mask.dtype == np.uint8
    assert case.attrs["site"] == "A" and case.n_pd_frames == 2
