"""End-to-end latency of the inline MRD server for one AIF series: connect -> reply received.

``python benchmarks/server_latency.py [--model PATH ...] [--runs 30] [--threads 2]``

For each artifact, ``python -m exports serve --port 0 --aif-model PATH --threads N`` runs in its
own process (the model loaded once, sha256 verified, warmed up, resident), and this process
plays the scanner with :func:`exports.mrd_client.exchange`: it connects, sends the config
``inlinecmr_aif``, the header, the JSON parameters and the frames of one phantom AIF series as
uint16 MRD images (2.5 ms time stamps; encoded beforehand, as the scanner's own work is not the
server's latency), then a close, and waits for the label image, the JSON figures and the
server's close. The time from before ``connect`` to the server's close is one
sample; 3 warm-up sessions, then ``--runs`` sessions cycling through 8 phantom series
(73-120 frames, 64 x 44-60 pixels). Also printed: the server's own processing time of each
session (``processing_ms`` of its JSON: frames to arrays, preprocessing, model, threshold rule,
AIF, features, outlines) and its start-up (load + verify + warm-up, from its log).

Without ``--model`` the paper-size 3CS ResUNet (``ResUNet()`` defaults, 6.5 M parameters) is
exported with random weights (latency does not depend on the weights) twice with
``deployment.exporter.export_artifact``: fp32 (the default export) and int8 (static quantisation
calibrated on 8 phantom series). Published Gadgetron figures (2x Xeon Gold 6152): model load
340 ms + inference 180 ms per series, the load repeated for every series. Goal: <= 100 ms end to
end for fp32 and <= 60 ms for int8. Client and server share this machine's cores, so the figures
include the client's sending (~0.5 MB) and decoding of the reply.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUBLISHED_LOAD_MS, PUBLISHED_INFERENCE_MS = 340.0, 180.0
GOALS_MS = {"fp32": 100.0, "int8": 60.0}
N_SERIES = 8


def phantom_series(workdir: Path) -> tuple[list[tuple[list, int]], np.ndarray]:
    """(MRD frames, n_pd_frames) of N_SERIES phantom scans, and their preprocessed series."""
    import h5py

    from datamodules.synthetic.aif_phantom import write_aif_phantoms
    from formats.mrd.images import TICK_S, make_image
    from quantification.aif_preprocessing import preprocess_aif_series

    path = write_aif_phantoms(workdir / "cases.h5", n_patients=N_SERIES // 2, seed=11)
    sessions, preprocessed = [], []
    with h5py.File(path) as h5:
        for group in h5.values():
            series, times_s = group["series"][()], group["times_s"][()]
            n_pd = int(group.attrs["n_pd_frames"])
            ticks = np.round((times_s - times_s[0]) / TICK_S).astype(int) + 13_000_000
            scale = 4000.0 / float(series.max())
            frames = [
                make_image(
                    np.round(f.T * scale).astype(np.uint16),
                    series_index=1,
                    image_index=t,
                    acquisition_time_stamp=int(ticks[t]),
                )
                for t, f in enumerate(series)
            ]
            sessions.append((frames, n_pd))
            preprocessed.append(preprocess_aif_series(series, times_s, n_pd).image)
    return sessions, np.stack(preprocessed)


def export_paper_models(workdir: Path, preprocessed: np.ndarray) -> dict[str, Path]:
    """fp32 and int8 artifacts of the default 3CS ResUNet with random weights."""
    import torch

    from deployment.exporter import export_artifact
    from lightning_modules.networks.resunet import ResUNet
    from quantification.aif_preprocessing import AIFPreprocessing

    torch.manual_seed(0)
    net = ResUNet()
    with torch.no_grad():  # batch-norm statistics of real inputs
        net.train()(torch.from_numpy(preprocessed))
    net.eval()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"model: ResUNet() defaults, {n_params / 1e6:.2f} M parameters, random weights")
    batch = torch.from_numpy(preprocessed[:2])
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "resunet3cs"}
    files = {"fp32": workdir / "aif_fp32.ts", "int8": workdir / "aif_int8.ts"}
    export_artifact(net, 3, batch, files["fp32"], meta)
    export_artifact(
        net,
        3,
        batch,
        files["int8"],
        meta,
        precision="int8",
        calibration=torch.from_numpy(preprocessed),
    )
    return files


def start_server(
    model: Path, threads: int, backend: str = "auto"
) -> tuple[subprocess.Popen, tuple[str, int]]:
    """``python -m exports serve`` on a free port of 127.0.0.1: the process and its address."""
    command = [sys.executable, "-m", "exports", "serve", "--port", "0", "--threads", str(threads)]
    command += ["--aif-model", str(model), "--backend", backend]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = process.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("listening on"):
        process.kill()
        raise RuntimeError(f"server did not start: {line}{process.stderr.read()}")  # type: ignore[union-attr]
    return process, ("127.0.0.1", int(line.rsplit(":", 1)[1]))


def network_alone_ms(model: Path, preprocessed: np.ndarray, threads: int) -> float:
    """Median of 20 inferences of one preprocessed series by the artifact, in this process (the
    network's share of a session), after 3 warm-up calls."""
    import torch

    from deployment.artifact import load_artifact

    torch.set_num_threads(threads)
    artifact = load_artifact(model)
    times = []
    for k in range(23):
        start = time.perf_counter()
        artifact.probabilities(preprocessed[k % len(preprocessed)])
        times.append(1e3 * (time.perf_counter() - start))
    return float(np.median(times[3:]))


def measure(
    model: Path, sessions: list, preprocessed: np.ndarray, runs: int, threads: int
) -> dict[str, float]:
    """Latency figures of one artifact (ms)."""
    from exports.mrd_client import exchange, session_messages
    from formats.mrd.stream import encode_message

    network_ms = network_alone_ms(model, preprocessed, threads)

    streams = [  # encoded beforehand: the scanner's own work is not the server's latency
        b"".join(
            encode_message(m)
            for m in session_messages("inlinecmr_aif", frames, {"n_pd_frames": n_pd})
        )
        for frames, n_pd in sessions
    ]
    process, address = start_server(model, threads)
    elapsed, processing = [], []
    try:
        for k in range(3 + runs):
            result = exchange(address, [streams[k % len(streams)]], timeout_s=60.0)
            if result.errors or not result.closed or len(result.images) != 1:
                raise RuntimeError(f"session failed: {result.texts}")
            if k >= 3:
                elapsed.append(1e3 * result.elapsed_s)
                processing.append(result.documents()[0]["processing_ms"])
    finally:
        process.terminate()
        _, log = process.communicate(timeout=60)
    loaded = re.search(r"models loaded in (\d+) ms", log)
    return {
        "startup_ms": float(loaded.group(1)) if loaded else float("nan"),
        "median_ms": float(np.median(elapsed)),
        "p90_ms": float(np.percentile(elapsed, 90)),
        "min_ms": float(np.min(elapsed)),
        "processing_ms": float(np.median(processing)),
        "network_ms": network_ms,
        "frames": float(np.mean([len(s[0]) for s in sessions])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        nargs="+",
        help="AIF artifacts to measure (default: fp32 and int8 exports of the "
        "paper-size ResUNet with random weights)",
    )
    parser.add_argument("--runs", type=int, default=30, help="timed sessions (>= 20)")
    parser.add_argument("--threads", type=int, default=2, help="server torch threads")
    args = parser.parse_args()

    from deployment.cpu_info import host_cpu

    print(f"CPU: {host_cpu().describe()}; {os.cpu_count()} cores visible")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        sessions, preprocessed = phantom_series(workdir)
        models = (
            {p.name: p for p in args.model}
            if args.model
            else export_paper_models(workdir, preprocessed)
        )
        print(
            f"prepared in {time.perf_counter() - start:.0f} s; {len(sessions)} phantom series, "
            f"{args.runs} timed sessions each after 3 warm-up, server threads {args.threads}"
        )
        results = {
            name: measure(path, sessions, preprocessed, args.runs, args.threads)
            for name, path in models.items()
        }
    print(
        f"\n{'':26s} {'start-up':>9s} {'end-to-end':>11s} {'p90':>7s} {'min':>7s} "
        f"{'server':>7s} {'network':>8s} {'goal':>6s}"
    )
    print(
        f"{'published (Gadgetron)':26s} {PUBLISHED_LOAD_MS:9.0f} "
        f"{PUBLISHED_LOAD_MS + PUBLISHED_INFERENCE_MS:11.0f}   (load {PUBLISHED_LOAD_MS:.0f} + "
        f"inference {PUBLISHED_INFERENCE_MS:.0f} per series)"
    )
    for name, r in results.items():
        goal = GOALS_MS.get(name)
        verdict = "" if goal is None else ("met" if r["median_ms"] <= goal else "missed")
        print(
            f"{'inline server, ' + name:26s} {r['startup_ms']:9.0f} {r['median_ms']:11.1f} "
            f"{r['p90_ms']:7.1f} {r['min_ms']:7.1f} {r['processing_ms']:7.1f} "
            f"{r['network_ms']:8.1f} "
            f"{'' if goal is None else f'{goal:.0f}':>6s} {verdict}"
        )
    print(
        "(ms; end-to-end = connect -> label image, JSON and close received, median; server = "
        "its processing per session, median; network = the artifact alone on one preprocessed "
        "series, in the client process, median; start-up = model load + sha256 + warm-up, once)"
    )


if __name__ == "__main__":
    main()
