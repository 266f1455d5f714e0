"""A second, deliberately different AIF phantom generator, for out-of-distribution evaluation only.

Written without the training generator's code (``datamodules/synthetic/aif_phantom.py``) and
with other choices at every step, so that a model that learned our phantoms rather than the
physics fails here:

- geometry: simple shapes on a 3x supersampled grid, block-averaged: a uniform body ellipse, two
  lung ellipses, an elliptical LV blood pool of 50-175 px inside a myocardial ring of 2-3 px, an
  elliptical RV pool beside it (not a crescent), no liver, no aorta, no texture, no motion;
- kinetics from a maintained tracer-kinetic library (``dcmri``): the RV carries Parker's
  population arterial input function (Parker et al. 2006) as the venous bolus, the LV is the RV
  through the lungs modelled as plug flow + a compartment (``dcmri.flux_pfcomp``), myocardium
  and muscle follow two-compartment exchange and Tofts-like models (``dcmri.conc_tissue``);
- signal: a saturation-prepared spoiled gradient echo with ``dcmri.signal_spgr`` (saturation
  delay 150-350 ms, so the pre-contrast baseline is about a fifth of the blood peak), 1-3
  proton-density frames without the preparation; magnitude of signal + Gaussian noise;
- timing: 55-90 frames, one per RR interval of 0.6-1.1 s with 5 % jitter.

Its output is a file in the AIF HDF5 contract (``formats.aif_contract.write_aif_case``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dcmri
import h5py
import numpy as np

from formats.aif_contract import write_aif_case
from formats.atomic_file import atomic_write

RO, SUPER = 64, 3
R1_PER_M_S = 4500.0  # gadolinium relaxivity, 1/(M s)
T1_S = {"blood": 1.55, "myocardium": 1.0, "muscle": 0.9, "lung": 1.2, "body": 0.8}
DENSITY = {"blood": 1.0, "myocardium": 0.8, "muscle": 0.75, "lung": 0.2, "body": 0.7}


def _inside(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float):
    c, s = np.cos(angle), np.sin(angle)
    p, q = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    return (p / a) ** 2 + (q / b) ** 2 <= 1.0


def _tissue_fractions(rng: np.random.Generator, e1: int) -> tuple[dict[str, np.ndarray], dict]:
    """Area fractions [RO, E1] of each tissue (3x3 supersampled, block-averaged), and geometry."""
    y, x = np.mgrid[0 : e1 * SUPER, 0 : RO * SUPER].astype(np.float64) / SUPER  # (E1, RO) grid
    x, y = x.T - RO / 2, y.T - e1 / 2  # [RO * 3, E1 * 3], pixels from the centre
    angle = rng.uniform(0, 2 * np.pi)
    body = _inside(x, y, rng.normal(0, 1), rng.normal(0, 1), rng.uniform(26, 31),
                   rng.uniform(18, 22), rng.uniform(-0.3, 0.3))  # fmt: skip
    lv_area = rng.uniform(50, 175)
    ecc = rng.uniform(0.75, 1.0)
    a_lv = np.sqrt(lv_area / np.pi / ecc)
    b_lv = a_lv * ecc
    wall = rng.uniform(2.0, 3.0)
    centre = rng.uniform(-6, 6, 2)
    lv = _inside(x, y, *centre, a_lv, b_lv, angle)
    ring = _inside(x, y, *centre, a_lv + wall, b_lv + wall, angle) & ~lv
    gap = a_lv + wall + rng.uniform(1.0, 2.5)
    rv_axes = (rng.uniform(0.5, 0.8) * a_lv, rng.uniform(1.0, 1.5) * a_lv)
    for side in rng.permutation(8) * np.pi / 4:  # the first side where the RV lies in the body
        rv_centre = centre + (gap + rv_axes[0]) * np.array([np.cos(side), np.sin(side)])
        rv = _inside(x, y, *rv_centre, *rv_axes, side) & ~ring & ~lv
        if (rv & body).sum() >= 0.95 * rv.sum() > 0:
            break
    lungs = np.zeros_like(lv)
    for side in (-1, 1):
        lungs |= _inside(x, y, side * rng.uniform(13, 17), rng.uniform(-3, 3), rng.uniform(6, 9),
                         rng.uniform(10, 14), rng.uniform(-0.4, 0.4))  # fmt: skip
    lungs &= body & ~lv & ~ring & ~rv
    masks = {"lv": lv & body, "rv": rv & body, "myocardium": ring & body, "lung": lungs}
    masks["body"] = body & ~(lv | rv | ring | lungs)
    frac = {k: m.reshape(RO, SUPER, e1, SUPER).mean(axis=(1, 3)) for k, m in masks.items()}
    return frac, {"lv_area_px": float(lv_area), "myo_wall_px": float(wall)}


def simulate_independent_scan(rng: np.random.Generator) -> dict:
    """One scan: ``series`` float32 [T, RO, E1], ``times_s``, ``mask`` (0/1/2), ``n_pd_frames``,
    and provenance attrs."""
    e1 = int(rng.choice([48, 52, 56, 60, 64]))
    frac, geometry = _tissue_fractions(rng, e1)
    n_pd, n_t = int(rng.integers(1, 4)), int(rng.integers(55, 91))
    rr = rng.uniform(0.6, 1.1)
    times = np.concatenate([[0.0], np.cumsum(rr * (1 + 0.05 * rng.standard_normal(n_t - 1)))])
    t_fine = np.arange(0.0, times[-1] + 30, 0.1)
    bat = times[n_pd] + rng.uniform(4, 12)
    rv_c = dcmri.aif_parker(t_fine, BAT=bat) * rng.uniform(0.6, 1.4)  # M
    lv_c = dcmri.flux_pfcomp(rv_c, rng.uniform(3, 7), rng.uniform(0.3, 0.7), t=t_fine)
    myo = {
        "vb": rng.uniform(0.08, 0.12),
        "Fb": rng.uniform(0.008, 0.02),
        "PS": rng.uniform(0.002, 0.006),
    }
    myo_c = dcmri.conc_tissue(lv_c, t=t_fine, kinetics="2CX", H=0.45, vi=0.2, **myo)
    muscle_c = dcmri.conc_tissue(lv_c, t=t_fine, kinetics="WV", H=0.45, vi=0.15,
                                 Ktrans=rng.uniform(0.0005, 0.002))  # fmt: skip
    conc = {"lv": lv_c, "rv": rv_c, "myocardium": myo_c, "lung": 0.1 * rv_c, "body": muscle_c}
    tp_s, fa = rng.uniform(0.15, 0.35), rng.uniform(10, 15)
    series = np.zeros((n_t, RO, e1))
    for tissue, c in conc.items():
        kind = "blood" if tissue in ("lv", "rv") else tissue
        r1 = 1 / T1_S[kind] + R1_PER_M_S * np.interp(times, t_fine, c)
        sr = dcmri.signal_spgr(DENSITY[kind], r1, T=0.03, TR=0.0025, FA=fa, TP=tp_s, n0=0)
        pd = dcmri.signal_spgr(DENSITY[kind], r1[:n_pd], T=0.03, TR=0.0025, FA=fa, TP=0.0, n0=1)
        series += np.concatenate([pd, sr[n_pd:]])[:, None, None] * frac[tissue][None]
    peak = series[n_pd:].max()
    sigma = peak / rng.uniform(20, 80)
    series = np.abs(series + rng.normal(0, sigma, series.shape))
    mask = np.zeros((RO, e1), np.uint8)
    mask[frac["rv"] >= 0.5], mask[frac["lv"] >= 0.5] = 2, 1
    attrs = {"site": "independent", "scanner": "dcmri_phantom", "saturation_delay_s": tp_s,
             "flip_angle_deg": fa, **geometry}  # fmt: skip
    return {"series": series.astype(np.float32), "times_s": times, "mask": mask,
            "n_pd_frames": n_pd, "attrs": attrs}  # fmt: skip


def write_independent_phantoms(path: str | os.PathLike, n_cases: int, seed: int) -> Path:
    """Write ``n_cases`` scans (one patient each) in the AIF contract, atomically."""
    path = Path(path)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["generator"] = __name__
        for i in range(n_cases):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            scan = simulate_independent_scan(rng)
            write_aif_case(h5, f"I{i:04d}", scan["series"], scan["times_s"], scan["n_pd_frames"],
                           f"I{i:04d}", mask=scan["mask"], attrs=scan["attrs"])  # fmt: skip
    return path
