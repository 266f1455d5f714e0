"""What the scanner-side runtime costs to install and start, against the full training install.

    python benchmarks/runtime_install.py --create /tmp/runtime-venv    # pip install . (runtime)
    python benchmarks/runtime_install.py --venv /tmp/runtime-venv --venv .venv

For each virtual environment: the installed distributions (count, and whether the training stack
is among them), the size of its ``site-packages`` on disk, and the time a fresh process takes to
import the AIF runtime (``exports.aif_pipeline`` and ``deployment.artifact``: what the MRD server
and ``inline-cmr aif`` load before the first case; median of ``--repeats`` runs). The CPU is
printed first: import times depend on it and on the disk cache.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployment.cpu_info import host_cpu  # noqa: E402

TRAINING_STACK = ("pytorch_lightning", "hydra_core", "wandb", "monai", "optuna", "submitit")
IMPORT_RUNTIME = "import exports.aif_pipeline, deployment.artifact"


def create_runtime_venv(target: Path) -> None:
    """A fresh venv with only the runtime: ``pip install -c constraints.txt <repo>``."""
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "-c", str(ROOT / "constraints.txt"), str(ROOT)],
                   check=True)  # fmt: skip


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def distributions(folder: Path) -> list[str]:
    return sorted(p.name.split("-")[0].lower() for p in folder.glob("*.dist-info"))


def import_seconds(venv: Path, repeats: int) -> float:
    """Median wall time of a fresh ``python -c IMPORT_RUNTIME`` outside the repository."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([str(venv / "bin" / "python"), "-c", IMPORT_RUNTIME], check=True,
                       cwd="/", capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--create", type=Path, help="make a runtime-only venv here first")
    parser.add_argument("--venv", type=Path, action="append", default=[], help="venv to measure")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.create:
        create_runtime_venv(args.create)
        args.venv.insert(0, args.create)
    print(f"CPU: {host_cpu().describe()}")
    print("| venv | distributions | training stack | site-packages MB | import AIF runtime s |")
    print("|---|---|---|---|---|")
    for venv in (v.absolute() for v in args.venv):
        folder = site_packages(venv)
        names = distributions(folder)
        training = [n for n in TRAINING_STACK if n in names]
        seconds = import_seconds(venv, args.repeats)
        print(f"| {venv} | {len(names)} | {', '.join(training) or 'none'} | "
              f"{size_mb(folder):.0f} | {seconds:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
