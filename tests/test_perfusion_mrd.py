"""Config ``inlinecmr_perfusion`` on a real inline server, driven over 127.0.0.1 by the project's
MRD client: perfusion phantoms in (in gadolinium units, and as the dual-sequence signal with its
sequence timing), MBF maps and the myocardial MBF back."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from datamodules.synthetic.perfusion_phantom import simulate_case, write_perfusion_phantoms
from exports.mrd_client import run_session
from exports.mrd_perfusion import MBF_SLOPE
from exports.mrd_session import InlineModels
from exports.perfusion_pipeline import PerfusionSettings, map_case
from formats.mrd.images import TICK_S, make_image
from formats.mrd.meta import format_meta, parse_meta
from formats.perfusion_contract import DualSequence, PerfusionCase
from quantification.saturation_recovery import SEQUENCE_ATTRS
from tests.mrd_cases import MIDNIGHT_OFFSET_TICKS, aif_images, serving

TIMEOUT_S = 60.0
SHAPE, N_SLICES, N_FRAMES = (20, 16), 2, 40


def frames_as_images(frames: np.ndarray, times_s: np.ndarray, meta: dict) -> list:
    """Imaging frames [S, T, H, W] as MRD images [y = H, x = W], slice by slice."""
    ticks = np.round(times_s / TICK_S).astype(np.int64) + MIDNIGHT_OFFSET_TICKS
    return [
        make_image(frames[s, t].astype(np.float32), series_index=7, image_index=t,
                   slice_index=s, acquisition_time_stamp=int(ticks[t] + 8 * s),
                   position_mm=(0.0, 0.0, 10.0 * s), meta=meta)
        for s in range(frames.shape[0])
        for t in range(frames.shape[1])
    ]  # fmt: skip


def label_images(labels: np.ndarray, role: str) -> list:
    return [
        make_image(labels[s].astype(np.uint16), series_index=8, slice_index=s,
                   position_mm=(0.0, 0.0, 10.0 * s), meta={"InlineCMR_role": role})
        for s in range(labels.shape[0])
    ]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    with serving(InlineModels(), drain_s=2.0) as running:
        yield running


def test_gadolinium_frames_give_the_pipelines_maps_and_segment_mbf(server):
    case = simulate_case(np.random.default_rng(4), n_slices=N_SLICES, shape=SHAPE,
                         n_frames=N_FRAMES)  # fmt: skip
    times = np.round(case.times_s / TICK_S) * TICK_S  # what the 2.5 ms time stamps can carry
    times -= times[0]
    images = frames_as_images(case.perfusion_gd, times, {"InlineCMR_units": "mmol/L"})
    images += label_images(case.truth["segments"], "myocardium_mask")
    result = run_session(server.address, "inlinecmr_perfusion", images,
                         {"aif_gd": case.aif_gd.tolist(), "hematocrit": "0.42"},
                         timeout_s=TIMEOUT_S)  # fmt: skip
    assert result.closed and not result.errors, result.texts
    assert len(result.images) == N_SLICES and len(result.texts) == 1

    # the same maps as the pipeline run on the arrays, within half a stored step
    direct = PerfusionCase("x", times, case.aif_gd, case.perfusion_gd.astype(np.float64), None,
                           case.truth["segments"], 0.42, False)  # fmt: skip
    expected_result, fit, _ = map_case(direct, PerfusionSettings(), "direct")
    regions = expected_result.regions
    document = json.loads(result.texts[0])
    assert document["config"] == "inlinecmr_perfusion" and document["status"] == "ok"
    for s, image in enumerate(result.images):
        assert image.data.dtype == np.uint16 and image.data.shape == (1, 1, *SHAPE)
        assert image.head.slice == s and image.head.image_series_index == 9
        assert list(image.head.position) == list(images[s * N_FRAMES].head.position)
        meta = parse_meta(image.attributes)
        assert float(meta["RescaleSlope"][0]) == MBF_SLOPE
        expected = fit.mbf_ml_min_g[s]
        stored = image.data[0, 0].astype(np.float64)
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(stored == 0, ~finite | (expected < MBF_SLOPE / 2))
        np.testing.assert_allclose(stored[finite] * MBF_SLOPE, expected[finite],
                                   atol=MBF_SLOPE / 2 + 1e-9)  # fmt: skip
        # the window spans the 1st-99th percentiles of the fitted myocardial MBF
        myocardial = expected[(case.truth["segments"][s] > 0) & (fit.failure[s] == 0)]
        low, high = np.percentile(myocardial, [1, 99])
        centre, width = (float(meta[k][0]) * MBF_SLOPE for k in ("WindowCenter", "WindowWidth"))
        assert centre == pytest.approx((low + high) / 2, abs=MBF_SLOPE)
        assert width == pytest.approx(high - low, abs=MBF_SLOPE)
        # each segment's mean curve fitted as a region, as the pipeline fits it
        figures = document["slices"][s]
        for k, label in enumerate(regions["segment_labels"]):
            segment = figures["segments"][str(label)]
            assert segment["mbf_ml_min_g"] == pytest.approx(regions["segments"][s, k, 0])
            assert segment["vb_ml_g"] == pytest.approx(regions["segments"][s, k, 2])
        assert figures["myocardium_median_mbf_ml_min_g"] == pytest.approx(np.median(myocardial))
    assert document["myocardium_median_mbf_ml_min_g"] > 0
    np.testing.assert_allclose(document["aif_gd"], case.aif_gd)


@pytest.fixture(scope="module")
def dual(tmp_path_factory) -> dict:
    """The dual-sequence stress phantom: its arrays and timings."""
    path = write_perfusion_phantoms(tmp_path_factory.mktemp("dual") / "p.h5", seed=2,
                                    shape=SHAPE, n_frames=N_FRAMES)  # fmt: skip
    with h5py.File(path) as h5:
        g = h5["stress_dual"]
        return {
            "series": g["series"][()], "lv": g["mask"][()] == 1, "perfusion": g["perfusion"][()],
            "times_s": g["times_s"][()], "n_pd": int(g.attrs["n_pd_frames"]),
            "aif_timing": {k: float(g["series"].attrs[k]) for k in SEQUENCE_ATTRS},
            "timing": {k: float(g["perfusion"].attrs[k]) for k in SEQUENCE_ATTRS},
            "segment_params": g["truth/segment_params"][()], "segments": g["truth/segments"][()],
        }  # fmt: skip


def dual_images(dual: dict) -> list:
    """Imaging frames with their timing in the meta, the AIF frames, their LV, the myocardium."""
    aif = aif_images(dual["series"], dual["times_s"], series_index=3)
    for image in aif:
        image.attributes = format_meta({"InlineCMR_role": "aif"})
    lv = make_image(dual["lv"].T.astype(np.uint16), series_index=4, position_mm=(10.0, -20.0, 35.0),
                    meta={"InlineCMR_role": "lv_mask"})  # fmt: skip
    frames = frames_as_images(dual["perfusion"], dual["times_s"], dual["timing"])
    return aif + [lv] + frames + label_images(dual["segments"], "myocardium_mask")


def test_the_dual_sequence_signal_is_converted_with_its_sequence_timing(server, dual):
    parameters = {
        "n_pd_frames": dual["n_pd"],
        **{f"aif_{k}": v for k, v in dual["aif_timing"].items()},
    }
    result = run_session(server.address, "inlinecmr_perfusion", dual_images(dual), parameters,
                         timeout_s=TIMEOUT_S)  # fmt: skip
    assert result.closed and not result.errors, result.texts
    document = json.loads(result.texts[0])
    assert document["source"] == "dual_sequence"
    assert len(document["aif_gd"]) == len(dual["times_s"]) - dual["n_pd"]  # PD frames: not mapped
    # the pipeline on the same arrays (times as the 2.5 ms stamps carry them)
    times = np.round(dual["times_s"] / TICK_S) * TICK_S
    direct = PerfusionCase("x", times - times[0], None, None, DualSequence(
        dual["series"], dual["lv"], dual["aif_timing"], dual["perfusion"], dual["timing"],
        dual["n_pd"]), dual["segments"], None, False)  # fmt: skip
    expected, fit, _ = map_case(direct, PerfusionSettings(), "direct")
    np.testing.assert_allclose(document["aif_gd"], expected.aif_gd, rtol=1e-6, atol=1e-9)
    for s, image in enumerate(result.images):
        stored = image.data[0, 0].astype(np.float64)
        finite = np.isfinite(fit.mbf_ml_min_g[s])
        np.testing.assert_allclose(stored[finite] * MBF_SLOPE, fit.mbf_ml_min_g[s][finite],
                                   atol=MBF_SLOPE / 2 + 1e-9)  # fmt: skip
    found = [[sl["segments"][str(k + 1)]["mbf_ml_min_g"] for k in range(6)]
             for sl in document["slices"]]  # fmt: skip
    np.testing.assert_allclose(found, expected.regions["segments"][:, :, 0], rtol=1e-6)
    # and near the phantom's truth (each segment's fit of its mean curve)
    assert np.median(np.abs(np.array(found) / dual["segment_params"][:, :, 0] - 1)) < 0.3

    # without the AIF readout's flip angle the session fails and names it
    del parameters["aif_flip_angle_deg"]
    result = run_session(server.address, "inlinecmr_perfusion", dual_images(dual), parameters,
                         timeout_s=TIMEOUT_S)  # fmt: skip
    assert result.closed and not result.images
    assert len(result.errors) == 1 and "'flip_angle_deg'" in result.errors[0]
    assert "AIF series" in result.errors[0]


def test_signal_frames_without_an_aif_say_what_is_missing(server, dual):
    frames = frames_as_images(dual["perfusion"], dual["times_s"], dual["timing"])
    result = run_session(server.address, "inlinecmr_perfusion", frames, {}, timeout_s=TIMEOUT_S)
    assert len(result.errors) == 1 and "InlineCMR_role = aif" in result.errors[0]
