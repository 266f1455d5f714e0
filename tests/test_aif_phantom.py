"""Synthetic AIF perfusion phantoms: data contract, physics sanity, labels, reproducibility."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from datamodules.synthetic.aif_phantom import (
    CLASSIC,
    OUT_OF_DISTRIBUTION,
    RO,
    TRAINING,
    AIFScan,
    phantom_family,
    simulate_aif_scan,
    write_aif_phantoms,
)

N_PATIENTS, SCANS = 5, 2


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory) -> Path:
    """A small phantom file of the training ranges: 5 patients x (stress, rest)."""
    return write_aif_phantoms(tmp_path_factory.mktemp("aif") / "ph.h5", N_PATIENTS, seed=3)


@pytest.fixture(scope="module")
def classic_file(tmp_path_factory) -> Path:
    """The first generator's narrower family (centred heart, PD frames, mild shading)."""
    path = tmp_path_factory.mktemp("aif") / "classic.h5"
    return write_aif_phantoms(path, N_PATIENTS, seed=3, ranges=CLASSIC)


def _cases(path: Path) -> list[dict]:
    """All cases of a file as dicts of numpy arrays plus their attrs."""
    with h5py.File(path, "r") as f:
        return [{"id": k, **{d: f[k][d][()] for d in f[k]}, "attrs": dict(f[k].attrs)} for k in f]


def test_contract_shapes_dtypes_and_attrs(phantom_file):
    cases = _cases(phantom_file)
    assert sorted(c["id"] for c in cases) == sorted(
        f"P{p:04d}_{kind}" for p in range(N_PATIENTS) for kind in ("stress", "rest")
    )
    for c in cases:
        series, times, mask, attrs = c["series"], c["times_s"], c["mask"], c["attrs"]
        n_t, ro, e1 = series.shape
        assert series.dtype == np.float32 and times.dtype == np.float32 and mask.dtype == np.uint8
        assert ro == RO and 44 <= e1 <= 60 and 50 <= n_t <= 170
        assert times.shape == (n_t,) and mask.shape == (ro, e1)
        assert c["truth_lv_signal"].shape == c["truth_rv_signal"].shape == (n_t,)
        assert np.isfinite(series).all() and (series >= 0).all()
        assert times[0] == 0 and (np.diff(times) >= 0.3).all()  # one frame per RR (<= 150 bpm)
        assert set(np.unique(mask)) == {0, 1, 2}
        assert attrs["patient_id"] == c["id"].split("_")[0]
        assert 0 <= attrs["n_pd_frames"] <= 4
        assert bool(attrs["stress"]) == c["id"].endswith("stress")
        assert {"site", "scanner", "field_T", "snr_pd", "heart_rate_bpm", "lv_foot_s"} <= set(attrs)
        assert {"ts_ms", "baseline_ratio", "coil_ratio", "shading", "zoom"} <= set(attrs)


def test_rv_enhances_before_lv(phantom_file):
    """RV peaks before LV, both in the truth curves and in the label-mean curves of the series."""
    for c in _cases(phantom_file):
        n_pd, sr = c["attrs"]["n_pd_frames"], c["series"][c["attrs"]["n_pd_frames"] :]
        assert np.argmax(c["truth_rv_signal"][n_pd:]) < np.argmax(c["truth_lv_signal"][n_pd:])
        lv_curve, rv_curve = sr[:, c["mask"] == 1].mean(1), sr[:, c["mask"] == 2].mean(1)
        assert np.argmax(rv_curve) < np.argmax(lv_curve)
        assert c["attrs"]["rv_foot_s"] < c["attrs"]["lv_foot_s"] < c["attrs"]["lv_peak_s"]


def test_labels_cover_the_enhancing_pools(classic_file):
    """At the LV peak the LV label is much brighter than the ring around it (myocardium).

    The ring (2 px outside the LV, away from the RV) also holds partial-volume border pixels, and
    weak boluses at low SNR come close to the Rician noise floor, hence the median / minimum bands
    (over 300 scans: minimum ratio 1.46, 5th percentile 2.9, median 4.2).
    LV areas: the model draws 26-62 px; thresholding fractions at 0.5 adds a few px either way.
    """
    ratios = []
    for c in _cases(classic_file):
        n_pd, mask = c["attrs"]["n_pd_frames"], c["mask"]
        lv, rv = mask == 1, mask == 2
        assert 22 <= lv.sum() <= 68 and rv.sum() >= 15
        assert lv.sum() == c["attrs"]["lv_area_px"]
        ring = binary_dilation(lv, iterations=2) & ~lv & ~binary_dilation(rv)
        peak = c["series"][n_pd + int(np.argmax(c["truth_lv_signal"][n_pd:]))]
        ratios.append(peak[lv].mean() / peak[ring].mean())
        # the label-mean curve follows the ground-truth AIF shape
        lv_curve = c["series"][n_pd:, lv].mean(1)
        assert np.corrcoef(lv_curve, c["truth_lv_signal"][n_pd:])[0, 1] > 0.9
    assert min(ratios) > 1.3 and np.median(ratios) > 2.5


def test_pd_frames_are_brighter_than_first_sr_frames(classic_file):
    for c in _cases(classic_file):
        n_pd = c["attrs"]["n_pd_frames"]
        if n_pd:
            assert c["series"][:n_pd].mean() > 3 * c["series"][n_pd : n_pd + 2].mean()


def test_simulate_single_scan():
    scan = simulate_aif_scan(np.random.default_rng(0))
    assert isinstance(scan, AIFScan)
    n_t = scan.series.shape[0]
    assert scan.times_s.shape == scan.lv_signal.shape == scan.rv_signal.shape == (n_t,)
    assert scan.lv_signal.dtype == np.float32 and scan.mask.shape == scan.series.shape[1:]


def test_same_seed_same_file_and_patients_independent_of_count(tmp_path, phantom_file):
    again = write_aif_phantoms(tmp_path / "again.h5", N_PATIENTS, seed=3)
    fewer = write_aif_phantoms(tmp_path / "fewer.h5", 2, seed=3)
    other = write_aif_phantoms(tmp_path / "other.h5", 2, seed=4)
    ref = {c["id"]: c for c in _cases(phantom_file)}
    for path, must_equal in ((again, True), (fewer, True), (other, False)):
        for c in _cases(path):
            same = all(np.array_equal(c[k], ref[c["id"]][k]) for k in ("series", "times_s", "mask"))
            assert same == must_equal, (path.name, c["id"])
            if must_equal:
                assert c["attrs"] == ref[c["id"]]["attrs"]


def test_write_is_atomic(tmp_path, monkeypatch):
    path = write_aif_phantoms(tmp_path / "ok.h5", 1, seed=0, scans_per_patient=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]
    with h5py.File(path, "r") as f:
        assert list(f) == ["P0000_stress"]

    def fail(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr("datamodules.synthetic.aif_phantom._simulate", fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_aif_phantoms(tmp_path / "broken.h5", 1, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_training_ranges_span_what_differs_between_sites():
    """Over 60 scans the drawn properties cover the documented ranges."""
    rng = np.random.default_rng(7)
    scans = [simulate_aif_scan(rng) for _ in range(60)]
    attrs = [s.attrs for s in scans]
    lv = np.array([a["lv_area_px"] for a in attrs])
    baseline = np.array([a["baseline_ratio"] for a in attrs])
    assert lv.min() < 30 and lv.max() > 100  # LV blood pool 15-200 px
    assert baseline.min() < 0.03 and baseline.max() > 0.12  # pre-contrast baseline / blood peak
    assert {a["shading"] for a in attrs} == {"none", "partly", "corrected"}
    assert max(a["coil_ratio"] for a in attrs) > 5
    assert {s.n_pd_frames for s in scans} == {0, 1, 2, 3, 4}
    assert {a["sequence"] for a in attrs} == {"dual_sequence", "single_bolus"}
    steps = np.concatenate([np.diff(s.times_s) for s in scans])
    assert steps.min() < 0.5 and np.median(steps) < 1.2
    # the heart is not always in the centre: LV centroids spread over the crop
    centres = np.array([np.argwhere(s.mask == 1).mean(0) for s in scans])
    assert np.ptp(centres[:, 0]) > 20
    for s in scans:  # ... yet every LV lies inside the network's 64 x 48 centre crop
        e1 = s.mask.shape[1]
        cols = np.nonzero((s.mask == 1).any(0))[0]
        assert cols.min() >= max(0, (e1 - 48) // 2) and cols.max() < min(e1, (e1 + 48) // 2)


@pytest.mark.parametrize("family", sorted(OUT_OF_DISTRIBUTION))
def test_each_evaluation_family_lies_outside_the_training_ranges(family):
    name, ranges = phantom_family(family)
    assert name == family and ranges != TRAINING
    differing = {
        field for field in TRAINING.__dataclass_fields__
        if getattr(ranges, field) != getattr(TRAINING, field)
    }  # fmt: skip
    assert differing  # and a scan of it is a valid AIF contract case
    scan = simulate_aif_scan(np.random.default_rng(0), ranges)
    assert (scan.mask == 1).any() and np.isfinite(scan.series).all()


def test_family_names_and_overrides_resolve_and_typos_are_refused():
    assert phantom_family(None) == ("training", TRAINING)
    assert phantom_family("classic") == ("classic", CLASSIC)
    name, ranges = phantom_family({"snr_pd": [20, 40]})
    assert ranges.snr_pd == (20, 40) and name == phantom_family({"snr_pd": (20, 40)})[0]
    with pytest.raises(ValueError, match="unknown AIFPhantomRanges field"):
        phantom_family({"snr": [1, 2]})
    with pytest.raises(ValueError, match="unknown phantom family 'nope'"):
        phantom_family("nope")
