"""Physics-based synthetic AIF perfusion phantoms, randomised over what differs between sites.

A phantom is the low-resolution AIF image series of a basal short-axis slice: 64 (RO) x E1
pixels, one frame per heartbeat, proton-density (PD) frames first, in the AIF HDF5 contract.
Every property that differs between sites, vendors and sequences is drawn from a wide, documented
range (:class:`AIFPhantomRanges`, defaults = the training ranges), so that a network trained on
them learns the bolus physics rather than one phantom family (the idea of SynthSeg, Billot et al.
2023: train on randomised synthetic images, work on real ones). Evaluation families outside these
ranges are in :data:`OUT_OF_DISTRIBUTION`. Lengths are in pixels (px), times in seconds,
concentrations in mM.

Anatomy (per patient, jittered slightly per scan), drawn at a zoom of 1 (5.625 mm pixels) and
scaled by ``zoom`` (the field of view / pixel size: the LV blood pool covers 15-200 px): body
ellipse with a subcutaneous fat rim, two lungs, liver, descending aorta; LV blood pool with
radial harmonics (m = 2..4) and trabeculation (m = 6..10), 0-2 papillary muscles inside it; LV
myocardium of 1-3.5 px; RV blood pool = an irregular ellipse beside the LV minus the LV (a
crescent), with a thin free wall. The layout is rotated by any angle and mirrored, and the heart
lies anywhere in the network's 64 x 48 crop. Tissue fractions are box integrals over a 4x4
supersampled label map (pixel integration; wider boxes mimic k-space filtering or block-averaged
full-resolution images). Muscle and liver get a smooth texture.

Kinetics (time from the bolus onset): RV = gamma variate (sometimes double-peaked) +
recirculation + steady state; LV = RV delayed and dispersed through the lungs (transit 2.5-8 s);
aorta = LV delayed; myocardium = LV through one compartment (5-35 % of the LV peak); lung, liver,
muscle and fat barely enhance. LV peak 3-9 mM (10 % weak boluses of 0.3-2 mM, LV barely
enhancing); 8 % late boluses peak 25-31 s after the first SR frame.

Signal: saturation recovery with a saturation time TS of 15-40 ms (dual-sequence AIF images) or
40-200 ms (single-bolus perfusion images reduced to AIF resolution) and imperfect saturation
(residual magnetisation 0-15 %): ``S = g * rho * (1 - (1 - m0) * exp(-TS * (R1_0 + r1 * C)))``,
so the pre-contrast baseline ranges from ~0 to about a fifth of the blood peak and blood
saturates at high concentration. PD frames (0-4): ``S = g * rho * pd_scale``. Receive-coil
shading: surface elements on the body plus an anterior-posterior gradient of up to 10:1 across
the field of view; the scanner may have corrected it (prescan-normalise), partly, or not at all
(PD frames carry the same shading). Rician noise with an SNR of PD blood of 10-300 (the noise is
amplified wherever a correction divided the shading out).

Motion (residual after MOCO): breathing sinusoid of 0-1.5 px plus jitter. Frame times: one per
RR interval at 45-150 bpm (0.4-1.33 s) with jitter, sinus arrhythmia and missed triggers; T =
50-170 frames.

Files: per patient one anatomy, scans ``stress`` then ``rest``. Case attrs hold the drawn
parameters and ground truth (``rv_foot_s``, ``lv_foot_s`` = first crossing of 5 % of the peak,
``rv_peak_s``, ``lv_peak_s`` on the ``times_s`` axis; ``bolus`` normal / late / weak / double;
``snr_pd``, ``baseline_ratio`` = pre-contrast / peak LV signal, ``coil_ratio``, ``shading``...).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

from datamodules.synthetic.rician_noise import add_rician_noise
from formats.atomic_file import atomic_write

GENERATOR_VERSION = 2  # part of the cached file name: a new version never reuses an old file
RO = 64
PIXEL_MM = 360.0 / RO  # at zoom 1
SS = 4  # sub-samples per pixel and axis
MARGIN = 2  # px of anatomy evaluated outside the FOV (room for motion and the wider box)
MAX_SHIFT = 6  # motion clip in sub-samples (1.5 px)
TR_MS, ACCEL = 2.45, 3
DT = 0.1  # s, grid of the kinetic model
CROP_RO, CROP_E1 = 64, 48  # the network's crop (AIFPreprocessing defaults): the heart stays inside
E1_CHOICES, E1_P = (44, 48, 52, 56, 60), (0.05, 0.4, 0.2, 0.3, 0.05)
TISSUES = ("muscle", "fat", "lung", "liver", "aorta", "myo", "rv", "lv")  # label = index + 1
T1_MS = {
    1.5: (900, 260, 1200, 580, 1550, 950, 1550, 1550),
    3.0: (1420, 380, 1300, 810, 1930, 1200, 1930, 1930),
}
RHO = np.array([0.75, 0.9, 0.15, 0.7, 0.9, 0.78, 0.9, 0.9])  # relative proton density
AORTA, MYO, RV, LV = 4, 5, 6, 7
# per-scan jitter (standard deviation) of the patient anatomy: stress and rest differ slightly
JITTER = {"body_c": 0.5, "body_rot": 0.04, "lv_r": 0.12, "lv_rot": 0.2, "rv": 0.04}
SHADINGS = ("none", "partly", "corrected")


@dataclass(frozen=True)
class AIFPhantomRanges:
    """The ranges phantoms are drawn from (uniform unless noted; (lo, hi) pairs).

    Attributes:
        zoom: anatomy scale, log-uniform (pixel size 5.625 mm / zoom).
        lv_area_px: LV blood-pool area at zoom 1 (times zoom**2 in the image).
        myo_thickness_px: LV wall thickness at zoom 1.
        heart_offset: fraction of the free room in the 64 x 48 crop over which the LV centre is
            placed (0: centred, 1: anywhere the LV and its wall still fit).
        rotation_deg: the layout is rotated by up to +-this.
        papillary_p: probability of papillary muscles in the pool.
        trabeculation: amplitude of the high-order (m = 6..10) endocardial harmonics.
        saturation_time_ms: dual-sequence (AIF) and single-bolus ranges of TS, log-uniform.
        single_bolus_p: probability of the single-bolus (long TS) kind.
        residual_magnetisation: Mz left after the saturation pulse (fraction).
        lv_peak_mm: LV peak concentration of a normal bolus, mM.
        weak_p, weak_peak_mm: probability and LV peak of a weak bolus.
        late_p: probability of a late bolus (LV peak 25-31 s after the first SR frame).
        double_p: probability of a double-peaked bolus.
        onset_s: bolus onset after the first SR frame (normal boluses).
        transit_s: pulmonary transit delay (RV -> LV).
        dispersion_s: time constant of each of the two lung compartments.
        myo_ratio: myocardial peak relative to the LV peak.
        heart_rate_bpm: rest heart rate (stress adds 10-30 bpm, clipped to the range's top).
        n_frames: frames per series (inclusive).
        pd_frames_p: probabilities of 0, 1, 2, ... PD frames.
        coil_ratio: max / min of the anterior-posterior coil gradient over the FOV, log-uniform.
        shading_p: probabilities of the shading left uncorrected / partly / fully corrected.
        snr_pd: SNR of PD blood, log-uniform.
        motion_px: breathing amplitude.
        psf_box_p: probabilities of a pixel box of 1, 1.5, 2 px (k-space filter, block average).
    """

    zoom: tuple[float, float] = (0.7, 1.7)
    lv_area_px: tuple[float, float] = (22.0, 70.0)
    myo_thickness_px: tuple[float, float] = (1.0, 3.5)
    heart_offset: float = 1.0
    rotation_deg: float = 180.0
    papillary_p: float = 0.7
    trabeculation: tuple[float, float] = (0.0, 0.08)
    saturation_time_ms: tuple[tuple[float, float], tuple[float, float]] = ((15, 40), (40, 200))
    single_bolus_p: float = 0.4
    residual_magnetisation: tuple[float, float] = (0.0, 0.15)
    lv_peak_mm: tuple[float, float] = (3.0, 9.0)
    weak_p: float = 0.1
    weak_peak_mm: tuple[float, float] = (0.3, 2.0)
    late_p: float = 0.08
    double_p: float = 0.1
    onset_s: tuple[float, float] = (3.0, 14.0)
    transit_s: tuple[float, float] = (2.5, 8.0)
    dispersion_s: tuple[float, float] = (0.3, 2.0)
    myo_ratio: tuple[float, float] = (0.05, 0.35)
    heart_rate_bpm: tuple[float, float] = (45.0, 150.0)
    n_frames: tuple[int, int] = (50, 170)
    pd_frames_p: tuple[float, ...] = (0.2, 0.1, 0.3, 0.3, 0.1)
    coil_ratio: tuple[float, float] = (1.0, 10.0)
    shading_p: tuple[float, float, float] = (0.5, 0.2, 0.3)
    snr_pd: tuple[float, float] = (10.0, 300.0)
    motion_px: tuple[float, float] = (0.0, 1.5)
    psf_box_p: tuple[float, float, float] = (0.4, 0.4, 0.2)


TRAINING = AIFPhantomRanges()
"""The ranges of the embedded training set."""

CLASSIC = AIFPhantomRanges(
    zoom=(1.0, 1.0),
    lv_area_px=(28.0, 62.0),
    myo_thickness_px=(1.5, 2.5),
    heart_offset=0.0,
    rotation_deg=29.0,
    papillary_p=0.0,
    trabeculation=(0.0, 0.0),
    saturation_time_ms=((20, 30), (20, 30)),
    single_bolus_p=0.0,
    residual_magnetisation=(0.0, 0.0),
    weak_p=0.06,
    weak_peak_mm=(0.8, 2.0),
    double_p=0.0,
    onset_s=(5.0, 14.0),
    transit_s=(2.5, 6.0),
    dispersion_s=(0.4, 1.2),
    myo_ratio=(0.07, 0.22),
    heart_rate_bpm=(50.0, 110.0),
    n_frames=(60, 170),
    pd_frames_p=(0.05, 0.1, 0.4, 0.45),
    coil_ratio=(1.0, 1.0),
    shading_p=(1.0, 0.0, 0.0),
    snr_pd=(25.0, 250.0),
    motion_px=(0.0, 1.0),
    psf_box_p=(0.5, 0.5, 0.0),
)
"""The narrower family of the first generator (dual-sequence AIF at 5.6 mm, centred heart, PD
frames, mild shading): an in-distribution subset, and clean scans for the legacy detector."""

OUT_OF_DISTRIBUTION: dict[str, AIFPhantomRanges] = {
    "high_baseline": replace(
        TRAINING, saturation_time_ms=((250, 500), (250, 500)), residual_magnetisation=(0.15, 0.3)
    ),
    "large_lv": replace(TRAINING, zoom=(1.8, 2.3), lv_area_px=(45.0, 70.0)),
    "strong_shading": replace(
        TRAINING, coil_ratio=(10.0, 20.0), shading_p=(1.0, 0.0, 0.0), pd_frames_p=(1.0,)
    ),
    "low_snr": replace(TRAINING, snr_pd=(6.0, 10.0)),
    "fast_heart_rate": replace(TRAINING, heart_rate_bpm=(150.0, 180.0)),
    "dispersed_bolus": replace(TRAINING, transit_s=(8.0, 12.0), dispersion_s=(2.0, 3.5)),
}
"""Evaluation families drawn outside the training ranges, one property at a time; training never
sees them (``evaluate.py experiment=aif_ood``)."""


def phantom_family(spec: dict | str | None) -> tuple[str, AIFPhantomRanges]:
    """``(name, ranges)`` of a family: ``None`` = training, ``"classic"``, a name of
    :data:`OUT_OF_DISTRIBUTION`, or a dict of :class:`AIFPhantomRanges` overrides of the training
    ranges (named ``custom-<hash>``, so that each setting gets its own cached file).

    Example:
        >>> phantom_family("low_snr")[1].snr_pd
        (6.0, 10.0)
        >>> phantom_family({"snr_pd": [20, 40]})[0].startswith("custom-")
        True
    """
    if spec is None or spec == "training":
        return "training", TRAINING
    if isinstance(spec, str):
        families = {"classic": CLASSIC, **OUT_OF_DISTRIBUTION}
        if spec not in families:
            raise ValueError(f"unknown phantom family {spec!r}; known: {sorted(families)}")
        return spec, families[spec]
    fields = {f: (tuple(v) if isinstance(v, list | tuple) else v) for f, v in dict(spec).items()}
    unknown = set(fields) - set(asdict(TRAINING))
    if unknown:
        raise ValueError(f"unknown AIFPhantomRanges field(s) {sorted(unknown)}")
    ranges = replace(TRAINING, **fields)
    digest = hashlib.sha256(repr(sorted(asdict(ranges).items())).encode()).hexdigest()[:8]
    return f"custom-{digest}", ranges


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


def _harmonics(p, q, amplitudes, phases, first_order: int):
    """1 + sum_m a_m cos(m theta + phase_m), m = first_order, first_order + 1, ..., at the polar
    angle theta of (p, q)."""
    z = p + 1j * q
    z /= np.abs(z) + 1e-6
    mod, zm = 1.0, z**first_order
    for amp, phase in zip(amplitudes, phases, strict=True):
        mod, zm = mod + float(amp) * (zm * complex(np.exp(1j * phase))).real, zm * z
    return mod


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _sample_anatomy(rng: np.random.Generator, ranges: AIFPhantomRanges) -> dict:
    """Patient anatomy in the body frame at zoom 1 (u: patient left, v: posterior; px), plus the
    zoom and the placement in the image."""
    u = rng.uniform
    a, b = u(23, 33), u(16, 23)
    k = 2 + int(rng.integers(0, 3))
    theta = np.concatenate([[-np.pi / 2, np.pi / 2] + u(-0.6, 0.6, 2), u(0, 7, k - 2)])
    grow = u(1.0, 1.3, k)
    coil = np.stack([a * grow * np.cos(theta), b * grow * np.sin(theta)], 1)
    coil = np.concatenate([coil, u([0.4, 10], [1.5, 25], (k, 2))], 1)  # u, v, w, width
    lungs = u([0.4, -0.35, 0.18, 0.3, -0.4], [0.65, 0.15, 0.35, 0.6, 0.4], (2, 5))
    lungs[1, :4] *= [-1, 1, 0.85, 0.9]  # right lung: other side, a bit smaller
    return {
        "e1": int(rng.choice(E1_CHOICES, p=E1_P)),
        "field_T": float(rng.choice([1.5, 3.0], p=[0.6, 0.4])),
        "hr_rest": u(*ranges.heart_rate_bpm),
        "zoom": _log_uniform(rng, ranges.zoom),
        "flip": rng.random(2) < 0.5,
        "body_rot": np.deg2rad(u(-ranges.rotation_deg, ranges.rotation_deg)),
        "heart_xy": u(-1, 1, 2) * ranges.heart_offset,  # fraction of the free room in the crop
        "body_c": u(-3, 3, 2),  # used when the heart is centred (heart_offset 0)
        "body_ab": np.array([a, b]),
        "fat": u(0.6, 2.0),
        "lv_c": np.array([a * u(0.0, 0.25), b * u(-0.15, 0.2)]),
        "lv_r": np.sqrt(u(*ranges.lv_area_px) / np.pi),
        "lv_ecc": u(0.7, 1.0),
        "lv_rot": u(0, np.pi),
        "lv_harm": u(0, 0.08, 3),
        "lv_phase": u(0, 2 * np.pi, 3),
        "trab": u(0, 1, 5) * u(*ranges.trabeculation),
        "trab_phase": u(0, 2 * np.pi, 5),
        # papillary muscles: angle of the pair, radius (x R_lv), distance from the centre (x R_lv)
        "papillary": u([0, 0.12, 0.65], [2 * np.pi, 0.22, 0.85], (1, 3))
        if rng.random() < ranges.papillary_p
        else np.zeros((0, 3)),
        "myo": u(*ranges.myo_thickness_px),
        # angle above the -u axis (rad), centre distance, tangential and radial semi-axes (x R_epi)
        "rv": u([0.1, 0.7, 1.1, 0.5], [0.9, 1.0, 2.0, 1.1]),
        "rv_harm": u(0, 0.12, 3),
        "rv_phase": u(0, 2 * np.pi, 3),
        "lungs": lungs,  # centre u, v, semi-axes (fractions of the body semi-axes), angle
        "liver": u([-0.45, 0.4, 0.3, 0.3, -0.5], [-0.05, 0.8, 0.55, 0.55, 0.5])
        if rng.random() < 0.8
        else None,
        "aorta": u([-0.05, 0.45, 1.0], [0.25, 0.7, 1.7]) if rng.random() < 0.8 else None,
        "coil": coil,
        "coil_direction": u(-0.6, 0.6) + np.pi / 2,  # anterior (-v) side of the body frame
    }


def _placement(an: dict) -> np.ndarray:
    """Image position (px from the FOV centre, RO and E1) of the body frame's origin, chosen so
    that the LV centre lands at ``heart_xy`` of the free room inside the network's crop."""
    zoom, rot = an["zoom"], an["body_rot"]
    fu, fv = (-1 if an["flip"][0] else 1), (-1 if an["flip"][1] else 1)
    p, q = fu * an["lv_c"][0] * zoom, fv * an["lv_c"][1] * zoom
    lv_offset = np.array([np.cos(rot) * p - np.sin(rot) * q, np.sin(rot) * p + np.cos(rot) * q])
    if not np.any(an["heart_xy"]):
        return np.asarray(an["body_c"], float)
    reach = (an["lv_r"] / np.sqrt(an["lv_ecc"]) + an["myo"] + 1) * zoom
    half = np.array([CROP_RO, min(CROP_E1, an["e1"])]) / 2
    room = np.clip(half - reach - 1, 0, None)
    return an["heart_xy"] * room - lv_offset


def _body_coords(an: dict, x: np.ndarray, y: np.ndarray):
    """Image coordinates (px from the FOV centre, along RO and E1) -> body frame (u, v), zoom 1."""
    u, v = _frame(x, y, _placement(an), an["body_rot"])
    u, v = u / an["zoom"], v / an["zoom"]
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
    # LV: irregular ellipse with trabeculation; myocardium: smoother ring around it
    p, q = _frame(u, v, an["lv_c"], an["lv_rot"])
    mod = _harmonics(p, q, an["lv_harm"], an["lv_phase"], 2)
    endo_mod = mod + _harmonics(p, q, an["trab"], an["trab_phase"], 6) - 1
    ra, rb, t = an["lv_r"] / np.sqrt(an["lv_ecc"]), an["lv_r"] * np.sqrt(an["lv_ecc"]), an["myo"]
    endo = _ell(p, q, (0, 0), ra, rb) <= endo_mod**2
    epi = _ell(p, q, (0, 0), ra + t, rb + t) <= (0.5 + 0.5 * mod) ** 2
    papillary = np.zeros_like(endo)
    for angle, radius, distance in an["papillary"]:
        for side in (-1, 1):  # two muscles ~ 110 degrees apart
            phi = angle + side * 0.95
            centre = distance * an["lv_r"] * np.array([np.cos(phi), np.sin(phi)])
            papillary |= _ell(p, q, centre, radius * an["lv_r"], radius * an["lv_r"]) <= 1
    # RV: irregular ellipse anterior / patient-right of the LV, long axis tangential, minus the LV
    ang, dist, sa, sb = an["rv"]
    r_epi, direction = an["lv_r"] + t, np.pi + ang
    c_rv = an["lv_c"] + dist * r_epi * np.array([np.cos(direction), np.sin(direction)])
    pr, qr = _frame(u, v, c_rv, direction + np.pi / 2)
    rv_mod = _harmonics(pr, qr, an["rv_harm"], an["rv_phase"], 2) ** 2
    wall = _ell(pr, qr, (0, 0), sa * r_epi + 0.6, sb * r_epi + 0.6) <= rv_mod
    rv = _ell(pr, qr, (0, 0), sa * r_epi, sb * r_epi) <= rv_mod
    for region, value in ((wall, MYO), (rv, RV), (epi, MYO), (endo, LV), (endo & papillary, MYO)):
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


def _kinetics(
    rng: np.random.Generator, ranges: AIFPhantomRanges, stress: bool, n: int
) -> tuple[np.ndarray, float, str]:
    """Concentrations [K, n] (mM) per tissue on the grid DT * arange(n) from the bolus onset, the
    LV peak (mM) they are scaled to, and the bolus kind (normal / weak / double)."""
    u = rng.uniform
    t = DT * np.arange(n)
    first = _gamma_variate(t, u(1.5, 4.0), u(2, 3.5) if stress else u(2.5, 5.0))
    double = rng.random() < ranges.double_p
    if double:
        first = first + u(0.3, 0.8) * _gamma_variate(t - u(2, 6), u(1.5, 4.0), u(2, 4))
    rec = _disperse(first, u(8, 12) if stress else u(10, 14), u(1.5, 3), 2)
    rv = first + u(0.08, 0.2) * rec / rec.max() + u(0.08, 0.18) * np.cumsum(rec) / first.sum()
    lv = _disperse(rv, u(*ranges.transit_s), u(*ranges.dispersion_s), 2)
    lo, hi = ranges.myo_ratio
    myo_ratio = u((lo + hi) / 2, hi) if stress else u(lo, (lo + hi) / 2)
    myo_tau = u(2, 6) if stress else u(4, 10)
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
    weak = rng.random() < ranges.weak_p
    peak = u(*ranges.weak_peak_mm) if weak else u(*ranges.lv_peak_mm)
    return conc * (peak / lv.max()), peak, "weak" if weak else "double" if double else "normal"


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
    gaps = np.clip(rr * (1 + rsa + 0.03 * rng.standard_normal(n_t - 1)), 0.3, None)
    missed = rng.random(n_t - 1) < (0.0 if rng.random() < 0.5 else rng.uniform(0.005, 0.03))
    return np.concatenate([[0.0], np.cumsum(gaps * (1 + missed))]), int(missed.sum())


def _motion(rng: np.random.Generator, times: np.ndarray, period_s: float, amp: float) -> np.ndarray:
    """Residual breathing shifts int [T, 2] in sub-samples (along RO, E1): sinusoid of amplitude
    amp (px) along a random direction, phase random walk, 0.12 px jitter, clipped to 1.5 px."""
    n_t, ang = times.size, rng.uniform(0, np.pi)
    phase = 2 * np.pi * times / period_s + rng.uniform(0, 7) + np.cumsum(rng.normal(0, 0.15, n_t))
    disp = amp * np.sin(phase)[:, None] * [np.cos(ang), np.sin(ang)] + rng.normal(0, 0.12, (n_t, 2))
    return np.clip(np.rint(disp * SS), -MAX_SHIFT, MAX_SHIFT).astype(int)


def _coil(an: dict, e1: int, body: np.ndarray, ratio: float) -> np.ndarray:
    """Coil sensitivity float32 [RO, E1]: Gaussian surface elements on the body times an
    exponential gradient along the anterior direction with max / min = ``ratio`` over the FOV;
    mean 1 in ``body``."""
    x, y = np.meshgrid(np.arange(RO) + 0.5 - RO / 2, np.arange(e1) + 0.5 - e1 / 2, indexing="ij")
    u, v = _body_coords(an, x, y)
    coil = 0.15 + sum(
        w * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s**2)) for cu, cv, w, s in an["coil"]
    )
    d = np.cos(an["coil_direction"]) * u - np.sin(an["coil_direction"]) * v  # towards anterior
    span = float(d.max() - d.min()) or 1.0
    coil = coil * np.exp(np.log(ratio) * (d - d.min()) / span)
    return (coil / coil[body].mean()).astype(np.float32)


def _simulate(
    rng: np.random.Generator, an: dict, stress: bool, ranges: AIFPhantomRanges = TRAINING
) -> AIFScan:
    """One scan of a patient (anatomy ``an``): draws bolus, timing, motion, signal and noise."""
    an = dict(an)
    for key, sd in JITTER.items():
        an[key] = an[key] + rng.normal(0, sd, np.shape(an[key]))
    lo, hi = np.sqrt(np.array(ranges.lv_area_px) / np.pi)
    an["lv_r"] = float(np.clip(an["lv_r"], 0.95 * lo, 1.05 * hi))
    e1, k, u = an["e1"], len(TISSUES), rng.uniform
    n_t = int(rng.integers(ranges.n_frames[0], ranges.n_frames[1] + 1))
    n_pd = int(rng.choice(len(ranges.pd_frames_p), p=ranges.pd_frames_p))
    hr_lo, hr_hi = ranges.heart_rate_bpm
    hr = float(np.clip(an["hr_rest"] + (u(10, 30) if stress else rng.normal(0, 3)), hr_lo, hr_hi))
    period = u(3, 6)
    times, n_missed = _frame_times(rng, n_t, hr, period)
    # contrast kinetics on a fine grid from the onset, sampled at the frame times
    n_grid = int(times[-1] / DT) + 600
    conc, lv_peak_mm, bolus = _kinetics(rng, ranges, stress, n_grid)
    (rv_foot, rv_peak), (lv_foot, lv_peak) = _foot_peak(conc[RV]), _foot_peak(conc[LV])
    if bolus != "weak" and rng.random() < ranges.late_p:
        bolus = "late"
    onset = times[n_pd] + (u(25, 31) - lv_peak if bolus == "late" else u(*ranges.onset_s))
    grid = DT * np.arange(n_grid)
    c_t = np.stack([np.interp(times - onset, grid, c, left=0.0) for c in conc], 1)  # [T, K]
    # signal [T, K] per frame and tissue: saturation recovery, PD frames first
    rho = RHO * u(0.9, 1.1, k)
    rho[[AORTA, RV]] = rho[LV]
    r1, pd_scale, gain = u(4, 5), u(0.8, 1.0), np.exp(u(np.log(200), np.log(2000)))
    single = rng.random() < ranges.single_bolus_p
    ts_ms = _log_uniform(rng, ranges.saturation_time_ms[int(single)])
    m0 = u(*ranges.residual_magnetisation)
    r1_0 = 1000 / np.array(T1_MS[an["field_T"]])
    sig = gain * rho * (1 - (1 - m0) * np.exp(-ts_ms / 1000 * (r1_0 + r1 * c_t)))
    sig[:n_pd] = gain * rho * pd_scale
    # image = sum over tissues of fraction maps (at each frame's shift) x tissue signals
    amp = u(*ranges.motion_px)
    shifts, inv = np.unique(_motion(rng, times, period, amp), axis=0, return_inverse=True)
    box = int(rng.choice(3, p=ranges.psf_box_p))  # sub-samples added on each side: 1, 1.5, 2 px
    integral = _integral(_labels_hr(an))
    frac = _fractions(integral, e1, shifts, box).reshape(len(shifts), k, -1)
    tex = gaussian_filter(rng.standard_normal((RO, e1)), 2.5)  # smooth texture: muscle, liver
    frac[:, [0, 3]] *= np.clip(1 + u(0.1, 0.3) * tex / tex.std(), 0.3, None).ravel()
    img = np.empty((n_t, RO * e1), np.float32)
    for s, idx in enumerate(inv.reshape(-1) == np.arange(len(shifts))[:, None]):
        img[idx] = np.einsum("tk,kn->tn", sig[idx].astype(np.float32), frac[s])  # no BLAS threads
    ref = _fractions(integral, e1, np.zeros((1, 2), int), 0)[0]  # reference position, pixel box
    coil_ratio = _log_uniform(rng, ranges.coil_ratio)
    coil = _coil(an, e1, ref.sum(0) >= 0.5, coil_ratio)
    snr_pd = _log_uniform(rng, ranges.snr_pd)
    sigma = gain * rho[LV] * pd_scale / snr_pd
    noisy = add_rician_noise(rng, img.reshape(n_t, RO, e1) * coil, sigma)
    shading = SHADINGS[int(rng.choice(3, p=ranges.shading_p))]
    if shading != "none":  # the scanner divided its own floored coil estimate out (noise too)
        estimate = np.maximum(coil / coil.max(), u(0.1, 0.3)) ** (0.5 if shading == "partly" else 1)
        noisy = noisy / (estimate / estimate.mean())
    mask = np.zeros((RO, e1), np.uint8)
    mask[ref[LV] >= 0.5], mask[ref[RV] >= 0.5] = 1, 2
    sr_lv = sig[n_pd:, LV]
    attrs = {
        "site": "synthetic",
        "scanner": f"phantom_{an['field_T']:g}T",
        "field_T": an["field_T"],
        "stress": bool(stress),
        "bolus": bolus,
        "sequence": "single_bolus" if single else "dual_sequence",
        "heart_rate_bpm": hr,
        "n_missed_triggers": n_missed,
        "snr_pd": snr_pd,
        "snr_lv_peak": sr_lv.max() / sigma,
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
        "ts_ms": ts_ms,
        "residual_magnetisation": m0,
        "baseline_ratio": sr_lv.min() / sr_lv.max(),
        "coil_ratio": coil_ratio,
        "shading": shading,
        "r1_per_mM_s": r1,
        "pd_scale": pd_scale,
        "zoom": an["zoom"],
        "pixel_mm": PIXEL_MM / an["zoom"],
        "lv_area_px": int((mask == 1).sum()),
        "rv_area_px": int((mask == 2).sum()),
    }
    return AIFScan(
        series=noisy.astype(np.float32),
        times_s=times.astype(np.float32),
        mask=mask,
        n_pd_frames=n_pd,
        lv_signal=sig[:, LV].astype(np.float32),
        rv_signal=sig[:, RV].astype(np.float32),
        attrs={key: float(v) if isinstance(v, np.floating) else v for key, v in attrs.items()},
    )


def simulate_aif_scan(rng: np.random.Generator, ranges: AIFPhantomRanges = TRAINING) -> AIFScan:
    """Simulate one AIF scan of a new random patient (stress or rest with probability 1/2)."""
    anatomy = _sample_anatomy(rng, ranges)
    return _simulate(rng, anatomy, bool(rng.random() < 0.5), ranges)


def _patient_scans(seed: int, patient: int, n_scans: int, ranges: AIFPhantomRanges):
    """Yield (name, scan) of one patient: anatomy from SeedSequence(seed, (patient, 0)), scan j from
    (patient, j + 1); so patient k does not depend on how many patients or scans are asked for."""
    anatomy = _sample_anatomy(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient, 0))), ranges
    )
    for j in range(n_scans):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient, j + 1)))
        name = ("stress", "rest")[j] if j < 2 else f"rest{j}"
        yield name, _simulate(rng, anatomy, j == 0, ranges)


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
    path: str | Path,
    n_patients: int,
    seed: int,
    scans_per_patient: int = 2,
    ranges: AIFPhantomRanges = TRAINING,
) -> Path:
    """Write a reproducible phantom file in the AIF HDF5 contract, atomically (tmp + os.replace).

    Case ids are ``P0007_stress``, ``P0007_rest`` (then ``P0007_rest2``...); the first scan of a
    patient is at stress. Datasets are contiguous and uncompressed (noise does not compress, and a
    random case reads in one seek); ``truth_lv_signal`` / ``truth_rv_signal`` float32 [T] are added.
    The file attrs record the generator version and the ranges. Returns the path written.
    """
    path = Path(path)
    with atomic_write(path) as tmp:
        simulate_patient = lambda p: list(_patient_scans(seed, p, scans_per_patient, ranges))  # noqa: E731
        workers = min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool, h5py.File(tmp, "w") as f:
            f.attrs.update(
                generator=__name__,
                generator_version=GENERATOR_VERSION,
                seed=seed,
                n_patients=n_patients,
                scans_per_patient=scans_per_patient,
                ranges=repr(asdict(ranges)),
            )
            for first in range(0, n_patients, 16):  # generate in 2-4 threads, write in order
                batch = range(first, min(first + 16, n_patients))
                for p, scans in zip(batch, pool.map(simulate_patient, batch), strict=True):
                    _write_patient(f, f"P{p:04d}", scans)
    return path
