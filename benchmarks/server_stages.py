"""Where the time of an inline MRD session goes: a per-stage profile of the server's work.

``python benchmarks/server_stages.py [--model PATH] [--runs 30] [--threads 2]
[--configs aif t1] [--end-to-end]``

For each config, ``--runs`` sessions (after 3 warm-up) are served in this process, stage by
stage, with the server's own functions:

* **receive**: the encoded session (config, header, parameters, images, close) sent by a thread
  over a local socket pair and read to its end (bytes only);
* **decode**: the bytes parsed into MRD messages (``formats.mrd.stream.read_message``);
* **process**: the config's processor (``exports.mrd_server.CONFIGS``), split into its stages
  by timing wrappers put around the functions it calls (module attributes, so the code under
  test is the code that runs; "other" is what the processor does outside them);
* **encode**: the reply messages to bytes; **send**: those bytes over the socket pair.

Configs: ``aif`` (``inlinecmr_aif``) on 8 phantom AIF series (73-120 frames, 64 x 44-60 px,
as MRD uint16 images), and ``t1`` (``inlinecmr_t1``) on a three-slice MOLLI phantom series
(8 images a slice, whole-slice T1 fit). Without ``--model`` the AIF artifact is MONAI's
BasicUNet (``conf/model/net/monai_basic_unet.yaml`` features, 3 classes) with **random
weights** (seed 0; latency does not depend on the weights), exported with
``deployment.exporter.export_artifact`` (fp32, the default export); ``--onnx`` also writes its
ONNX fp32 and int8 QDQ files, and the server picks the fastest that passes its parity check
(``deployment.onnx_backend``; ``--backend`` insists on one).

``--end-to-end`` also starts ``python -m exports serve`` in its own process and plays the
scanner on the same machine: the median time from ``connect`` to the server's close over
``--runs`` sessions, the server's reported ``processing_ms``, and the cold start (process start
to the first answered session).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOLLI_SLICES = ["slice_0", "slice_2", "slice_4"]

AIF_STAGES = {  # (module, attribute) -> stage; AIFPipeline.* are methods of the class
    ("exports.mrd_aif", "aif_frames"): "frames to arrays",
    ("exports.aif_pipeline", "preprocess_aif_series"): "preprocess",
    ("exports.aif_pipeline.AIFPipeline", "probabilities"): "network",
    ("exports.aif_pipeline", "masks_from_probabilities"): "threshold rule",
    ("exports.aif_pipeline", "restore_geometry"): "threshold rule",
    ("exports.aif_pipeline.AIFPipeline", "signal_on_grid"): "AIF curve + features",
    ("exports.aif_pipeline", "aif_curve"): "AIF curve + features",  # before aif_of_pixels
    ("exports.aif_pipeline", "aif_of_pixels"): "AIF curve + features",
    ("exports.aif_pipeline", "aif_features"): "AIF curve + features",
    ("exports.mrd_aif", "roi_meta"): "outlines",
    ("exports.mrd_aif", "derived_image"): "label image + meta",
}
T1_STAGES = {
    ("exports.mrd_mapping", "_slices"): "frames to slices",
    ("exports.mrd_mapping", "whole_slice_map"): "T1 fit",
    ("exports.mrd_mapping", "map_image"): "map image + meta",
}


def _resolve(dotted: str) -> Any:
    import importlib

    module, _, attribute = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module), attribute)


def _now() -> np.ndarray:
    """(wall, this thread's CPU) clocks in ms. On a loaded machine the thread's CPU time of a
    single-threaded stage is close to its wall time on an idle one."""
    return np.array([time.perf_counter(), time.thread_time()]) * 1e3


@contextmanager
def stage_timers(stages: dict[tuple[str, str], str]) -> Iterator[dict[str, float]]:
    """Wrap the named functions so that each call adds its (wall, thread CPU) time in ms to its
    stage; a stage called from inside another stage's function counts once (the outer one). Names
    the code does not have (an older or newer version of it) are skipped."""
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(2))
    active: list[str] = []
    originals = []
    for (owner_name, attribute), stage in stages.items():
        owner = _resolve(owner_name)
        original = getattr(owner, attribute, None)
        if original is None:
            continue

        def timed(*args: Any, _f: Callable = original, _stage: str = stage, **kwargs: Any) -> Any:
            if active:
                return _f(*args, **kwargs)
            active.append(_stage)
            start = _now()
            try:
                return _f(*args, **kwargs)
            finally:
                totals[_stage] += _now() - start
                active.pop()

        setattr(owner, attribute, timed)
        originals.append((owner, attribute, original))
    try:
        yield totals
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def _over_socket(data: bytes) -> np.ndarray:
    """(wall, this thread's CPU) ms to move ``data`` through a local socket pair (a thread
    sends, this one reads)."""
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)))
        start = _now()
        sender.start()
        received = bytearray()
        while chunk := b.recv(1 << 20):
            received += chunk
        elapsed = _now() - start
        sender.join()
    assert len(received) == len(data)
    return elapsed


def session_stages(
    stream: bytes, config: str, models: Any, stages: dict[tuple[str, str], str]
) -> dict[str, float]:
    """The stage times (wall, thread CPU; ms) of one session of ``config`` on ``stream``."""
    from exports.mrd_server import CONFIGS
    from exports.mrd_session import SessionParameters
    from formats.mrd.stream import Close, ImageMessage, Text, encode_message, read_message

    times = {"receive": _over_socket(stream)}
    start = _now()
    source, messages = io.BytesIO(stream), []
    while not isinstance(message := read_message(source), Close):
        messages.append(message)
    times["decode"] = _now() - start
    images = [m for m in messages if isinstance(m, ImageMessage)]
    params = SessionParameters.from_text(next(m.text for m in messages if isinstance(m, Text)))
    with stage_timers(stages) as inside:
        start = _now()
        reply = CONFIGS[config](images, params, models)
        process_ms = _now() - start
    times.update(inside)
    times["process: other"] = process_ms - sum(inside.values())
    start = _now()
    out = b"".join(
        [*map(encode_message, reply.images), *(encode_message(Text(t)) for t in reply.texts)]
    )
    out += encode_message(Close())
    times["encode"] = _now() - start
    times["send"] = _over_socket(out)
    if json.loads(reply.texts[0])["status"] != "ok":
        raise RuntimeError(f"{config} session failed: {reply.texts}")
    return times


def in_own_thread(function: Callable[..., dict], *args: Any) -> dict:
    """``function(*args)`` in a new thread, as the server serves each session. (It matters: on
    a loaded 2-core machine, a 2-thread torch inference took 3210 ms from the main thread and
    26-57 ms from a new thread, or with 1 thread; AMD EPYC Zen 3, load average 9.5.)"""
    result: list[dict] = []
    thread = threading.Thread(target=lambda: result.append(function(*args)))
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError(f"{function.__name__} failed in its thread (traceback above)")
    return result[0]


# ------------------------------------------------------------------------------- test data


def aif_streams(workdir: Path) -> tuple[list[bytes], np.ndarray]:
    """Encoded ``inlinecmr_aif`` sessions of the phantom series of ``server_latency.py`` (8
    series, uint16 frames, 2.5 ms time stamps) and their preprocessed series [8, 64, 64, 48]."""
    from benchmarks.server_latency import phantom_series
    from exports.mrd_client import session_messages
    from formats.mrd.stream import encode_message

    sessions, preprocessed = phantom_series(workdir)
    streams = [
        b"".join(map(encode_message, session_messages("inlinecmr_aif", f, {"n_pd_frames": n_pd})))
        for f, n_pd in sessions
    ]
    return streams, preprocessed


def molli_stream(workdir: Path) -> bytes:
    """An encoded ``inlinecmr_t1`` session: three MOLLI slices of the mapping phantom (8
    images each, inversion times in the ``InversionTime`` meta)."""
    import h5py

    from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
    from exports.mrd_client import session_messages
    from formats.mrd.images import make_image
    from formats.mrd.stream import encode_message

    phantoms = write_mapping_phantoms(workdir / "mapping", 1, seed=3, sequence="molli")
    path = phantoms["t1_native"]
    images = []
    with h5py.File(path) as h5:
        for slice_index, slice_id in enumerate(MOLLI_SLICES):
            g = h5[f"case_0000/{slice_id}"]
            if g.attrs["sequence"] != "molli":
                raise RuntimeError(f"{path}: {slice_id} is {g.attrs['sequence']}, not MOLLI")
            for n, (image, ti_ms) in enumerate(zip(g["images"][()], g["ti_ms"][()], strict=True)):
                images.append(
                    make_image(
                        image,
                        series_index=5,
                        image_index=n,
                        slice_index=slice_index,
                        meta={"InversionTime": float(ti_ms)},
                    )
                )
    messages = session_messages("inlinecmr_t1", images, {"sequence": "molli"})
    return b"".join(map(encode_message, messages))


def export_basic_unet(workdir: Path, preprocessed: np.ndarray, onnx: bool) -> Path:
    """A 3-class MONAI BasicUNet with random weights (seed 0), exported as the default fp32
    artifact; with ``onnx`` also its ONNX fp32 file and the int8 QDQ file (calibrated on the
    preprocessed series), the candidates of ``deployment.onnx_backend``."""
    import torch
    import yaml
    from monai.networks.nets import BasicUNet

    from deployment.exporter import export_artifact
    from deployment.onnx_backend import onnx_paths, quantize_onnx_int8
    from quantification.aif_preprocessing import AIFPreprocessing

    conf = yaml.safe_load((ROOT / "conf/model/net/monai_basic_unet.yaml").read_text())
    conf = conf.get("net", conf)  # the config moved under "net:" (model package)
    torch.manual_seed(0)
    net = BasicUNet(
        spatial_dims=2,
        in_channels=preprocessed.shape[1],
        out_channels=3,
        features=tuple(conf["features"]),
        dropout=conf["dropout"],
    ).eval()
    path = workdir / "aif_basic_unet.ts"
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "monai_basic_unet (random)"}
    export_artifact(net, 3, torch.from_numpy(preprocessed[:2]), path, meta, onnx=onnx)
    if onnx:
        files = onnx_paths(path)
        quantize_onnx_int8(files["onnx-fp32"], preprocessed, files["onnx-int8"])
    return path


# ------------------------------------------------------------------------------ end to end


def end_to_end(
    model: Path, streams: list[bytes], config: str, runs: int, threads: int, backend: str
) -> dict:
    """A real server process and this one as the scanner: cold start and per-session times."""
    from benchmarks.server_latency import start_server
    from exports.mrd_client import exchange

    start = time.perf_counter()
    process, address = start_server(model, threads, backend)
    try:
        elapsed, processing, cold_ms = [], [], float("nan")
        for k in range(3 + runs):
            result = exchange(address, [streams[k % len(streams)]], timeout_s=60.0)
            if result.errors or not result.closed:
                raise RuntimeError(f"{config} session failed: {result.texts}")
            if k == 0:
                cold_ms = 1e3 * (time.perf_counter() - start)
            if k >= 3:
                elapsed.append(1e3 * result.elapsed_s)
                processing.append(result.documents()[0]["processing_ms"])
    finally:
        process.terminate()
        process.communicate(timeout=60)
    return {
        "cold start to first answered session": cold_ms,
        "end to end (client)": float(np.median(elapsed)),
        "end to end p90": float(np.percentile(elapsed, 90)),
        "server processing_ms": float(np.median(processing)),
    }


def print_table(title: str, samples: list[dict[str, np.ndarray]]) -> None:
    """Median and p90 wall ms and median thread-CPU ms per stage (the network's CPU column is
    the calling thread's share only), then per-session sums."""
    names = list(dict.fromkeys(name for s in samples for name in s))
    print(f"\n{title}\n{'stage':34s} {'median ms':>10s} {'p90 ms':>8s} {'CPU ms':>8s}")
    for name in names:
        values = np.array([s.get(name, np.zeros(2)) for s in samples])
        wall, cpu = values[:, 0], values[:, 1]
        print(
            f"{name:34s} {np.median(wall):10.2f} {np.percentile(wall, 90):8.2f} "
            f"{np.median(cpu):8.2f}"
        )
    total = np.array([sum(s.values()) for s in samples])
    own = np.array([sum(v for k, v in s.items() if k != "network") for s in samples])
    print(f"{'sum (median of per-session sums)':34s} {np.median(total[:, 0]):10.2f}")
    print(
        f"{'server own work (all but network)':34s} {np.median(own[:, 0]):10.2f} "
        f"{'':8s} {np.median(own[:, 1]):8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="AIF artifact (default: see module doc)")
    parser.add_argument("--runs", type=int, default=30, help="timed sessions per config")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--configs", nargs="+", default=["aif", "t1"], choices=["aif", "t1"])
    parser.add_argument("--end-to-end", action="store_true", help="also a real server process")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="with the default model: also ONNX fp32 and int8 files (the server picks the fastest)",
    )
    parser.add_argument("--backend", default="auto", help="AIF backend (serve --backend)")
    parser.add_argument("--random-basic-unet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.model is None:  # export here, measure in a fresh process (as the scanner's)
        with tempfile.TemporaryDirectory() as tmp:
            model = export_basic_unet(Path(tmp), aif_streams(Path(tmp))[1], args.onnx)
            again = [sys.executable, __file__, *sys.argv[1:], "--model", str(model)]
            raise SystemExit(subprocess.call([*again, "--random-basic-unet"]))

    import torch

    from deployment.cpu_info import host_cpu
    from exports.mrd_server import load_models

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"CPU: {host_cpu().describe()}; {os.cpu_count()} cores visible, torch threads "
        f"{args.threads}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    name = "MONAI BasicUNet, random weights, fp32" if args.random_basic_unet else args.model
    print(f"AIF artifact: {name}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        logging.basicConfig(level=logging.INFO, format="%(message)s")  # the backend choice
        models = load_models(args.model, None, args.backend, args.threads)
        print(f"AIF backend: {models.aif_backend}")
        cases = {
            "aif": ("inlinecmr_aif", aif_streams(workdir)[0], AIF_STAGES),
            "t1": ("inlinecmr_t1", [molli_stream(workdir)], T1_STAGES),
        }
        for key in args.configs:
            config, config_streams, stages = cases[key]
            samples = [
                in_own_thread(
                    session_stages, config_streams[k % len(config_streams)], config, models, stages
                )
                for k in range(3 + args.runs)
            ][3:]
            print_table(f"{config}: {args.runs} sessions, in process", samples)
            if args.end_to_end:
                figures = end_to_end(
                    args.model, config_streams, config, args.runs, args.threads, args.backend
                )
                for figure, value in figures.items():
                    print(f"{figure:34s} {value:10.1f}")
    print("(ms; AMD EPYC figures in docs/mrd_server.md name the machine's load when measured)")


if __name__ == "__main__":
    main()
