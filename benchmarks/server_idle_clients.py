"""Does an idle client stall the scanner? A real session's time with and without idle connections.

``python benchmarks/server_idle_clients.py [--model PATH] [--idle 20] [--runs 10] [--threads 2]``

``python -m exports serve`` runs in its own process (default settings: 2 session slots, 1 per
client address, 5 s first-message deadline); this process plays the scanner with one phantom AIF
series (uint16 frames). It times ``--runs`` sessions alone, then opens ``--idle`` connections
from the same address that send nothing and times ``--runs`` sessions again while they stay open
(sessions are started within the first-message deadline of the idle connections, which are
re-opened before each session). Goal: median with the idle connections <= median alone + 1 s.
Before the server took a session slot at accept, two idle connections held both slots for the
60 s idle timeout and the 20th connection found the listen queue full. Without ``--model`` the
AIF model is the random-weight BasicUNet of ``benchmarks/server_stages.py``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.server_latency import start_server  # noqa: E402
from benchmarks.server_stages import aif_streams, export_basic_unet  # noqa: E402


def session_ms(address: tuple[str, int], stream: bytes) -> float:
    from exports.mrd_client import exchange

    result = exchange(address, [stream], timeout_s=120.0)
    if result.errors or not result.closed or len(result.images) != 1:
        raise RuntimeError(f"session failed: {result.texts}")
    return 1e3 * result.elapsed_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="AIF artifact (default: random BasicUNet)")
    parser.add_argument("--idle", type=int, default=20, help="idle connections")
    parser.add_argument("--runs", type=int, default=10, help="timed sessions in each condition")
    parser.add_argument("--threads", type=int, default=2, help="server threads")
    args = parser.parse_args()

    from deployment.cpu_info import host_cpu

    load = os.getloadavg()
    print(f"CPU: {host_cpu().describe()}; load average {load[0]:.1f} / {load[1]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        streams, preprocessed = aif_streams(Path(tmp))
        model = args.model or export_basic_unet(Path(tmp), preprocessed, onnx=False)
        process, address = start_server(model, args.threads, "auto")
        try:
            for _ in range(3):
                session_ms(address, streams[0])  # warm-up
            alone = [session_ms(address, streams[0]) for _ in range(args.runs)]
            with_idle = []
            for _ in range(args.runs):
                with ExitStack() as stack:
                    for _ in range(args.idle):
                        stack.enter_context(socket.create_connection(address, timeout=10.0))
                    time.sleep(0.1)  # the server has accepted them
                    with_idle.append(session_ms(address, streams[0]))
        finally:
            process.terminate()
            process.communicate(timeout=60)
    a, b = float(np.median(alone)), float(np.median(with_idle))
    verdict = "met" if b <= a + 1000.0 else "missed"
    print(f"session alone: median {a:.1f} ms (max {max(alone):.1f}) over {args.runs}")
    print(f"with {args.idle} idle connections open: median {b:.1f} ms (max {max(with_idle):.1f})")
    print(f"goal: <= alone + 1000 ms: {verdict}")


if __name__ == "__main__":
    main()
