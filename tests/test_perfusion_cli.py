"""``python -m exports perfusion`` end to end on a small phantom file (gadolinium and
dual-sequence cases), its figure, and a case with a missing sequence attribute."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datamodules.synthetic.perfusion_phantom import write_perfusion_phantoms
from exports.__main__ import main


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return write_perfusion_phantoms(tmp_path_factory.mktemp("perf") / "phantoms.h5", seed=1,
                                    shape=(24, 24), n_frames=45)  # fmt: skip


def _median_error(maps: h5py.File, truth: h5py.File, case: str) -> float:
    myocardium = truth[f"{case}/truth/labels"][()] == 3
    found = maps[f"{case}/mbf_ml_min_g"][()][myocardium]
    expected = truth[f"{case}/truth/mbf_ml_min_g"][()][myocardium]
    return float(np.nanmedian(found / expected - 1.0))


def test_maps_every_case_and_draws_its_figure(phantoms, tmp_path, capsys):
    output = tmp_path / "maps.h5"
    status = main(["perfusion", "--input", str(phantoms), "--output", str(output),
                   "--figures", str(tmp_path / "figures")])  # fmt: skip
    assert status == 0, capsys.readouterr().out
    with h5py.File(output) as maps, h5py.File(phantoms) as truth:
        assert set(maps) == {"rest", "stress", "stress_dual"}
        for case in maps:
            assert maps[f"{case}/mbf_ml_min_g"].shape == (3, 24, 24)
            assert maps[f"{case}/failure"].dtype == np.uint8
            assert maps[f"{case}/regions/segments"].shape == (3, 6, 5)
            np.testing.assert_array_equal(maps[f"{case}/regions/segment_labels"], np.arange(1, 7))
            assert maps[case].attrs["hematocrit"] == pytest.approx(0.42)
        assert abs(_median_error(maps, truth, "rest")) < 0.1
        assert abs(_median_error(maps, truth, "stress")) < 0.15
        assert abs(_median_error(maps, truth, "stress_dual")) < 0.25
        # each segment's mean curve, fitted as a region, against the segment's true MBF
        for case, tolerance in (("rest", 0.05), ("stress", 0.15)):
            found = maps[f"{case}/regions/segments"][:, :, 0]
            expected = truth[f"{case}/truth/segment_params"][:, :, 0]
            assert np.median(np.abs(found / expected - 1)) < tolerance
        # the AIF converted from the dual sequence's saturation-recovery signal
        np.testing.assert_allclose(maps["stress_dual/aif_gd"][()],
                                   truth["stress_dual/truth/aif_gd"][()], atol=0.25)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "rest_perfusion.png", "stress_dual_perfusion.png", "stress_perfusion.png"]  # fmt: skip


def test_a_missing_sequence_attribute_fails_that_case_only(phantoms, tmp_path, capsys):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(phantoms.read_bytes())
    with h5py.File(broken, "a") as h5:
        for case in ("rest", "stress"):
            del h5[case]
        del h5["stress_dual/perfusion"].attrs["saturation_time_ms"]
        h5.copy(h5["stress_dual"], "second_dual")
        del h5["second_dual/perfusion"]
    status = main(["perfusion", "--input", str(broken), "--output", str(tmp_path / "m.h5"),
                   "--hematocrit", "0.45"])  # fmt: skip
    assert status == 1
    with h5py.File(tmp_path / "m.h5") as maps:
        assert "'saturation_time_ms'" in maps["stress_dual"].attrs["error"]
        assert "perfusion" in maps["second_dual"].attrs["error"]
