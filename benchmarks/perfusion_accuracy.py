"""Accuracy of MBF across 0.5-5 ml/min/g: bias, pixel-wise SD and the Cramér-Rao bound.

For each MBF of ``MBF_ML_MIN_G`` (PS 1.2 ml/min/g, Vb 0.10 ml/g, Visf 0.20 ml/g, delay 1.0 s),
``--n`` noisy copies of the tissue curve of the phantom's forward model
(:func:`datamodules.synthetic.perfusion_phantom.tissue_curves`: the AATH response convolved
numerically on a 0.01 s grid, not the fitting code) get Gaussian noise of ``--noise`` mmol/L
(60 frames at 75 beats/min, AIF peak 5 mmol/L). All curves are fitted at once by
:func:`quantification.perfusion_fit.fit_perfusion` (model ``bte``, all five parameters free,
the delay per pixel).

Reported per MBF: mean and median bias (%), the SD of the estimates, a robust SD (1.4826 x the
median absolute deviation), the Cramér-Rao bound of the model (the square root of the MBF
element of the inverse Fisher information ``J^T J / sigma^2``, with ``J`` the derivatives of
the forward model with respect to MBF, PS, Vb, Visf and delay by central differences), their
ratio, and the share of failed and at-bound pixels. ``--region`` also fits the mean of that many
pixels (noise / sqrt(n)), as the per-segment values are computed.

Usage::

    .venv/bin/python benchmarks/perfusion_accuracy.py [--noise 0.02] [--n 400] [--region 40]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.perfusion_speed import cpu_name  # noqa: E402
from datamodules.synthetic.perfusion_phantom import (  # noqa: E402
    bolus_aif,
    frame_times,
    tissue_curves,
)
from quantification.perfusion_fit import FIT_OK, fit_perfusion  # noqa: E402

MBF_ML_MIN_G = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)
OTHERS = (1.2, 0.10, 0.20, 1.0)  # PS ml/min/g, Vb ml/g, Visf ml/g, delay s


def cramer_rao_sd(aif: np.ndarray, times: np.ndarray, truth: np.ndarray, noise: float) -> float:
    """Cramér-Rao bound (SD, ml/min/g) of MBF for white Gaussian noise of SD ``noise``."""
    steps = np.array([1e-3, 1e-3, 1e-4, 1e-4, 0.0]) * np.abs(truth)
    steps[4] = 0.05  # the forward model shifts by whole 0.01 s steps
    columns = []
    for k, h in enumerate(steps):
        up, down = truth.copy(), truth.copy()
        up[k] += h
        down[k] -= h
        columns.append((tissue_curves(aif, times, up[None])[0]
                        - tissue_curves(aif, times, down[None])[0]) / (2 * h))  # fmt: skip
    jac = np.stack(columns, axis=1)
    return float(np.sqrt(np.linalg.inv(jac.T @ jac / noise**2)[0, 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float, default=0.02, help="Gd noise SD, mmol/L")
    parser.add_argument("--n", type=int, default=400, help="noisy curves per MBF")
    parser.add_argument("--region", type=int, default=40, help="pixels per region mean")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    times = frame_times(rng, 60, 75.0)
    aif = bolus_aif(times, arrival_s=8.0, peak_mmol_l=5.0, width_s=6.0)
    truths = np.array([(mbf, *OTHERS) for mbf in MBF_ML_MIN_G])
    clean = tissue_curves(aif, times, truths)
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.1f}")
    print(f"noise {args.noise} mmol/L per frame; myocardial peak {clean.max(1).min():.2f}-"
          f"{clean.max(1).max():.2f} mmol/L; {args.n} curves per MBF")  # fmt: skip
    for label, sigma in (("pixel", args.noise), (f"region of {args.region}",
                                                  args.noise / np.sqrt(args.region))):  # fmt: skip
        noisy = clean[:, None, :] + rng.normal(0.0, sigma, (len(truths), args.n, times.size))
        fit = fit_perfusion(aif, noisy, times, model="bte")
        print(f"\n{label}: noise {sigma:.4f} mmol/L")
        print("  MBF   mean bias  median bias   SD     robust SD  CRB    SD/CRB  rSD/CRB  "
              "failed  at bound")  # fmt: skip
        for i, truth in enumerate(truths):
            ok = fit.failure[i] == FIT_OK
            values = fit.mbf_ml_min_g[i][ok].astype(np.float64)
            mad_sd = 1.4826 * np.median(np.abs(values - np.median(values)))
            crb = cramer_rao_sd(aif, times, truth, sigma)
            print(f"  {truth[0]:4.2f}  {100 * (values.mean() / truth[0] - 1):+7.2f} %  "
                  f"{100 * (np.median(values) / truth[0] - 1):+7.2f} %  {values.std():6.3f}  "
                  f"{mad_sd:6.3f}     {crb:6.3f}  {values.std() / crb:5.2f}   "
                  f"{mad_sd / crb:5.2f}    {100 * (1 - ok.mean()):4.1f} %  "
                  f"{100 * fit.at_bound[i].mean():4.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
