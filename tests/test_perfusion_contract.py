"""The perfusion HDF5 contract: both input forms, the errors that name what is wrong, the
results writer."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules.synthetic.perfusion_phantom import AIF_TIMING, IMAGING_TIMING
from formats.perfusion_contract import (
    PerfusionContractError,
    PerfusionResult,
    read_perfusion_case,
    write_dual_sequence_case,
    write_gd_case,
    write_perfusion_results,
)

T = 12


def _gd_file(path, **overrides):
    times = np.arange(T, dtype=float)
    values = dict(aif_gd=np.linspace(0, 4, T), perfusion_gd=np.zeros((T, 5, 6)), times_s=times)
    values.update(overrides)
    with h5py.File(path, "w") as h5:
        write_gd_case(h5, "p1_rest", values["aif_gd"], values["perfusion_gd"], values["times_s"],
                      hematocrit=0.40, mask=np.ones((5, 6)))  # fmt: skip
    return path


def test_a_single_slice_gd_case_reads_as_one_slice_and_remembers_it(tmp_path):
    path = _gd_file(tmp_path / "cases.h5")
    with h5py.File(path) as h5:
        case = read_perfusion_case(h5, "p1_rest", path)
    assert case.perfusion_gd.shape == (1, T, 5, 6) and case.squeeze_slices
    assert case.hematocrit == pytest.approx(0.40) and case.mask.shape == (1, 5, 6)
    assert (case.mask == 1).all()  # one segment: the whole myocardium
    assert case.dual is None


def test_errors_name_file_case_key_and_what_was_expected(tmp_path):
    path = _gd_file(tmp_path / "short.h5", perfusion_gd=np.zeros((T - 1, 5, 6)))
    with h5py.File(path) as h5, pytest.raises(PerfusionContractError) as err:
        read_perfusion_case(h5, "p1_rest", path)
    message = str(err.value)
    assert "short.h5" in message and "'p1_rest'" in message and "'perfusion_gd'" in message
    assert f"T = {T} frames" in message
    path = _gd_file(tmp_path / "nan.h5", aif_gd=np.full(T, np.nan))
    with h5py.File(path) as h5, pytest.raises(PerfusionContractError, match="'aif_gd'.*finite"):
        read_perfusion_case(h5, "p1_rest", path)
    with h5py.File(path, "a") as h5:
        h5["p1_rest"].attrs["hematocrit"] = 42.0
    with h5py.File(path) as h5, pytest.raises(PerfusionContractError, match="hematocrit"):
        read_perfusion_case(h5, "p1_rest", path)


def test_a_dual_sequence_case_needs_the_lv_mask_and_keeps_both_timings(tmp_path):
    path = tmp_path / "dual.h5"
    lv = np.zeros((8, 6), bool)
    lv[3:5, 2:4] = True
    with h5py.File(path, "w") as h5:
        write_dual_sequence_case(h5, "p2_stress", np.ones((T, 8, 6)), lv, AIF_TIMING,
                                 np.ones((3, T, 5, 5)), IMAGING_TIMING, np.arange(T, dtype=float),
                                 2, "p2")  # fmt: skip
    with h5py.File(path) as h5:
        case = read_perfusion_case(h5, "p2_stress", path)
    assert case.dual.perfusion.shape == (3, T, 5, 5) and case.dual.n_pd_frames == 2
    assert case.dual.aif_attrs["saturation_time_ms"] == AIF_TIMING["saturation_time_ms"]
    assert case.dual.perfusion_attrs["flip_angle_deg"] == IMAGING_TIMING["flip_angle_deg"]
    with h5py.File(path, "a") as h5:
        del h5["p2_stress/mask"]
    with h5py.File(path) as h5, pytest.raises(PerfusionContractError, match="'mask'"):
        read_perfusion_case(h5, "p2_stress", path)


def test_results_are_written_atomically_with_failed_cases_and_their_reason(tmp_path):
    target = tmp_path / "maps.h5"
    maps = {"mbf_ml_min_g": np.full((2, 3), 1.5, np.float32)}
    results = {
        "ok": PerfusionResult(maps=maps, aif_gd=np.ones(4), times_s=np.arange(4.0),
                              attrs={"model": "bte", "failure_reasons": {"0": "fitted"}}),
        "bad": PerfusionResult(error="MissingSequenceAttribute: 'flip_angle_deg'"),
    }  # fmt: skip
    write_perfusion_results(target, results)
    with h5py.File(target) as h5:
        assert h5["ok/mbf_ml_min_g"].shape == (2, 3) and h5["ok"].attrs["model"] == "bte"
        assert "flip_angle_deg" in h5["bad"].attrs["error"]
    assert [p.name for p in tmp_path.iterdir()] == ["maps.h5"]  # no temporary file left
