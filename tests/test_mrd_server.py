"""The inline MRD server, driven over 127.0.0.1 by this project's client (exports.mrd_client)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.synthetic.aif_phantom import CLASSIC, write_aif_phantoms
from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from deployment.artifact import load_artifact
from exports.__main__ import main
from exports.aif_pipeline import AIFPipeline
from exports.mapping_pipeline import Acquisition, MappingPipeline, MyocardiumSegmenter
from exports.mrd_client import exchange, run_session, session_messages
from exports.mrd_server import InlineServer, load_models
from exports.mrd_session import InlineModels
from formats.mrd.images import frame_times_s, make_image
from formats.mrd.meta import parse_meta
from formats.mrd.stream import AcquisitionMessage, encode_message
from tests.conftest import ROOT
from tests.mrd_cases import (
    BolusTiming,
    BrokenModel,
    aif_images,
    export_aif_model,
    mapping_images,
    read_aif_phantom,
    serving,
)
from tests.test_inline_runtime import BLOCKED_IMPORTS
from tests.test_mapping_runtime import _export as export_ring_model

TIMEOUT_S = 20.0
SLICES = ["slice_0", "slice_2", "slice_4"]  # basal, mid, apical


@pytest.fixture(scope="module")
def aif_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The classic phantom family, whose pools the ``BolusTiming`` stand-in model finds."""
    path = tmp_path_factory.mktemp("aif") / "cases.h5"
    return write_aif_phantoms(path, n_patients=1, seed=5, ranges=CLASSIC)


@pytest.fixture(scope="module")
def aif_model(tmp_path_factory: pytest.TempPathFactory, aif_phantoms: Path) -> Path:
    return export_aif_model(BolusTiming(), tmp_path_factory.mktemp("m") / "aif.ts", aif_phantoms)


@pytest.fixture(scope="module")
def mapping(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_mapping_phantoms(tmp_path_factory.mktemp("mapping"), 1, seed=3)


@pytest.fixture(scope="module")
def clean_mapping(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Noise- and motion-free phantoms: what a whole-slice pixel-wise fit can get right."""
    directory = tmp_path_factory.mktemp("clean")
    return write_mapping_phantoms(directory, 1, seed=3, noise=False, motion=False)


@pytest.fixture(scope="module")
def server(aif_model: Path) -> Iterator[InlineServer]:
    with serving(load_models(aif_model, None), drain_s=2.0) as running:
        yield running


def outline_area(values: list[str]) -> float:
    """Area enclosed by a FIRE ROI (6 style values, then row, col pairs), shoelace formula."""
    points = np.array([float(v) for v in values[6:]]).reshape(-1, 2)
    rows, cols = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(rows, np.roll(cols, 1)) - np.dot(cols, np.roll(rows, 1))))


def wait_for_log(caplog: pytest.LogCaptureFixture, done: Callable[[list[str]], bool]) -> list[str]:
    """The server's log lines, once ``done`` (sessions are logged as their thread ends)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done(lines := [r.getMessage() for r in caplog.records]):
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    return lines


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


# ------------------------------------------------------------------------------------- AIF


def test_aif_session_returns_labels_contours_curve_and_features(server, aif_phantoms, aif_model):
    series, times_s, n_pd, truth = read_aif_phantom(aif_phantoms, "P0000_rest")
    frames = aif_images(series, times_s)
    result = run_session(
        server.address, "inlinecmr_aif", frames, {"n_pd_frames": str(n_pd)}, timeout_s=TIMEOUT_S
    )
    assert result.closed and not result.errors and not result.send_error
    assert len(result.images) == 1 and len(result.texts) == 1
    label = result.images[0]
    assert label.data.dtype == np.uint16 and label.data.shape == frames[0].data.shape
    for field in ("field_of_view", "position", "read_dir", "phase_dir", "slice_dir"):
        assert list(getattr(label.head, field)) == list(getattr(frames[0].head, field))
    assert label.head.image_series_index == 4 and label.head.slice == frames[0].head.slice

    # the same labels and curve as the pipeline run on the arrays (times in 2.5 ms ticks)
    ticked_times_s, _ = frame_times_s(frames)
    assert np.abs(ticked_times_s - (times_s - times_s[0])).max() <= 1.25e-3
    expected = AIFPipeline(load_artifact(aif_model)).run(series, ticked_times_s, n_pd)
    labels = label.data[0, 0].T
    np.testing.assert_array_equal(labels, expected.mask)
    assert dice(labels == 1, truth == 1) > 0.9 and dice(labels == 2, truth == 2) > 0.9
    document = result.documents()[0]
    assert document["status"] == "ok" and document["time_source"] == "acquisition"
    np.testing.assert_allclose(document["aif"], expected.aif, rtol=1e-6)
    assert document["features"]["peak_s"] == pytest.approx(expected.features.peak_s)

    meta = parse_meta(label.attributes)
    assert meta["DataRole"] == ["Quantitative"] and meta["ImageComment"] == ["LV=1", "RV=2"]
    assert outline_area(meta["ROI_LV"]) == (labels == 1).sum()  # the outline encloses the LV
    assert meta["ROI_LV"][:6] == ["1.0", "0.0", "0.0", "1.0", "0.0", "1.0"]
    assert [float(v) for v in meta["InlineCMR_AIF"]] == pytest.approx(document["aif"])
    for name in ("foot_s", "peak_s", "valley_s", "first_pass_s", "peak_value", "auc"):
        assert float(meta[f"InlineCMR_{name}"][0]) == pytest.approx(document["features"][name])


def test_uint16_frames_timed_by_the_physiology_stamp(server, aif_phantoms):
    series, times_s, n_pd, truth = read_aif_phantom(aif_phantoms, "P0000_stress")
    frames = aif_images(series, times_s, stamp="physiology", dtype=np.uint16)
    assert frames[0].head.acquisition_time_stamp == 0
    result = run_session(
        server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
    )
    assert not result.errors, result.errors
    assert result.documents()[0]["time_source"] == "physiology"
    # the stand-in model scores 0.86 on this case's float frames; uint16 transport keeps that
    assert dice(result.images[0].data[0, 0].T == 1, truth == 1) > 0.85


# ------------------------------------------------------------------------------------- maps


def ecv_images(mapping: dict[str, Path]) -> tuple[list, list]:
    """Native (series 1) and post-contrast (series 2, acquired later) images of one slice."""
    native = mapping_images(mapping["t1_native"], ["slice_2"], "InversionTime", series_index=1)
    post = mapping_images(
        mapping["post_contrast"],
        ["slice_2"],
        "InversionTime",
        series_index=2,
        first_tick=15_000_000,
    )
    return native, post


def test_t1_and_t2_whole_slice_maps_per_slice(clean_mapping):
    mapping = clean_mapping
    with serving(InlineModels()) as running:
        t1 = run_session(
            running.address,
            "inlinecmr_t1",
            mapping_images(mapping["t1_native"], SLICES, "InversionTime"),
            timeout_s=TIMEOUT_S,
        )
        te_ms = [0.0, 25, 30, 35, 40, 45, 50, 55, 60]
        t2 = run_session(
            running.address,
            "inlinecmr_t2",
            mapping_images(mapping["t2"], SLICES, None),
            {"te_ms": ",".join(map(str, te_ms)), "map_dtype": "float32"},
            timeout_s=TIMEOUT_S,
        )
    for result, quantity, truth_key, tolerance in (
        (t1, "t1", "t1_ms", 20.0),
        (t2, "t2", "t2_ms", 2.0),
    ):
        assert result.closed and not result.errors, result.errors
        assert len(result.images) == 3
        document = result.documents()[0]
        assert document["method"] == "whole_slice" and document["unit"] == "ms"
        for k, (image, slice_id) in enumerate(zip(result.images, SLICES, strict=True)):
            meta = parse_meta(image.attributes)
            assert image.head.slice == k and image.head.image_series_index == 6
            assert meta["DataRole"] == ["Quantitative"] and meta["InlineCMR_unit"] == ["ms"]
            values = image.data[0, 0].astype(np.float64) * float(meta.get("RescaleSlope", [1])[0])
            with h5py.File(mapping["t2" if quantity == "t2" else "t1_native"]) as h5:
                g = h5[f"case_0000/{slice_id}"]
                myocardium = g["truth/labels"][()] == 1
                true_ms = g[f"truth/{truth_key}"][()]
            measured = values[myocardium & (values > 0)]
            assert abs(np.median(measured) - np.median(true_ms[myocardium])) < tolerance
    assert t1.images[0].data.dtype == np.uint16 and t2.images[0].data.dtype == np.float32
    assert parse_meta(t1.images[0].attributes)["WindowCenter"] == ["1100"]
    assert parse_meta(t2.images[0].attributes)["WindowWidth"] == ["60"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_t2_and_ecv_in_the_myocardium_with_a_model(mapping, tmp_path):
    with h5py.File(mapping["post_contrast"]) as h5:
        mask = h5["case_0000/slice_2/masks"][0].astype(np.float32)
        hematocrit = float(h5["case_0000"].attrs["hematocrit"])
    ring = F.interpolate(torch.from_numpy(mask)[None, None], size=(256, 256), mode="bilinear")
    export_ring_model(ring[0], tmp_path / "myo.ts")
    models = load_models(None, tmp_path / "myo.ts")
    native, post = ecv_images(mapping)
    with serving(models) as running:
        ecv = run_session(
            running.address,
            "inlinecmr_ecv",
            [*post, *native],
            {"hematocrit": hematocrit, "levels": "mid"},
            timeout_s=TIMEOUT_S,
        )
        t2 = run_session(
            running.address,
            "inlinecmr_t2",
            mapping_images(mapping["t2"], ["slice_2"], "T2PrepDuration"),
            {"levels": ["mid"]},
            timeout_s=TIMEOUT_S,
        )
    assert not ecv.errors and not t2.errors, ecv.errors + t2.errors
    document = ecv.documents()[0]
    assert document["method"] == "myocardium_model" and document["hematocrit"] == hematocrit
    [figures] = document["slices"]
    assert figures["success"] and figures["level"] == "mid"
    meta = parse_meta(ecv.images[0].attributes)
    assert meta["InlineCMR_unit"] == ["%"] and meta["RescaleSlope"] == ["0.1"]
    segments = [float(v) for v in meta["InlineCMR_AHA_segments"]]
    assert len(segments) == 16 and np.isfinite(segments[6:12]).all()  # the mid segments
    assert np.isnan(segments[:6]).all() and "ROI_MYO" in meta

    # the server's figures are those of the mapping pipeline run on the same arrays
    with h5py.File(mapping["t1_native"]) as h5n, h5py.File(mapping["post_contrast"]) as h5p:
        acquisitions = [
            Acquisition(
                "c",
                "s",
                h5["case_0000/slice_2/images"][()],
                h5["case_0000/slice_2/ti_ms"][()],
                level="mid",
            )
            for h5 in (h5n, h5p)
        ]
    pipeline = MappingPipeline(segmenter=MyocardiumSegmenter(load_artifact(tmp_path / "myo.ts")))
    expected = pipeline.ecv_slice(*acquisitions, hematocrit)
    assert figures["mean"] == pytest.approx(expected.mean, rel=1e-6)
    np.testing.assert_allclose(segments, expected.segments, rtol=1e-6)
    stored = ecv.images[0].data[0, 0] * 0.1
    finite = np.isfinite(expected.values)
    np.testing.assert_allclose(stored[finite], expected.values[finite], atol=0.051)
    assert t2.documents()[0]["slices"][0]["success"]


def test_ecv_without_a_model_sends_both_t1_maps_and_the_ecv_given_blood_t1(mapping):
    native, post = ecv_images(mapping)
    with serving(InlineModels()) as running:
        plain = run_session(
            running.address,
            "inlinecmr_ecv",
            [*native, *post],
            {"hematocrit": 0.45},
            timeout_s=TIMEOUT_S,
        )
        full = run_session(
            running.address,
            "inlinecmr_ecv",
            [*native, *post],
            {"hematocrit": 0.45, "blood_t1_ms": [1570, 354]},
            timeout_s=TIMEOUT_S,
        )
    assert [im.head.image_series_index for im in plain.images] == [3, 4]
    assert any(t.startswith("WRN inlinecmr_ecv: no myocardium model") for t in plain.texts)
    windows = [parse_meta(im.attributes)["WindowCenter"] for im in plain.images]
    assert windows == [["1100"], ["500"]]  # native and post-contrast T1 windows
    assert [im.head.image_series_index for im in full.images] == [3, 4, 5] and not full.errors
    assert parse_meta(full.images[2].attributes)["InlineCMR_unit"] == ["%"]


# ------------------------------------------------------------------------------------- failures


def frames_of(aif_phantoms: Path, n: int | None = None) -> tuple[list, int]:
    series, times_s, n_pd, _ = read_aif_phantom(aif_phantoms, "P0000_rest")
    return aif_images(series, times_s)[:n], n_pd


def test_each_failure_is_an_error_message_and_the_server_keeps_serving(server, aif_phantoms):
    frames, n_pd = frames_of(aif_phantoms)
    no_times = aif_images(*read_aif_phantom(aif_phantoms, "P0000_rest")[:2])
    for image in no_times:
        image.head.acquisition_time_stamp = 0
    raw = AcquisitionMessage(
        ismrmrd.AcquisitionHeader(), np.zeros((4, 0), np.float32), np.zeros((2, 4), np.complex64)
    )
    header = session_messages("inlinecmr_aif", [])[:2]
    cases = {
        "unknown config 'inlinecmr_nope'": session_messages("inlinecmr_nope", frames[:2]),
        "series has T=20 frames": session_messages("inlinecmr_aif", frames[:20]),
        "missing frame times": session_messages("inlinecmr_aif", no_times),
        "parameter 'n_pd_frames': expected an integer >= 0; found 'two'": session_messages(
            "inlinecmr_aif", frames, {"n_pd_frames": "two"}
        ),
        "unknown message id 999": [*header, b"\xe7\x03" + bytes(8)],
        "image data_type 9": [
            *header,
            encode_message(frames[0])[:4] + b"\x09\x00" + encode_message(frames[0])[6:],
        ],
        "raw acquisitions (1008) are not accepted": [*header, raw],
        "expected a config (message 1 or 2) first": session_messages("x", [])[1:],
        "parameters text is not JSON": [*header, b"\x05\x00\x04\x00\x00\x00{no\x00"],
        "expected the frames of one series and slice": session_messages(
            "inlinecmr_aif",
            [
                *frames[:30],
                *aif_images(*read_aif_phantom(aif_phantoms, "P0000_rest")[:2], series_index=9),
            ],
        ),
    }
    for reason, messages in cases.items():
        result = exchange(server.address, messages, timeout_s=TIMEOUT_S)
        assert result.closed and len(result.errors) == 1, (reason, result.texts)
        assert result.errors[0].startswith("ERR ") and reason in result.errors[0], reason
    good = run_session(
        server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
    )
    assert good.closed and not good.errors and len(good.images) == 1


def test_truncated_message_and_disconnects_end_only_their_session(server, aif_phantoms, caplog):
    frames, n_pd = frames_of(aif_phantoms)
    caplog.set_level(logging.INFO, logger="inlinecmr.mrd_server")
    half_image = encode_message(frames[0])[:500]
    messages = [*session_messages("inlinecmr_aif", frames[:5])[:-1], half_image]
    truncated = exchange(server.address, messages, timeout_s=TIMEOUT_S, end_sending=True)
    assert truncated.closed and "stream ended inside image data" in truncated.errors[0]

    with socket.create_connection(server.address, timeout=TIMEOUT_S) as sock:  # leaves mid-stream
        for message in session_messages("inlinecmr_aif", frames[:10])[:-1]:
            sock.sendall(encode_message(message))
    with socket.create_connection(server.address, timeout=TIMEOUT_S) as sock:  # RST mid-message
        sock.sendall(b"".join(encode_message(m) for m in session_messages("inlinecmr_aif", [])[:2]))
        sock.sendall(encode_message(frames[0])[:300])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    good = run_session(
        server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
    )
    assert good.closed and not good.errors
    ok = f"inlinecmr_aif ok; {len(frames)} images in"
    lines = wait_for_log(
        caplog,
        lambda lines: sum("disconnected" in x for x in lines) == 3 and any(ok in x for x in lines),
    )
    assert any(ok in line and "process" in line and "total" in line for line in lines)
    assert sum("inlinecmr_aif disconnected" in line for line in lines) == 3


def test_a_failing_model_session_bounds_and_idle_timeout(aif_phantoms, tmp_path):
    frames, n_pd = frames_of(aif_phantoms)
    broken = export_aif_model(BrokenModel(), tmp_path / "broken.ts", aif_phantoms)
    with serving(load_models(broken, None)) as running:  # warms up on zeros, fails on data
        failing = run_session(
            running.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
        )
        again = run_session(running.address, "inlinecmr_aif", frames, timeout_s=TIMEOUT_S)
    for result in (failing, again):
        assert result.closed and "internal error: " in result.errors[0]
        assert "simulated inference failure" in result.errors[0]

    with serving(InlineModels(), max_images=10, idle_timeout_s=0.5) as running:
        images = [
            make_image(
                np.ones((8, 8), np.float32), image_index=k, meta={"InversionTime": 100.0 * (k + 1)}
            )
            for k in range(11)
        ]
        too_many = run_session(running.address, "inlinecmr_t1", images, timeout_s=TIMEOUT_S)
        assert "session too large: more than 10 images" in too_many.errors[0]
        no_model = run_session(running.address, "inlinecmr_aif", frames[:3], timeout_s=TIMEOUT_S)
        assert "needs an AIF model" in no_model.errors[0]
        with socket.create_connection(running.address, timeout=TIMEOUT_S) as sock:
            sock.sendall(encode_message(session_messages("inlinecmr_t1", [])[0]))
            reply = sock.recv(4096)  # the server gives up after 0.5 s of silence
        assert b"ERR inlinecmr_t1: no data from the peer for 0.5 s" in reply


def test_concurrent_sessions_up_to_the_bound(server, aif_phantoms):
    frames, n_pd = frames_of(aif_phantoms)
    results: list = [None] * 4

    def one(k: int) -> None:
        results[k] = run_session(
            server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
        )

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    labels = [r.images[0].data for r in results]
    assert all(r.closed and not r.errors for r in results)
    assert all(np.array_equal(labels[0], other) for other in labels[1:])


# ------------------------------------------------------------------------------------- CLI


def test_serve_command_prints_its_port_serves_and_stops_on_sigterm(aif_model, aif_phantoms):
    """``python -m exports serve``, run where Lightning, Hydra and W&B cannot be imported."""
    frames, n_pd = frames_of(aif_phantoms)
    serve = BLOCKED_IMPORTS + (
        "import runpy\nsys.argv = ['exports', 'serve', '--port', '0', '--aif-model', sys.argv[1]]"
        "\nrunpy.run_module('exports', run_name='__main__')"
    )
    command = [sys.executable, "-c", serve, str(aif_model)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("listening on 127.0.0.1:"), process.stderr.read()  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])
        result = run_session(
            ("127.0.0.1", port), "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=TIMEOUT_S
        )
        assert result.closed and not result.errors and len(result.images) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 0
        log = process.stderr.read()  # type: ignore[union-attr]
        assert "models loaded in" in log and "session 1 from 127.0.0.1" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT_S)


def test_serve_refuses_to_start_without_its_model(aif_model, capsys):
    missing = aif_model.with_name("missing.ts")
    assert main(["serve", "--port", "0", "--aif-model", str(missing), "--threads", "2"]) == 2
    assert "missing.ts: no such artifact file" in capsys.readouterr().err


def test_images_built_here_carry_the_geometry():
    image = make_image(np.zeros((4, 6), np.float32), pixel_spacing_mm=(2.0, 3.0))
    assert list(image.head.field_of_view) == [12.0, 12.0, 8.0]
    assert list(image.head.slice_dir) == [0.0, 0.0, 1.0]
