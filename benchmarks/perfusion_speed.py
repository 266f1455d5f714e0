"""Speed of the pixel-wise perfusion fit vs a per-pixel ``scipy.optimize.curve_fit`` loop.

One phantom series of 3 slices x 192 x 111 px x 60 frames in gadolinium units
(:func:`datamodules.synthetic.perfusion_phantom.simulate_case`: myocardium, low-flow body, LV
blood pool and air; Gaussian noise 0.02 mmol/L) is mapped whole by
:func:`quantification.perfusion_fit.fit_perfusion` (``--model``, timed ``--repeats`` times).
A random sample of ``--sample`` of the fitted pixels is fitted by a ``curve_fit`` loop: the same
model and tables (:func:`quantification.perfusion_models.model_curves` for one pixel, analytic
Jacobian, trust-region reflective with the same bounds), started from a typical parameter set,
as one would write it by hand; the loop's time is scaled to the number of pixels the vectorised
fit fitted. Wall time and CPU time (``time.process_time``: all threads of the process) are
reported; on a shared machine the CPU time is the steadier of the two.

Usage::

    .venv/bin/python benchmarks/perfusion_speed.py [--model bte] [--sample 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.synthetic.perfusion_phantom import simulate_case  # noqa: E402
from quantification.perfusion_fit import FIT_OK, fit_perfusion  # noqa: E402
from quantification.perfusion_models import (  # noqa: E402
    MODELS,
    aif_tables,
    model_curves,
    perfusion_model,
)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def curve_fit_loop(model: str, aif: np.ndarray, times: np.ndarray, curves: np.ndarray) -> None:
    """Fit each curve on its own with ``curve_fit`` (the per-pixel baseline)."""
    tables = aif_tables(aif, times, fermi=model == "fermi")
    spec = perfusion_model(model)
    start = {"bte": [0.02, 0.01, 3.0, np.log(0.05), 1.0],
             "2cxm": [0.01, 0.01, np.log(0.5), np.log(0.02), 1.0],
             "fermi": [0.02, 3.0, np.log(1.0), 1.0]}[model]  # fmt: skip
    lower = np.concatenate([np.zeros(spec.n_amplitudes), spec.lower])
    upper = np.concatenate([np.ones(spec.n_amplitudes), spec.upper])

    def f(_t: np.ndarray, *p: float) -> np.ndarray:
        return model_curves(model, tables, np.array([p]), times, jacobian=False)[0][0]

    def jac(_t: np.ndarray, *p: float) -> np.ndarray:
        return model_curves(model, tables, np.array([p]), times)[1][0].T

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for y in curves:
            try:
                curve_fit(f, times, y, p0=start, bounds=(lower, upper), jac=jac, maxfev=2000)
            except RuntimeError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="bte")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    case = simulate_case(rng, n_slices=3, shape=(192, 111), n_frames=60, stress=True)
    images = case.perfusion_gd.transpose(0, 2, 3, 1)  # [S, H, W, T]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; load average "
          f"{os.getloadavg()[0]:.1f} (1 min) at start")  # fmt: skip
    print(f"series: {images.shape[:3]} px x {images.shape[3]} frames, model {args.model}")
    wall, cpu = [], []
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fit = fit_perfusion(case.aif_gd, images, case.times_s, model=args.model)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    fitted = np.argwhere(fit.failure == FIT_OK)
    print(f"  vectorised: {np.min(wall):.2f} s wall best, {np.median(wall):.2f} s median, "
          f"{np.median(cpu):.2f} s CPU; {len(fitted)} of {fit.failure.size} pixels fitted "
          "(the rest: air, not enhancing)")  # fmt: skip
    sample = fitted[rng.choice(len(fitted), min(args.sample, len(fitted)), replace=False)]
    curves = images[tuple(sample.T)].astype(np.float64)
    start, start_cpu = time.perf_counter(), time.process_time()
    curve_fit_loop(args.model, case.aif_gd, case.times_s, curves)
    scale = len(fitted) / len(curves)
    loop_wall = (time.perf_counter() - start) * scale
    loop_cpu = (time.process_time() - start_cpu) * scale
    print(f"  curve_fit loop: {loop_wall:.1f} s wall, {loop_cpu:.1f} s CPU (scaled from "
          f"{len(curves)} pixels to {len(fitted)})")  # fmt: skip
    print(
        f"  speed-up: {loop_wall / np.median(wall):.0f}x wall (median), "
        f"{loop_cpu / np.median(cpu):.0f}x CPU; load average {os.getloadavg()[0]:.1f} at end"
    )


if __name__ == "__main__":
    main()
