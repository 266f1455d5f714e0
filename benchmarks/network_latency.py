"""Scanner-side CPU latency of exported artifacts, one row per network (docs/results.md).

``python benchmarks/network_latency.py ARTIFACT.ts [ARTIFACT.ts ...] [--threads 2] [--runs 50]``

Each artifact runs in a fresh Python process in which Lightning, Hydra, W&B and MONAI cannot be
imported (as on the scanner): ``import torch`` and the runtime, cold load with
``exports.load_artifact`` (sha256 verified), the first inference, then the median and 90th
percentile of ``--runs`` inferences of one input of the artifact's own shape ([1, 64, 64, 48] for
an AIF series, [1, 1, 256, 256] for a myocardium image) after 5 warm-up calls. The table gives
the model name, its parameter count and the test metrics stored in the artifact beside the
timings, with the CPU named first. E.g. after ``python train.py -m experiment=aif_net_compare``:
``python benchmarks/network_latency.py <sweep dir>/*/export/aif_*3cs.ts``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inline_latency import run_fresh_process  # noqa: E402
from deployment.artifact import read_metadata  # noqa: E402
from deployment.cpu_info import host_cpu  # noqa: E402

SCANNER_PROCESS = """
import importlib.abc, json, sys, time

class Block(importlib.abc.MetaPathFinder):  # the scanner has none of these
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pytorch_lightning", "lightning", "hydra", "wandb", "monai"}:
            raise ImportError(f"{name} is not available on the scanner")

sys.meta_path.insert(0, Block())
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
torch.set_num_interop_threads(1)
from exports import load_artifact
t1 = time.perf_counter()
artifact = load_artifact(sys.argv[1])
t2 = time.perf_counter()
import numpy as np
shape = [1, *artifact.metadata["input_shape"][1:]]
x = np.random.default_rng(0).random(shape, dtype=np.float32)
artifact.probabilities(x)
t3 = time.perf_counter()
for _ in range(5):
    artifact.probabilities(x)
times = []
for _ in range(int(sys.argv[3])):
    s = time.perf_counter()
    artifact.probabilities(x)
    times.append(time.perf_counter() - s)
print(json.dumps({"import_ms": 1e3 * (t1 - t0), "load_ms": 1e3 * (t2 - t1),
    "first_ms": 1e3 * (t3 - t2), "median_ms": 1e3 * float(np.median(times)),
    "p90_ms": 1e3 * float(np.percentile(times, 90))}))
"""

METRICS = ("test/lv_dice", "test/lv_hd95_px", "test/dsc", "test/myo_hd95_px")
"""Test metrics shown when an artifact has them."""


def measure(path: Path, threads: int, runs: int) -> dict[str, float]:
    """Timings (ms) of one artifact in a fresh, scanner-like process."""
    args = [str(path), str(threads), str(runs)]
    return run_fresh_process(SCANNER_PROCESS, args, threads, label=str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifacts", nargs="+", type=Path, help="exported .ts files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(host_cpu().describe(), f"| {args.threads} threads, median of {args.runs} runs")
    header = ["artifact", "model", "parameters (M)", *METRICS, "load (ms)", "1st (ms)",
              "median (ms)", "p90 (ms)"]  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for path in args.artifacts:
        meta = read_metadata(path)
        tests = meta.get("test_metrics") or {}
        n = meta.get("n_parameters")
        t = measure(path, args.threads, args.runs)
        cells = [
            path.name,
            str(meta.get("model")),
            "–" if n is None else f"{n / 1e6:.2f}",
            *("–" if tests.get(m) is None else f"{tests[m]:.3f}" for m in METRICS),
            *(f"{t[k]:.1f}" for k in ("load_ms", "first_ms", "median_ms", "p90_ms")),
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
