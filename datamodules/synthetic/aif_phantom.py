"""Physics-based synthetic AIF perfusion phantoms: the embedded default AIF data set.

A phantom mimics the low-resolution AIF module of the Siemens dual-sequence perfusion scan
(most basal short-axis slice): 64 (RO) x E1 pixels of 5.625 mm (FOV 360 mm along RO), E1 in
{44, 48, 52, 56, 60} (mostly 48-56), one frame per heartbeat, proton-density (PD) frames first.
Lengths below are in pixels, times in seconds, concentrations in mM.

Anatomy (drawn per patient, jittered slightly per scan): body ellipse (semi-axes 23-33 x 16-23)
with a 0.6-2 px subcutaneous fat rim; two lungs; liver (80 % of patients); descending aorta
(80 %, radius 1-1.7); LV blood pool (ellipse of 28-62 px, axis ratio 0.75-1, radial harmonics
m = 2..4 up to 6 %); LV myocardium 1.5-2.5 px thick; RV blood pool = an ellipse on the anterior,
patient-right side of the LV minus the LV, i.e. a crescent, with a 0.6 px free wall. The layout
is rotated (+-29 deg), shifted (+-3 px) and mirrored at random. Tissue fractions are box
integrals over a 4x4 supersampled label map (pixel integration; half the scans use a 1.5 px
box, mimicking the k-space filter). Muscle and liver get a smooth +-10-30 % texture.

Kinetics (time from the bolus onset): RV = gamma variate (alpha 1.5-3.5, time to peak
2-4.5 s) + recirculation (the bolus through a systemic delay of 8-14 s and two compartments of
1.5-3 s, peak 8-20 % of the first pass) + steady state (running integral of the recirculation,
8-18 %). LV = RV through the lungs (delay 2.5-6 s, two compartments of 0.4-1.2 s), so the LV is a
delayed, dispersed RV. Aorta = LV delayed 0.3-1 s. Myocardium = LV through one compartment
(2-10 s) peaking at 7-22 % of the LV (more at stress); lung follows the RV (3-8 %); liver,
muscle and fat barely enhance (0-12 %). LV peak 3-9 mM; 6 % weak boluses (0.8-2 mM); 8 % late
boluses (LV peak 25-31 s after the first SR frame); otherwise the onset is 5-14 s after it.

Signal: SR frames S = g * rho * (1 - exp(-TS * (R1_0 + r1 * C))), r1 4-5 /mM/s, per-tissue rho
and R1_0 = 1/T1 at 1.5 T or 3 T, TS = TD + time to the k-space centre = 4.2 ms + E1/3/2 * 2.45 ms
(about 24 ms; interleaved R = 3, linear order), so blood saturates visibly at peak. PD frames
(0-3, mostly 2-3): S = g * rho * pd_scale (0.8-1), no contrast dependence. Then a smooth coil
shading (2-4 broad Gaussian elements on the body surface, mean 1 in the body), identical in all
frames, and Rician noise with an SNR of PD blood of 25-250 (log-uniform).

Motion (residual after MOCO): rigid translation of the anatomy, breathing sinusoid (period 3-6 s,
amplitude 0-1 px, random direction, phase random walk) plus 0.12 px jitter, clipped to 1.5 px
and quantised to 1/4 px; the label is at the reference (zero) position. Frame times: one per RR
(rest 50-85 bpm, stress +10-30 bpm, at most 110), 3 % beat jitter, respiratory sinus arrhythmia,
missed triggers (2 RR gaps) in half the scans; T = 60-100 frames (75 %) or 100-170.

Files: per patient one anatomy, scans ``stress`` then ``rest`` (different bolus, heart rate,
motion, noise, slight anatomy jitter). Case attrs hold the drawn parameters and ground truth
(times on the ``times_s`` axis: ``rv_foot_s``, ``lv_foot_s`` = first crossing of 5 % of the
peak, ``rv_peak_s``, ``lv_peak_s``; ``bolus`` normal / late / weak; ``snr_pd``, ``snr_lv_peak``...).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

from datamodules.synthetic.rician_noise import add_rician_noise
from formats.atomic_file import atomic_write

RO = 64
PIXEL_MM = 360.0 / RO
SS = 4  # sub-samples per pixel and axis
MARGIN = 2  # px of anatomy evaluated outside the FOV (room for motion and the wider box)
MAX_SHIFT = 6  # motion clip in sub-samples (1.5 px)
TD_MS, TR_MS, ACCEL = 4.2, 2.45, 3
DT = 0.1  # s, grid of the kinetic model
E1_CHOICES, E1_P = (44, 48, 52, 56, 60), (0.05, 0.4, 0.2, 0.3, 0.05)
TISSUES = ("muscle", "fat", "lung", "liver", "aorta", "myo", "rv", "lv")  # label = index + 1
T1_MS = {
    1.5: (900, 260, 1200, 580, 1550, 950, 1550, 1550),
    3.0: (1420, 380, 1300, 810, 1930, 1200, 1930, 1930),
}
RHO = np.array([0.75, 0.9, 0.15, 0.7, 0.9, 0.78, 0.9, 0.9])  # relative proton density
AORTA, MYO, RV, LV = 4, 5, 6, 7
# per-scan jitter (standard deviation) of the patient anatomy: stress and rest differ slightly
JITTER = {"body_c": 0.5, "body_rot": 0.04, "lv_c": 0.4, "lv_r": 0.12, "lv_rot": 0.2, "rv": 0.04}


@dataclass(frozen=True)
class AIFScan:
    """One simulated AIF series with its label and ground truth.

    series: float32 [T, RO, E1], PD frames first (arbitrary scanner units).
    times_s: float32 [T], strictly increasing, 0 at the first frame, seconds.
    mask: uint8 [RO, E1], 0 background / 1 LV / 2 RV blood pool (fraction >= 0.5, at the
        reference position of the motion).
    n_pd_frames: number of leading PD frames.
    lv_signal, rv_signal: float32 [T], noiseless, coil-free signal of pure LV / RV blood (PD value
        in the PD frames), same units as ``series``.
    attrs: scalar attributes (site, scanner, field_T, stress, snr, timings, bolus kind...).
    """

    series: np.ndarray
    times_s: np.ndarray
    mask: np.ndarray
    n_pd_frames: int
    lv_signal: np.ndarray
    rv_signal: np.ndarray
    attrs: dict


def _frame(x, y, c, ang):
    """Coordinates of points (x, y) in a frame centred at c and rotated by ang (rad)."""
    dx, dy, co, si = x - float(c[0]), y - float(c[1]), float(np.cos(ang)), float(np.sin(ang))
    return co * dx + si * dy, co * dy - si * dx


def _ell(u, v, c, a, b, ang=0.0):
    """Squared normalised radius w.r.t. an ellipse (centre c, semi-axes a, b, angle); <= 1: in."""
    p, q = _frame(u, v, c, ang)
    p, q = p * (1 / float(a)), q * (1 / float(b))
    return p * p + q * q


def _sample_anatomy(rng: np.random.Generator) -> dict:
    """Patient anatomy in the body frame (u: patient left, v: posterior; pixels)."""
    a, b = rng.uniform(23, 33), rng.uniform(16, 23)
    k = 2 + int(rng.integers(0, 3))
    theta = np.concatenate(
        [[-np.pi / 2, np.pi / 2] + rng.uniform(-0.6, 0.6, 2), rng.uniform(0, 7, k - 2)]
    )
    grow = rng.uniform(1.0, 1.3, k)
    coil = np.stack([a * grow * np.cos(theta), b * grow * np.sin(theta)], 1)
    coil = np.concatenate([coil, rng.uniform([0.4, 10], [1.5, 25], (k, 2))], 1)  # u, v, w, width
    lungs = rng.uniform([0.4, -0.35, 0.18, 0.3, -0.4], [0.65, 0.15, 0.35, 0.6, 0.4], (2, 5))
    lungs[1, :4] *= [-1, 1, 0.85, 0.9]  # right lung: other side, a bit smaller
    return {
        "e1": int(rng.choice(E1_CHOICES, p=E1_P)),
        "field_T": float(rng.choice([1.5, 3.0], p=[0.6, 0.4])),
        "hr_rest": rng.uniform(50, 85),
        "flip": rng.random(2) < 0.5,
        "body_c": rng.uniform(-3, 3, 2),
        "body_ab": np.array([a, b]),
        "body_rot": rng.uniform(-0.5, 0.5),
        "fat": rng.uniform(0.6, 2.0),
        "lv_c": np.array([a * rng.uniform(0.0, 0.25), b * rng.uniform(-0.15, 0.2)]),
        "lv_r": np.sqrt(rng.uniform(28, 62) / np.pi),
        "lv_ecc": rng.uniform(0.75, 1.0),
        "lv_rot": rng.uniform(0, np.pi),
        "lv_harm": rng.uniform(0, 0.06, 3),
        "lv_phase": rng.uniform(0, 2 * np.pi, 3),
        "myo": rng.uniform(1.5, 2.5),
        # angle above the -u axis (rad), centre distance, tangential and radial semi-axes (x R_epi)
        "rv": rng.uniform([0.1, 0.7, 1.1, 0.6], [0.9, 1.0, 1.8, 1.0]),
        "lungs": lungs,  # centre u, v, semi-axes (fractions of the body semi-axes), angle
        "liver": rng.uniform([-0.45, 0.4, 0.3, 0.3, -0.5], [-0.05, 0.8, 0.55, 0.55, 0.5])
        if rng.random() < 0.8
        else None,
        "aorta": rng.uniform([-0.05, 0.45, 1.0], [0.25, 0.7, 1.7]) if rng.random() < 0.8 else None,
        "coil": coil,
    }


def _body_coords(an: dict, x: np.ndarray, y: np.ndarray):
    """Image coordinates (px from the FOV centre, along RO and E1) -> body frame (u, v)."""
    u, v = _frame(x, y, an["body_c"], an["body_rot"])
    return (-u if an["flip"][0] else u), (-v if an["flip"][1] else v)


def _labels_hr(an: dict) -> np.ndarray:
    """Supersampled label map int8 [SS*(RO+2*MARGIN), SS*(E1+2*MARGIN)], 0 air, k+1 TISSUES[k]."""
    e1 = an["e1"]
    x = (np.arange(SS * (RO + 2 * MARGIN), dtype=np.float32) + 0.5) / SS - MARGIN - RO / 2
    y = (np.arange(SS * (e1 + 2 * MARGIN), dtype=np.float32) + 0.5) / SS - MARGIN - e1 / 2
    u, v = _body_coords(an, *np.meshgrid(x, y, indexing="ij"))
    a, b = an["body_ab"]
    lab = np.zeros(u.shape, np.int8)
    inner = _ell(u, v, (0, 0), a - an["fat"], b - an["fat"]) <= 1
    lab[_ell(u, v, (0, 0), a, b) <= 1] = 2
    lab[inner] = 1
    for cx, cy, la, lb, rot in an["lungs"]:
        lab[inner & (_ell(u, v, (a * cx, b * cy), a * la, b * lb, rot) <= 1)] = 3
    if an["liver"] is not None:
        cx, cy, la, lb, rot = an["liver"]
        lab[inner & (_ell(u, v, (a * cx, b * cy), a * la, b * lb, rot) <= 1)] = 4
    if an["aorta"] is not None:
        cx, cy, r = an["aorta"]
        lab[inner & (_ell(u, v, (a * cx, b * cy), r, r) <= 1)] = AORTA + 1
    # LV: irregular ellipse; myocardium: smoother ring around it
    p, q = _frame(u, v, an["lv_c"], an["lv_rot"])
    z = p + 1j * q
    z /= np.abs(z) + 1e-6  # exp(i theta); harmonics cos(m theta + phase) = Re(z**m exp(i phase))
    mod, zm = 1.0, z * z
    for h, ph in zip(an["lv_harm"], an["lv_phase"], strict=True):
        mod, zm = mod + float(h) * (zm * complex(np.exp(1j * ph))).real, zm * z
    ra, rb, t = an["lv_r"] / np.sqrt(an["lv_ecc"]), an["lv_r"] * np.sqrt(an["lv_ecc"]), an["myo"]
    endo = _ell(p, q, (0, 0), ra, rb) <= mod**2
    epi = _ell(p, q, (0, 0), ra + t, rb + t) <= (0.5 + 0.5 * mod) ** 2
    # RV: ellipse centred anterior / patient-right of the LV, long axis tangential, minus the LV
    ang, dist, sa, sb = an["rv"]
    r_epi, direction = an["lv_r"] + t, np.pi + ang
    c_rv = an["lv_c"] + dist * r_epi * np.array([np.cos(direction), np.sin(direction)])
    wall = _ell(u, v, c_rv, sa * r_epi + 0.6, sb * r_epi + 0.6, direction + np.pi / 2) <= 1
    rv = _ell(u, v, c_rv, sa * r_epi, sb * r_epi, direction + np.pi / 2) <= 1
    for region, value in ((wall, MYO), (rv, RV), (epi, MYO), (endo, LV)):
        lab[inner & region] = value + 1
    return lab


def _integral(lab: np.ndarray) -> np.ndarray:
    """Integral images int32 [K, H+1, W+1] of the one-hot supersampled label map (exact counts)."""
    onehot = lab[None] == np.arange(1, len(TISSUES) + 1, dtype=np.int8)[:, None, None]
    out = np.zeros((len(TISSUES), lab.shape[0] + 1, lab.shape[1] + 1), np.int32)
    np.cumsum(onehot, axis=1, dtype=np.int32, out=out[:, 1:, 1:])
    np.cumsum(out[:, 1:, 1:], axis=2, out=out[:, 1:, 1:])
    return out


def _fractions(integral: np.ndarray, e1: int, shifts: np.ndarray, box: int) -> np.ndarray:
    """Tissue fractions float32 [S, K, RO, E1] of the anatomy moved by ``shifts`` (int [S, 2],
    sub-samples along RO, E1), integrated over a box of SS + 2*box sub-samples per pixel and axis:
    four strided slices of the integral image per shift, no per-pixel loop."""
    w, out = SS + 2 * box, np.empty((len(shifts), len(TISSUES), RO, e1), np.float32)
    for s, (da, db) in enumerate(shifts):
        r0, c0 = SS * MARGIN - da - box, SS * MARGIN - db - box
        r, c = slice(r0, r0 + SS * RO, SS), slice(c0, c0 + SS * e1, SS)
        r_end, c_end = slice(r0 + w, r0 + w + SS * RO, SS), slice(c0 + w, c0 + w + SS * e1, SS)
        out[s] = (
            integral[:, r_end, c_end]
            - integral[:, r, c_end]
            - integral[:, r_end, c]
            + integral[:, r, c]
        )
    return out * np.float32(1 / w**2)


def _gamma_variate(t: np.ndarray, alpha: float, tp: float) -> np.ndarray:
    """Gamma variate of peak 1 at t = tp (s), 0 for t <= 0."""
    x = np.clip(t / tp, 0, None)
    return x**alpha * np.exp(alpha * (1 - x))


def _disperse(x: np.ndarray, delay_s: float, tau_s: float, n: int = 1) -> np.ndarray:
    """Delay a curve on the DT grid, then pass it through n compartments of time constant tau_s
    (an area-preserving Erlang kernel)."""
    k = min(int(round(delay_s / DT)), x.size)
    y, a = np.concatenate([np.zeros(k), x[: x.size - k]]), np.exp(-DT / tau_s)
    for _ in range(n):
        y = lfilter([1 - a], [1, -a], y)
    return y


def _kinetics(rng: np.random.Generator, stress: bool, n: int) -> tuple[np.ndarray, float, bool]:
    """Concentrations [K, n] (mM) per tissue on the grid DT * arange(n) from the bolus onset, the
    LV peak (mM) they are scaled to, and whether the bolus is weak."""
    u = rng.uniform
    first = _gamma_variate(DT * np.arange(n), u(1.5, 3.5), u(2, 3.5) if stress else u(2.5, 4.5))
    rec = _disperse(first, u(8, 12) if stress else u(10, 14), u(1.5, 3), 2)
    rv = first + u(0.08, 0.2) * rec / rec.max() + u(0.08, 0.18) * np.cumsum(rec) / first.sum()
    lv = _disperse(rv, u(2.5, 5) if stress else u(3, 6), u(0.4, 1.2), 2)
    myo_tau, myo_ratio = (u(2, 6), u(0.12, 0.22)) if stress else (u(4, 10), u(0.07, 0.15))
    shapes = [  # (curve, peak relative to the LV peak)
        (_disperse(lv, 2, 30), u(0.02, 0.05)),  # muscle
        (_disperse(lv, 2, 30), u(0.0, 0.02)),  # fat
        (_disperse(rv, 0.3, 1.0), u(0.03, 0.08)),  # lung
        (_disperse(lv, 4, 20), u(0.04, 0.12)),  # liver
        (_disperse(lv, u(0.3, 1.0), 0.3), None),  # aorta
        (_disperse(lv, 0.5, myo_tau), myo_ratio),  # myocardium
        (rv, None),
        (lv, None),
    ]
    conc = np.stack([c if r is None else c * r * lv.max() / c.max() for c, r in shapes])
    weak = rng.random() < 0.06
    peak = u(0.8, 2.0) if weak else u(3, 9)
    return conc * (peak / lv.max()), peak, weak


def _foot_peak(c: np.ndarray) -> tuple[float, float]:
    """Foot (first crossing of 5 % of the peak) and peak time (s) of a curve on the DT grid."""
    i = int(np.argmax(c))
    return DT * float(np.argmax(c >= 0.05 * c[i])), DT * i


def _frame_times(rng: np.random.Generator, n_t: int, hr_bpm: float, period_s: float):
    """Frame times (s) [T] from 0, one per RR interval with 3 % jitter and sinus arrhythmia (with
    the breathing period), missed triggers (2 RR gaps) in half the scans; and their number."""
    rr = 60 / hr_bpm
    rsa = rng.uniform(0, 0.04) * np.sin(
        2 * np.pi * rr / period_s * np.arange(n_t - 1) + rng.uniform(0, 7)
    )
    gaps = np.clip(rr * (1 + rsa + 0.03 * rng.standard_normal(n_t - 1)), 0.35, None)
    missed = rng.random(n_t - 1) < (0.0 if rng.random() < 0.5 else rng.uniform(0.005, 0.03))
    return np.concatenate([[0.0], np.cumsum(gaps * (1 + missed))]), int(missed.sum())


def _motion(rng: np.random.Generator, times: np.ndarray, period_s: float, amp: float) -> np.ndarray:
    """Residual breathing shifts int [T, 2] in sub-samples (along RO, E1): sinusoid of amplitude
    amp (px) along a random direction, phase random walk, 0.12 px jitter, clipped to 1.5 px."""
    n_t, ang = times.size, rng.uniform(0, np.pi)
    phase = 2 * np.pi * times / period_s + rng.uniform(0, 7) + np.cumsum(rng.normal(0, 0.15, n_t))
    disp = amp * np.sin(phase)[:, None] * [np.cos(ang), np.sin(ang)] + rng.normal(0, 0.12, (n_t, 2))
    return np.clip(np.rint(disp * SS), -MAX_SHIFT, MAX_SHIFT).astype(int)


def _coil(an: dict, e1: int, body: np.ndarray) -> np.ndarray:
    """Coil sensitivity float32 [RO, E1]: Gaussians near the body surface, mean 1 in ``body``."""
    x, y = np.meshgrid(np.arange(RO) + 0.5 - RO / 2, np.arange(e1) + 0.5 - e1 / 2, indexing="ij")
    u, v = _body_coords(an, x, y)
    coil = 0.15 + sum(
        w * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s**2)) for cu, cv, w, s in an["coil"]
    )
    return (coil / coil[body].mean()).astype(np.float32)


def _simulate(rng: np.random.Generator, an: dict, stress: bool) -> AIFScan:
    """One scan of a patient (anatomy ``an``): draws bolus, timing, motion, signal and noise."""
    an = dict(an)
    for key, sd in JITTER.items():
        an[key] = an[key] + rng.normal(0, sd, np.shape(an[key]))
    an["lv_r"] = float(np.clip(an["lv_r"], *np.sqrt(np.array([26, 62]) / np.pi)))  # 26-62 px
    e1, k, u = an["e1"], len(TISSUES), rng.uniform
    n_t = int(rng.integers(60, 101) if rng.random() < 0.75 else rng.integers(100, 171))
    n_pd = int(rng.choice(4, p=[0.05, 0.1, 0.4, 0.45]))
    hr = float(np.clip(an["hr_rest"] + (u(10, 30) if stress else rng.normal(0, 3)), 50, 110))
    period = u(3, 6)
    times, n_missed = _frame_times(rng, n_t, hr, period)
    # contrast kinetics on a fine grid from the onset, sampled at the frame times
    n_grid = int(times[-1] / DT) + 600
    conc, lv_peak_mm, weak = _kinetics(rng, stress, n_grid)
    (rv_foot, rv_peak), (lv_foot, lv_peak) = _foot_peak(conc[RV]), _foot_peak(conc[LV])
    bolus = "weak" if weak else "late" if rng.random() < 0.08 else "normal"
    onset = times[n_pd] + (u(25, 31) - lv_peak if bolus == "late" else u(5, 14))
    grid = DT * np.arange(n_grid)
    c_t = np.stack([np.interp(times - onset, grid, c, left=0.0) for c in conc], 1)  # [T, K]
    # signal [T, K] per frame and tissue: saturation recovery, PD frames first
    rho = RHO * u(0.9, 1.1, k)
    rho[[AORTA, RV]] = rho[LV]
    r1, pd_scale, gain = u(4, 5), u(0.8, 1.0), np.exp(u(np.log(200), np.log(2000)))
    ts_ms = TD_MS + e1 / ACCEL / 2 * TR_MS
    r1_0 = 1000 / np.array(T1_MS[an["field_T"]])
    sig = gain * rho * (1 - np.exp(-ts_ms / 1000 * (r1_0 + r1 * c_t)))
    sig[:n_pd] = gain * rho * pd_scale
    # image = sum over tissues of fraction maps (at each frame's shift) x tissue signals
    amp = u(0, 1.0)
    shifts, inv = np.unique(_motion(rng, times, period, amp), axis=0, return_inverse=True)
    integral, box = _integral(_labels_hr(an)), int(rng.random() < 0.5)
    frac = _fractions(integral, e1, shifts, box).reshape(len(shifts), k, -1)
    tex = gaussian_filter(rng.standard_normal((RO, e1)), 2.5)  # smooth texture: muscle, liver
    frac[:, [0, 3]] *= np.clip(1 + u(0.1, 0.3) * tex / tex.std(), 0.3, None).ravel()
    img = np.empty((n_t, RO * e1), np.float32)
    for s, idx in enumerate(inv.reshape(-1) == np.arange(len(shifts))[:, None]):
        img[idx] = np.einsum("tk,kn->tn", sig[idx].astype(np.float32), frac[s])  # no BLAS threads
    ref = _fractions(integral, e1, np.zeros((1, 2), int), 0)[0]  # reference position, pixel box
    img = img.reshape(n_t, RO, e1) * _coil(an, e1, ref.sum(0) >= 0.5)
    snr_pd = np.exp(u(np.log(25), np.log(250)))
    sigma = gain * rho[LV] * pd_scale / snr_pd
    mask = np.zeros((RO, e1), np.uint8)
    mask[ref[LV] >= 0.5], mask[ref[RV] >= 0.5] = 1, 2
    attrs = {
        "site": "synthetic",
        "scanner": f"phantom_{an['field_T']:g}T",
        "field_T": an["field_T"],
        "stress": bool(stress),
        "bolus": bolus,
        "heart_rate_bpm": hr,
        "n_missed_triggers": n_missed,
        "snr_pd": snr_pd,
        "snr_lv_peak": sig[n_pd:, LV].max() / sigma,
        "noise_sigma": sigma,
        "lv_peak_mM": lv_peak_mm,
        "rv_foot_s": onset + rv_foot,
        "rv_peak_s": onset + rv_peak,
        "lv_foot_s": onset + lv_foot,
        "lv_peak_s": onset + lv_peak,
        "pulmonary_transit_s": lv_foot - rv_foot,
        "myo_peak_ratio": conc[MYO].max() / conc[LV].max(),
        "breathing_period_s": period,
        "motion_amp_px": amp,
        "psf_box_px": (SS + 2 * box) / SS,
        "td_ms": TD_MS,
        "ts_ms": ts_ms,
        "r1_per_mM_s": r1,
        "pd_scale": pd_scale,
        "pixel_mm": PIXEL_MM,
        "lv_area_px": int((mask == 1).sum()),
        "rv_area_px": int((mask == 2).sum()),
    }
    return AIFScan(
        series=add_rician_noise(rng, img, sigma),
        times_s=times.astype(np.float32),
        mask=mask,
        n_pd_frames=n_pd,
        lv_signal=sig[:, LV].astype(np.float32),
        rv_signal=sig[:, RV].astype(np.float32),
        attrs={key: float(v) if isinstance(v, np.floating) else v for key, v in attrs.items()},
    )


def simulate_aif_scan(rng: np.random.Generator) -> AIFScan:
    """Simulate one AIF scan of a new random patient (stress or rest with probability 1/2)."""
    anatomy = _sample_anatomy(rng)
    return _simulate(rng, anatomy, stress=bool(rng.random() < 0.5))


def _patient_scans(seed: int, patient: int, n_scans: int):
    """Yield (name, scan) of one patient: anatomy from SeedSequence(seed, (patient, 0)), scan j from
    (patient, j + 1); so patient k does not depend on how many patients or scans are asked for."""
    anatomy = _sample_anatomy(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient, 0)))
    )
    for j in range(n_scans):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient, j + 1)))
        name = ("stress", "rest")[j] if j < 2 else f"rest{j}"
        yield name, _simulate(rng, anatomy, stress=j == 0)


def _write_patient(f: h5py.File, pid: str, scans: list[tuple[str, AIFScan]]) -> None:
    """Write one patient's scans as groups ``<pid>_<name>`` of the AIF contract."""
    for name, scan in scans:
        g = f.create_group(f"{pid}_{name}")
        g.create_dataset("series", data=scan.series)
        g.create_dataset("times_s", data=scan.times_s)
        g.create_dataset("mask", data=scan.mask)
        g.create_dataset("truth_lv_signal", data=scan.lv_signal)
        g.create_dataset("truth_rv_signal", data=scan.rv_signal)
        g.attrs.update({"patient_id": pid, "n_pd_frames": scan.n_pd_frames, **scan.attrs})


def write_aif_phantoms(
    path: str | Path, n_patients: int, seed: int, scans_per_patient: int = 2
) -> Path:
    """Write a reproducible phantom file in the AIF HDF5 contract, atomically (tmp + os.replace).

    Case ids are ``P0007_stress``, ``P0007_rest`` (then ``P0007_rest2``...); the first scan of a
    patient is at stress. Datasets are contiguous and uncompressed (noise does not compress, and a
    random case reads in one seek); ``truth_lv_signal`` / ``truth_rv_signal`` float32 [T] are added.
    Returns the path written.
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        simulate_patient = lambda p: list(_patient_scans(seed, p, scans_per_patient))  # noqa: E731
        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool, h5py.File(tmp, "w") as f:
            f.attrs.update(
                generator=__name__,
                seed=seed,
                n_patients=n_patients,
                scans_per_patient=scans_per_patient,
            )
            for first in range(0, n_patients, 16):  # generate in 2-4 threads, write in order
                batch = range(first, min(first + 16, n_patients))
                for p, scans in zip(batch, pool.map(simulate_patient, batch), strict=True):
                    _write_patient(f, f"P{p:04d}", scans)
    return path
