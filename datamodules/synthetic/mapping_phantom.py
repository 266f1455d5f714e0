"""Physics-based synthetic myocardial mapping phantoms: the embedded default mapping data set.

Each patient has ``slices_per_patient`` short-axis slices (basal -> apical; with 5 slices:
2 basal, 2 mid, 1 apical; the level of slice j is set by its position ``j / n`` along the long
axis: < 0.4 basal, < 0.8 mid, else apical) and three acquisitions of every slice, written to
three HDF5 files in the mapping contract of data_contracts.md: native T1, post-contrast T1 and T2 (9
T2-prep echo times 0, 25, ..., 60 ms). All three files hold the same patients, case ids, slice
ids, geometry and hematocrit, so ECV can be computed from the native and post files of one slice.

T1 sequences (``sequence``, the slice attr of the same name; signal models in
:mod:`datamodules.synthetic.sequence_signals`):

- ``stone`` (default): STONE-like ideal inversion recovery, 11 inversion times (native 100-3500
  ms, post-contrast 50-1500 ms, each +-3 %).
- ``molli``: MOLLI 5(3)3 native (8 images) and 4(1)3(1)2 post-contrast (9 images) with a
  continuous Look-Locker readout (apparent T1*) and free recovery in the rest beats; the
  inversion times follow the patient's heart (50-90 bpm, beat-to-beat variability 1-5 %),
  TI of the first image 100 ms after the first inversion, +80 ms per later inversion.
- ``shmolli``: ShMOLLI 5(1)1(1)1 (7 images), the same readout and heart.
- ``sasha``: SASHA, a non-saturated image (``ti_ms`` = +inf, stored last) and 10 saturation
  recovery images (TS 100 ms to RR - 200 ms), saturation efficiency 0.95-1.

The heart and readout of a patient (heart rate, RR variability, readout rate
``1/T1* - 1/T1`` = 1/4000-1/2500 per ms, saturation efficiency) come from a stream of their own,
and every sequence draws the same motion, SNR and noise stream, so the sequences differ only in
the signal. The truth maps stay the true T1.

Geometry (lengths drawn in mm, converted with the patient's pixel size; image size H x W with W
in 176-256 and H in 160-W, pixel 1.33-2.3 mm): body ellipse with subcutaneous fat and a
chest-wall muscle layer, lungs (dark) inside, liver (85 % of patients, larger towards the apex),
the descending aorta below the heart (90 %; radius 9-14 mm, blood signal, label "other"), an
optional mediastinal soft-tissue rim (60 %; fat or muscle) around the heart, the RV (an ellipse
anterior / patient-right of the LV, long axis tangential, minus the LV, so a crescent; 3-4 mm
free wall), the LV myocardial ring (epicardial radius 24-31 mm at the base shrinking by up to
45 % at the apex, wall 7.5-11 mm thinning by up to 30 %; ellipse axis ratio 0.86-1 so the
ring's eccentricity stays well below 0.65; endocardial harmonics m = 2..4 up to 4 %; a local
thinning of up to 45 % in half of the slices, never below 2 px), the LV blood pool, and two
papillary muscles (anterolateral and posteromedial, 3-5.5 mm radius) in the LV blood pool of
mid-ventricular slices (position 0.15-0.75; 30 % of the most basal ones, never apical). Every
tissue boundary is partial-volume: a linear ramp of 1-1.8 px across the (approximate) signed
distance; the fractions of overlapping shapes follow painter's order.

Tissues (1.5 T, per-patient jitter): myocardium native T1 950-1100 ms, T2 45-56 ms (12 % of the
patients diffusely elevated, 57-63 ms), ECV 22-38 % (a third of the patients diffusely elevated,
>= 29 %), with per-slice offsets, smooth regional variation (angular harmonics m = 1, 2) and, in
20 % of the patients, an oedema region (T2 +8-20 ms, T1 +40-100 ms, ECV +3-10 %; 25-50 deg wide,
transmural or subendocardial, in 70 % of their slices). Blood: hematocrit 0.35-0.50, native T1 =
1580 - 700 (Hct - 0.42) ms (about 1500-1650), T2 200-250 ms. Liver 580 / 45 ms, skeletal muscle
1010 / 35 ms, fat 270 / 80 ms, lung 1200 / 35 ms (native T1 / T2). Contrast: per patient a blood
post-contrast T1 of 260-420 ms sets dR1_blood = 1/T1_post - 1/T1_native; any tissue of
extracellular volume fraction ECV gets dR1 = ECV / (1 - Hct) * dR1_blood and T1_post = 1 /
(1/T1_native + dR1).

Signal (per tissue k, amplitude A_k = gain * PD_k): T1 images S = |sum_k f_k A_k s(T1_k)| with
s the sequence's signal per unit M0 (STONE ``1 - 2 exp(-TI / T1)``; partial volumes add with
their sign, then the magnitude), T2 images S = sum_k f_k A_k (exp(-TE / T2_k) + b) with a small
offset fraction b (0-4 %, slice attr ``t2_offset_fraction``).
Then the same smooth coil shading for all images of a patient (2-4 Gaussian elements on the body
surface, mean 1 in the body), and Rician noise: sigma = A_myo / SNR, SNR log-uniform in
``snr_range`` (per acquisition). Motion: image n of an acquisition shows the anatomy of image 0
rotated about the LV centre (up to +-3 deg) and shifted (up to +-4 px; per-axis SD 0.3-1.5 px),
rendered in that pose (the partial volumes of the moved shapes; no resampling, which blurred
the moved images and not image 0: on noise-free T2 phantoms that inconsistency alone gave a
slice-level T2 error of SD 0.9-1.2 ms through the offset estimate) before the noise;
``truth/shift_px`` [N, 2] holds the (rows, cols) translation, ``truth/rotation_deg`` [N] the
rotation (counter-clockwise on screen). The masks are the moved
myocardium fraction >= 0.5, so ``masks[0] == (truth/labels == 1)``.

File layout (one file per modality; extra datasets and attrs beyond the contract)::

    /<case_id>/<slice_id>/images, masks, ti_ms | te_ms        the mapping contract
    /<case_id>/<slice_id>/truth/labels        uint8 [H, W]    0 air/lung, 1 myocardium, 2 LV blood,
                                                              3 RV blood, 4 papillary, 5 other
    /<case_id>/<slice_id>/truth/t1_ms | t2_ms float32 [H, W]  true T1 (native or post) / T2 of the
                                                              pixel's main tissue; NaN where label 0
    /<case_id>/<slice_id>/truth/ecv_percent   float32 [H, W]  post file: myocardial ECV (%), NaN
                                                              outside the myocardium
    /<case_id>/<slice_id>/truth/shift_px      float32 [N, 2]; truth/rotation_deg float32 [N]
    attrs on /<case_id>:  patient_id, hematocrit, pixel_mm, blood T1s, delta_r1_blood_per_s, ...
    attrs on the slice:   level, modality, sequence (stone | molli | shmolli | sasha | t2prep),
                          rv_insertion_deg (anterior RV insertion point, degrees
                          counter-clockwise from the +column axis about the LV centre of image 0,
                          rows pointing down), rv_inferior_insertion_deg, lv_center_rc, snr,
                          noise_sigma, t1_blood_ms | t2_blood_ms, myo_*_mean, oedema, ...;
                          molli / shmolli: scheme, heart_rate_bpm, rr_intervals_ms,
                          readout_rate_per_s; sasha: heart_rate_bpm, saturation_efficiency

Case ids ``case_0000``..., patient ids ``P0000``..., slice ids ``slice_0``... (basal first).
Patient p's data depend only on (seed, p), not on how many patients are written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from datamodules.synthetic.rician_noise import add_rician_noise
from datamodules.synthetic.sequence_signals import (
    MOLLI_SCHEMES,
    SHMOLLI_SCHEME,
    beat_intervals_ms,
    inversion_recovery_signal,
    look_locker_schedule,
    look_locker_signal,
    parse_scheme,
    sasha_times,
    saturation_recovery_signal,
    t2prep_signal,
)
from formats.atomic_file import atomic_write

MODALITIES = ("t1_native", "t2", "post_contrast")
SEQUENCES = ("stone", "molli", "shmolli", "sasha")
"""T1 sequences the phantoms simulate (module docstring); ``stone`` is the default."""
TI_NATIVE_MS = (100.0, 180.0, 260.0, 350.0, 500.0, 700.0, 1000.0, 1400.0, 2000.0, 2700.0, 3500.0)
TI_POST_MS = (50.0, 90.0, 130.0, 180.0, 250.0, 350.0, 480.0, 650.0, 850.0, 1100.0, 1500.0)
TE_T2_MS = (0.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 55.0, 60.0)
LEVELS = ("basal", "mid", "apical")
# internal tissues (painter's order is set in _geometry); label = LABEL_OF_TISSUE[tissue]
TISSUES = (
    "air", "lung", "fat", "muscle", "liver", "rv_wall", "myo", "lv_blood", "rv_blood", "papillary",
    "aorta",
)  # fmt: skip
AIR, LUNG, FAT, MUSCLE, LIVER, RV_WALL, MYO, LV_BLOOD, RV_BLOOD, PAPILLARY, AORTA = range(11)
LABEL_OF_TISSUE = np.array([0, 0, 5, 5, 5, 5, 1, 2, 3, 4, 5], np.int64)
LABEL_NAMES = ("background", "myocardium", "lv_blood", "rv_blood", "papillary", "other")
# nominal 1.5 T values (native T1 ms, T2 ms, relative proton density, ECV fraction) of the tissues
# with uniform properties; myocardium and blood are drawn per patient
NOMINAL = {
    LUNG: (1200.0, 35.0, 0.08, 0.30),
    FAT: (270.0, 80.0, 0.90, 0.05),
    MUSCLE: (1010.0, 35.0, 0.70, 0.12),
    LIVER: (580.0, 45.0, 0.75, 0.28),
}
PD_MYO, PD_BLOOD = 0.80, 0.95
DEFAULT_SLICES = 5
# Bumped whenever the generator's output changes: cached files of another version are rewritten
# (file attr ``generator_version``; see :func:`mapping_phantoms_current`).
GENERATOR_VERSION = 3


def slice_level(index: int, n_slices: int) -> str:
    """Level of slice ``index`` of ``n_slices`` (basal first): position index/n < 0.4 basal,
    < 0.8 mid, else apical (5 slices: 2 basal, 2 mid, 1 apical)."""
    pos = index / n_slices
    return "basal" if pos < 0.4 else "mid" if pos < 0.8 else "apical"


@dataclass(frozen=True)
class PhantomAcquisition:
    """One simulated weighted-image series of a slice (one modality).

    images: float32 [N, H, W] magnitude images; masks: uint8 [N, H, W] myocardium per image.
    times_ms: float32 [N] inversion times (T1) or T2-prep echo times (T2), strictly increasing.
    truth_ms: float32 [H, W] true T1 (native or post) or T2 in ms, geometry of image 0.
    ecv_percent: float32 [H, W] (post_contrast only) myocardial ECV, NaN outside the myocardium.
    shift_px: float32 [N, 2] (rows, cols) translation of image n; rotation_deg: float32 [N].
    attrs: slice attributes (level, modality, rv_insertion_deg, snr, ...).
    """

    images: np.ndarray
    masks: np.ndarray
    times_ms: np.ndarray
    truth_ms: np.ndarray
    ecv_percent: np.ndarray | None
    shift_px: np.ndarray
    rotation_deg: np.ndarray
    attrs: dict


@dataclass(frozen=True)
class PhantomSlice:
    """One slice of a patient: its tissue labels and the three acquisitions keyed by modality."""

    labels: np.ndarray
    acquisitions: dict[str, PhantomAcquisition]


@dataclass(frozen=True)
class PhantomPatient:
    """One patient: case attrs (patient_id, hematocrit, ...) and its slices, basal first."""

    case_attrs: dict
    slices: list[PhantomSlice] = field(default_factory=list)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    """Angle wrapped to [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _ramp(signed_distance: np.ndarray, width_px: float) -> np.ndarray:
    """Partial-volume fraction of a shape from its signed distance (px, negative inside)."""
    return np.clip(0.5 - signed_distance / np.float32(width_px), 0.0, 1.0)


def _ellipse_sd(x, y, cx, cy, a, b, rot=0.0) -> np.ndarray:
    """Approximate signed distance (px) to an ellipse (centre, semi-axes a, b px, angle rad):
    (rho - 1) / |grad rho| with rho the normalised radius; exact on circles, close near the
    boundary of ellipses (all that the partial-volume ramp needs)."""
    co, si = np.float32(np.cos(rot)), np.float32(np.sin(rot))
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    pa = (co * dx + si * dy) * np.float32(1 / a)
    qb = (co * dy - si * dx) * np.float32(1 / b)
    rho = np.sqrt(pa * pa + qb * qb)
    grad = np.sqrt((pa / np.float32(a)) ** 2 + (qb / np.float32(b)) ** 2) / np.maximum(rho, 1e-6)
    return (rho - 1) / np.maximum(grad, 1e-6)


def _sample_patient(rng: np.random.Generator, n_slices: int) -> dict:
    """Per-patient anatomy, tissue properties and acquisition gains (lengths in mm)."""
    u = rng.uniform
    width = int(rng.integers(176, 257))
    height = int(rng.integers(160, width + 1))
    pixel_mm = u(340, 400) / width
    hct = u(0.35, 0.50)
    t1_blood = float(np.clip(1580 - 700 * (hct - 0.42) + rng.normal(0, 25), 1480, 1680))
    elevated = rng.random() < 1 / 3
    ecv = u(29, 38) if elevated else float(np.clip(rng.normal(26, 1.8), 22, 28.9))
    t2_elevated = rng.random() < 0.12  # diffuse oedema / inflammation
    t2_myo = u(57, 63) if t2_elevated else float(np.clip(rng.normal(50.5, 2.5), 45, 56))
    t1_myo = float(np.clip(rng.normal(1015, 35) + 6 * (ecv - 26), 950, 1100))
    tissues = {
        k: np.array(v) * [u(0.95, 1.05), u(0.95, 1.05), u(0.9, 1.1), 1] for k, v in NOMINAL.items()
    }
    k_coil = int(rng.integers(2, 5))
    return {
        "shape": (height, width),
        "pixel_mm": pixel_mm,
        "body_c": (u(-0.04, 0.04) * width, u(-0.04, 0.04) * height),  # px from image centre
        "body_ab_mm": (u(150, 180), u(105, 130)),
        "body_rot": u(-0.15, 0.15),
        "fat_mm": u(4, 15),
        "muscle_mm": u(8, 16),
        "lv_c": (u(0.0, 0.12) * width, u(-0.08, 0.05) * height),  # X right, Y up, px
        "lv_psi": u(0, np.pi),
        "lv_k": u(0.86, 1.0),
        "epi_mm": u(24, 31),
        "wall_mm": u(7.5, 11),
        "wall_harm": (u(0, 0.12), u(0, 2 * np.pi)),
        "rv_phi": np.deg2rad(u(160, 205)),
        "rv_dist": u(0.6, 0.85),  # x R_epi
        "rv_ab": (u(0.95, 1.3), u(0.65, 0.9)),  # tangential, radial semi-axes x R_epi
        "rv_wall_mm": u(3, 4),
        "pm_angles": (u(30, 60), -u(70, 110)),  # deg from the direction opposite the RV
        "pm_radius_mm": (u(3, 5.5), u(3, 5.5)),
        "pm_dist": (u(0.5, 0.72), u(0.5, 0.72)),  # x R_endo
        "liver": (u(0.05, 0.3), u(0.25, 0.5), u(0.35, 0.55), u(0.3, 0.45), u(-0.4, 0.4))
        if rng.random() < 0.85
        else None,
        # descending aorta: (offset right mm, distance below the LV epicardium mm, radius mm)
        "aorta": (u(-10, 20), u(12, 35), u(9, 14)) if rng.random() < 0.9 else None,
        "mediastinum": (int(rng.choice([FAT, MUSCLE])), u(1.5, 2.0), u(0.2, 0.6))
        if rng.random() < 0.6
        else None,
        "coil": np.stack(
            [
                u(0, 2 * np.pi, k_coil),
                u(0.9, 1.3, k_coil),
                u(0.4, 1.2, k_coil),
                u(0.3, 0.6, k_coil),
            ],
            1,
        ),
        "hct": hct,
        "t1_blood": t1_blood,
        "t2_blood": u(200, 250),
        "t1_blood_post": u(260, 420),
        "myo": {
            "t1": t1_myo,
            "t2": t2_myo,
            "ecv": ecv,
            "ecv_elevated": elevated,
            "t2_elevated": t2_elevated,
        },  # fmt: skip
        "oedema": (
            u(0, 2 * np.pi),
            np.deg2rad(u(25, 50)),
            u(8, 20),
            u(40, 100),
            u(3, 10),
            rng.random() < 0.5,
        )
        if rng.random() < 0.2
        else None,  # fmt: skip
        "oedema_slices": rng.random(n_slices) < 0.7,
        "tissues": tissues,
        "gain": {m: float(np.exp(u(np.log(300), np.log(3000)))) for m in MODALITIES},
        "t2_offset": u(0.0, 0.04),
    }


def _coil_map(pt: dict, x: np.ndarray, y: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Coil sensitivity float32 [H, W]: Gaussian elements on the body surface, mean 1 in body."""
    a, b = (s / pt["pixel_mm"] for s in pt["body_ab_mm"])
    cx, cy = pt["body_c"]
    coil = np.full(x.shape, 0.35, np.float32)
    for ang, grow, weight, width in pt["coil"]:
        ex, ey = cx + grow * a * np.cos(ang), cy + grow * b * np.sin(ang)
        s2 = np.float32(2 * (width * 0.5 * (a + b)) ** 2)
        coil += np.float32(weight) * np.exp(-((x - ex) ** 2 + (y - ey) ** 2) / s2)
    return coil / coil[body].mean()


def _geometry(
    pt: dict, rng: np.random.Generator, index: int, n_slices: int, pose: Pose | None = None
) -> dict:
    """Tissue fractions [K, H, W] of one slice and the myocardial maps: the image-0 geometry, or,
    with ``pose``, the same anatomy (same ``rng`` draws) rigidly moved (:class:`Pose`)."""
    u = rng.uniform
    pos = index / n_slices
    mm = pt["pixel_mm"]
    height, width = pt["shape"]
    y = ((height - 1) / 2 - np.arange(height, dtype=np.float32))[:, None]  # up, px
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, :]  # right, px
    x, y = np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))
    if pose is not None:  # the anatomy point each pixel shows
        x, y = pose.source_xy(x, y)
    pv = u(1.0, 1.8)  # partial-volume ramp width, px
    layers: list[tuple[int, np.ndarray]] = []  # (tissue, fraction) in painter's order

    # body, chest wall, thoracic cavity (lung), liver
    bcx, bcy = pt["body_c"]
    ba, bb = (s / mm for s in pt["body_ab_mm"])
    rot = pt["body_rot"]
    layers.append((FAT, _ramp(_ellipse_sd(x, y, bcx, bcy, ba, bb, rot), pv)))
    fat, mus = pt["fat_mm"] / mm, pt["muscle_mm"] / mm
    layers.append((MUSCLE, _ramp(_ellipse_sd(x, y, bcx, bcy, ba - fat, bb - fat, rot), pv)))
    cav_a, cav_b = ba - fat - mus, bb - fat - mus
    layers.append((LUNG, _ramp(_ellipse_sd(x, y, bcx, bcy, cav_a, cav_b, rot), pv)))
    if pt["liver"] is not None:
        lx, ly, la, lb, lrot = pt["liver"]
        scale = 0.7 + 0.5 * pos
        sd = _ellipse_sd(x, y, bcx - lx * cav_a, bcy - ly * cav_b, la * cav_a * scale,
                         lb * cav_b * scale, lrot)  # fmt: skip
        cavity = _ramp(_ellipse_sd(x, y, bcx, bcy, cav_a, cav_b, rot), pv)
        layers.append((LIVER, _ramp(sd, pv) * cavity))

    # LV ring in a frame centred on the LV: r in axis-scaled coordinates, theta global angle
    shrink, thin = 1 - 0.45 * pos**2, 1 - 0.3 * pos
    epi0 = pt["epi_mm"] * shrink * u(0.97, 1.03) / mm
    wall0 = pt["wall_mm"] * thin * u(0.95, 1.05) / mm
    endo0 = epi0 - wall0
    lcx = pt["lv_c"][0] + u(-2, 2)
    lcy = pt["lv_c"][1] + u(-2, 2)
    k = float(np.clip(pt["lv_k"] + u(-0.02, 0.02), 0.84, 1.0))
    psi = pt["lv_psi"] + u(-0.2, 0.2)
    dx, dy = x - np.float32(lcx), y - np.float32(lcy)
    theta = np.arctan2(dy, dx)
    cp, sp, sk = np.float32(np.cos(psi)), np.float32(np.sin(psi)), np.float32(np.sqrt(k))
    r = np.hypot((cp * dx + sp * dy) * sk, (cp * dy - sp * dx) / sk)
    harm = [(u(0, 0.04), u(0, 2 * np.pi)) for _ in range(3)]  # endocardial harmonics m = 2..4

    def endo_radius(t):
        return endo0 * (1 + sum(h * np.cos((m + 2) * t + ph) for m, (h, ph) in enumerate(harm)))

    amp_w, ph_w = pt["wall_harm"]
    thinning = (u(0, 2 * np.pi), np.deg2rad(u(15, 35)), u(0.15, 0.45)) if u() < 0.5 else None

    def wall(t):
        w = wall0 * (1 + amp_w * np.cos(t - ph_w))
        if thinning is not None:
            c, s, depth = thinning
            w = w * (1 - depth * np.exp(-((_wrap(t - c) / s) ** 2)))
        return np.maximum(w, 2.0)

    r_endo = endo_radius(theta).astype(np.float32)
    r_wall = wall(theta).astype(np.float32)
    f_epi, f_endo = _ramp(r - (r_endo + r_wall), pv), _ramp(r - r_endo, pv)
    transmural = np.clip((r - r_endo) / r_wall, 0, 1)

    # descending aorta below the heart, mediastinal rim around it, RV crescent with its free wall
    if pt["aorta"] is not None:
        ax_mm, ay_mm, ar_mm = pt["aorta"]
        acx, acy = lcx + ax_mm / mm, lcy - epi0 - (ay_mm + ar_mm) / mm
        sd = np.hypot(x - np.float32(acx), y - np.float32(acy)) - np.float32(ar_mm / mm)
        layers.append((AORTA, _ramp(sd, pv)))
    phi = pt["rv_phi"] + u(-0.1, 0.1)
    e_phi = np.array([np.cos(phi), np.sin(phi)])
    if pt["mediastinum"] is not None:
        tissue, size, offset = pt["mediastinum"]
        mc = np.array([lcx, lcy]) + offset * epi0 * e_phi
        sd = _ellipse_sd(x, y, mc[0], mc[1], size * epi0 * 1.2, size * epi0, phi + np.pi / 2)
        layers.append((tissue, _ramp(sd, pv)))
    rv_scale = 1 - 0.45 * pos
    rc = np.array([lcx, lcy]) + pt["rv_dist"] * epi0 * e_phi
    ra, rb = (s * epi0 * rv_scale for s in pt["rv_ab"])
    rw = pt["rv_wall_mm"] / mm
    rv_outer = (ra + rw, max(rb + rw, pt["rv_dist"] * epi0 - 0.5 * wall0 + rw))
    sd_out = _ellipse_sd(x, y, rc[0], rc[1], *rv_outer, phi + np.pi / 2)
    layers.append((RV_WALL, _ramp(sd_out, pv)))
    sd_in = _ellipse_sd(x, y, rc[0], rc[1], ra, rb, phi + np.pi / 2)
    layers.append((RV_BLOOD, _ramp(sd_in, pv)))
    layers.append((MYO, f_epi))
    layers.append((LV_BLOOD, f_endo))

    # papillary muscles in the LV blood pool (not at the apex, rarely at the very base)
    papillary = 0.15 <= pos < 0.75 or (pos < 0.15 and u() < 0.3)
    n_pm = 0
    if papillary:
        for ang_deg, rad_mm, dist in zip(pt["pm_angles"], pt["pm_radius_mm"], pt["pm_dist"],
                                         strict=True):  # fmt: skip
            ang = phi + np.pi + np.deg2rad(ang_deg + u(-10, 10))
            d = dist * float(endo_radius(ang))
            radius = rad_mm * u(0.85, 1.1) / mm
            sd = np.hypot(
                x - np.float32(lcx + d * np.cos(ang)), y - np.float32(lcy + d * np.sin(ang))
            )
            layers.append((PAPILLARY, _ramp(sd - np.float32(radius), pv) * f_endo))
            n_pm += 1

    # painter's order: fraction of layer i = f_i * prod_{j > i} (1 - f_j); air fills the rest
    frac = np.zeros((len(TISSUES), height, width), np.float32)
    cover = np.ones((height, width), np.float32)
    for tissue, f in reversed(layers):
        frac[tissue] += f * cover
        cover *= 1 - f
    frac[AIR] += cover

    # anterior / inferior RV insertion points: ends of the arc of the epicardium inside the RV
    # (outer wall) ellipse, on a 0.05 deg grid of global angles
    t = np.deg2rad(np.arange(0, 360, 0.05))
    e = np.stack([np.cos(t), np.sin(t)])
    scaled = np.hypot((np.cos(psi) * e[0] + np.sin(psi) * e[1]) * np.sqrt(k),
                      (np.cos(psi) * e[1] - np.sin(psi) * e[0]) / np.sqrt(k))  # fmt: skip
    epi_r = (endo_radius(t) + wall(t)) / scaled
    pts = np.array([lcx, lcy])[:, None] + epi_r * e
    inside = _ellipse_sd(pts[0], pts[1], rc[0], rc[1], *rv_outer, phi + np.pi / 2) <= 0
    offsets = _wrap(t[inside] - phi)
    ends = phi + np.array([offsets.min(), offsets.max()])
    anterior = ends[np.argmax(np.sin(ends))]
    inferior = ends[np.argmin(np.sin(ends))]
    return {
        "frac": frac,
        "theta": theta,
        "transmural": transmural,
        "lv_center_xy": (lcx, lcy),
        "pv_px": pv,
        "level": slice_level(index, n_slices),
        "position": pos,
        "rv_insertion_deg": float(np.rad2deg(anterior) % 360),
        "rv_inferior_insertion_deg": float(np.rad2deg(inferior) % 360),
        "n_papillary": n_pm,
        "local_thinning": thinning is not None,
        "epi_radius_px": epi0,
        "wall_px": wall0,
    }


def _myo_maps(pt: dict, geo: dict, rng: np.random.Generator, index: int) -> dict:
    """Per-pixel myocardial native T1 (ms), T2 (ms), ECV (fraction) float32 [H, W]: patient base
    + slice offset + angular harmonics m = 1, 2 + optional oedema region."""
    theta, trans = geo["theta"], geo["transmural"]
    base = pt["myo"]
    out = {}
    spread = {"t1": (15.0, 20.0), "t2": (1.0, 1.5), "ecv": (0.8, 1.0)}  # slice SD, harmonic amp
    for key, (sd_slice, amp) in spread.items():
        value = base[key] + rng.normal(0, sd_slice)
        field_ = np.full(theta.shape, value, np.float32)
        for m in (1, 2):
            field_ += np.float32(rng.uniform(0, amp)) * np.cos(
                m * theta + rng.uniform(0, 2 * np.pi)
            )
        out[key] = field_
    oedema = pt["oedema"] is not None and bool(pt["oedema_slices"][index])
    if oedema:
        centre, width, d_t2, d_t1, d_ecv, subendo = pt["oedema"]
        weight = np.exp(-((_wrap(theta - centre) / width) ** 2)).astype(np.float32)
        if subendo:
            weight *= np.clip(1.4 - trans, 0, 1)
        out["t2"] += np.float32(d_t2) * weight
        out["t1"] += np.float32(d_t1) * weight
        out["ecv"] += np.float32(d_ecv) * weight
    out["t1"] = np.clip(out["t1"], 850, 1300)
    out["t2"] = np.clip(out["t2"], 38, 85)
    out["ecv"] = np.clip(out["ecv"], 15, 55) / 100
    out["oedema"] = oedema
    return out


def _tissue_table(pt: dict, myo: dict) -> dict[str, np.ndarray]:
    """Uniform properties per tissue [K]: native T1 ms, T2 ms, PD, ECV (myocardium: slice mean)."""
    t1 = np.zeros(len(TISSUES))
    t2, pd, ecv = np.zeros_like(t1), np.zeros_like(t1), np.zeros_like(t1)
    for k, (a, b, c, d) in pt["tissues"].items():
        t1[k], t2[k], pd[k], ecv[k] = a, b, c, d
    t1[AIR], t2[AIR], pd[AIR], ecv[AIR] = 1000.0, 50.0, 0.0, 0.0
    mean_t1, mean_t2, mean_ecv = (float(np.mean(myo[k])) for k in ("t1", "t2", "ecv"))
    for k in (MYO, RV_WALL, PAPILLARY):
        t1[k], t2[k], pd[k], ecv[k] = (
            pt["myo"]["t1"],
            pt["myo"]["t2"],
            PD_MYO,
            pt["myo"]["ecv"] / 100,
        )
    t1[MYO], t2[MYO], ecv[MYO] = mean_t1, mean_t2, mean_ecv
    for k in (LV_BLOOD, RV_BLOOD, AORTA):
        t1[k], t2[k], pd[k], ecv[k] = pt["t1_blood"], pt["t2_blood"], PD_BLOOD, 1 - pt["hct"]
    return {"t1": t1, "t2": t2, "pd": pd, "ecv": ecv}


def delta_r1_blood_per_ms(pt: dict) -> float:
    """Gd-induced change of blood R1 (1/ms) of a patient: 1/T1_blood_post - 1/T1_blood_native."""
    return 1 / pt["t1_blood_post"] - 1 / pt["t1_blood"]


def _sample_heart(seed: int, patient: int) -> dict:
    """The patient's heart and readout (its own random stream, so the anatomy, motion and noise
    draws are the same for every sequence): heart rate, beat-to-beat RR variability, the
    Look-Locker readout's extra relaxation rate (1/ms) and SASHA's saturation efficiency."""
    rng = _rng(seed, patient, 0)
    return {
        "heart_rate_bpm": float(rng.uniform(50, 90)),
        "rr_variability": float(rng.uniform(0.01, 0.05)),
        "readout_rate_per_ms": 1.0 / float(rng.uniform(2500, 4000)),
        "saturation_efficiency": float(rng.uniform(0.95, 1.0)),
    }


def _t1_readout(
    sequence: str,
    modality: str,
    stone_times: np.ndarray,
    heart: dict,
    rng: np.random.Generator,
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], dict]:
    """Times (sorted, as stored), the signal per unit M0 of a T1 map [*S] -> [N, *S] in that
    order, and the slice attrs of one T1 acquisition with ``sequence``."""
    if sequence == "stone":
        return stone_times, lambda t1: inversion_recovery_signal(stone_times, t1), {}
    attrs = {"heart_rate_bpm": heart["heart_rate_bpm"]}
    if sequence == "sasha":
        ts = sasha_times(60_000.0 / heart["heart_rate_bpm"])
        order = np.argsort(ts, kind="stable")
        attrs["saturation_efficiency"] = heart["saturation_efficiency"]
        return ts[order].astype(np.float32), lambda t1: saturation_recovery_signal(
            ts[order], t1, efficiency=heart["saturation_efficiency"]
        ), attrs  # fmt: skip
    scheme = MOLLI_SCHEMES[modality] if sequence == "molli" else SHMOLLI_SCHEME
    images, rests = parse_scheme(scheme)
    rr = beat_intervals_ms(rng, heart["heart_rate_bpm"], sum(images) + sum(rests),
                           heart["rr_variability"])  # fmt: skip
    schedule = look_locker_schedule(scheme, rr)
    order = np.argsort(schedule.ti_ms, kind="stable")
    attrs |= {"scheme": scheme, "rr_intervals_ms": rr,
              "readout_rate_per_s": 1000.0 * heart["readout_rate_per_ms"]}  # fmt: skip
    return schedule.ti_ms[order].astype(np.float32), lambda t1: look_locker_signal(
        schedule, t1, heart["readout_rate_per_ms"]
    )[order], attrs  # fmt: skip


@dataclass(frozen=True)
class Pose:
    """A rigid motion of the anatomy: rotation by ``rotation_deg`` (counter-clockwise on screen)
    about ``center_xy`` (px; x right, y up from the image centre), then a shift of ``shift_rc``
    (rows, cols; px)."""

    center_xy: tuple[float, float]
    shift_rc: tuple[float, float]
    rotation_deg: float

    def source_xy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The anatomy coordinates (image-0 frame) shown at pixel coordinates (x, y)."""
        ang = np.deg2rad(self.rotation_deg)
        co, si = np.float32(np.cos(ang)), np.float32(np.sin(ang))
        cx, cy = (np.float32(v) for v in self.center_xy)
        dx = x - cx - np.float32(self.shift_rc[1])
        dy = y - cy + np.float32(self.shift_rc[0])
        return cx + co * dx + si * dy, cy - si * dx + co * dy


def _acquire(
    pt: dict,
    geo: dict,
    myo: dict,
    table: dict,
    coil: np.ndarray,
    labels: np.ndarray,
    modality: str,
    rng: np.random.Generator,
    noise: bool,
    motion: bool,
    snr_range: tuple[float, float],
    sequence: str = "stone",
    heart: dict | None = None,
    sequence_rng: np.random.Generator | None = None,
    render: Callable[[Pose], tuple[np.ndarray, dict]] | None = None,
) -> PhantomAcquisition:
    """Weighted images, masks and truth of one slice for one modality (T1: with ``sequence``,
    the patient's ``heart`` and a random stream for the beat intervals). With motion, image n
    shows the anatomy re-rendered in its pose by ``render(pose) -> (fractions, myocardial
    maps)`` (partial volume of the moved shapes, no resampling blur)."""
    frac = geo["frac"]
    height, width = labels.shape
    hct, dr1b = pt["hct"], delta_r1_blood_per_ms(pt)
    is_t2 = modality == "t2"
    sequence_attrs: dict = {"sequence": "t2prep"}
    if is_t2:
        times = np.array(TE_T2_MS, np.float32)
        values = table["t2"]
        offset = pt["t2_offset"]

        def unit_signal(t2: np.ndarray) -> np.ndarray:
            return t2prep_signal(times, t2, offset_fraction=offset)
    else:
        nominal = np.array(TI_NATIVE_MS if modality == "t1_native" else TI_POST_MS)
        # drawn for every sequence, so the motion and noise draws below are the same
        stone_times = np.sort(nominal * rng.uniform(0.97, 1.03, nominal.size)).astype(np.float32)
        times, unit_signal, sequence_attrs = _t1_readout(
            sequence, modality, stone_times, heart or {}, sequence_rng or rng
        )
        sequence_attrs["sequence"] = sequence
        values = table["t1"]
        if modality == "post_contrast":
            values = 1 / (1 / values + table["ecv"] / (1 - hct) * dr1b)
            values[[LV_BLOOD, RV_BLOOD, AORTA]] = pt["t1_blood_post"]

    def myocardial_values(maps: dict) -> np.ndarray:  # T1 (native or post) or T2 per pixel
        if is_t2:
            return maps["t2"]
        if modality == "post_contrast":
            return 1 / (1 / maps["t1"] + maps["ecv"] / (1 - hct) * np.float32(dr1b))
        return maps["t1"]

    myo_values = myocardial_values(myo)
    amp = pt["gain"][modality] * table["pd"]  # [K]
    # signed noise-free images: uniform tissues by a matrix product, myocardium per pixel
    curves = (unit_signal(values.astype(np.float32)) * amp).astype(np.float32)  # [N, K]

    def images_of(fractions: np.ndarray, myo_t: np.ndarray, which: slice) -> np.ndarray:
        uniform = fractions.copy()
        uniform[MYO] = 0
        img = np.tensordot(curves[which], uniform, axes=(1, 0))  # [n, H, W]
        rows, cols = np.nonzero(fractions[MYO] > 0)
        img[:, rows, cols] += (
            fractions[MYO, rows, cols] * np.float32(amp[MYO])
            * unit_signal(myo_t[rows, cols])[which]
        ).astype(np.float32)  # fmt: skip
        return img

    img = images_of(frac, myo_values, slice(None))
    n = times.size
    lcx, lcy = geo["lv_center_xy"]
    center_rc = ((height - 1) / 2 - lcy, lcx + (width - 1) / 2)
    shift = np.zeros((n, 2), np.float32)
    rot = np.zeros(n, np.float32)
    myo_frac = np.broadcast_to(frac[MYO], (n, height, width)).copy()
    if motion:
        sd = rng.uniform(0.3, 1.5)
        shift[1:] = np.clip(rng.normal(0, sd, (n - 1, 2)), -4, 4)
        rot[1:] = np.clip(rng.normal(0, rng.uniform(0, 1.5), n - 1), -3, 3)
        if render is None:
            raise ValueError("motion needs render (the anatomy in a pose)")
        for k in range(1, n):
            pose = Pose((lcx, lcy), (float(shift[k, 0]), float(shift[k, 1])), float(rot[k]))
            moved, moved_maps = render(pose)
            img[k] = images_of(moved, myocardial_values(moved_maps), slice(k, k + 1))[0]
            myo_frac[k] = moved[MYO]
    if not is_t2:
        img = np.abs(img)
    img *= coil
    snr = float(np.exp(rng.uniform(*np.log(snr_range))))
    sigma = float(amp[MYO]) / snr
    images = add_rician_noise(rng, img, sigma) if noise else img.astype(np.float32)
    masks = (myo_frac >= 0.5).astype(np.uint8)

    # truth in image-0 geometry: the main non-myocardial tissue, myocardium where label == 1
    dominant = np.argmax(np.where(np.arange(len(TISSUES))[:, None, None] == MYO, -1, frac), 0)
    truth = values.astype(np.float32)[dominant]
    truth[labels == 1] = myo_values[labels == 1]
    truth[labels == 0] = np.nan
    ecv = None
    if modality == "post_contrast":
        ecv = np.where(labels == 1, 100 * myo["ecv"], np.nan).astype(np.float32)
    in_myo = labels == 1
    attrs = {
        "level": geo["level"],
        "modality": modality,
        "rv_insertion_deg": geo["rv_insertion_deg"],
        "rv_inferior_insertion_deg": geo["rv_inferior_insertion_deg"],
        "lv_center_rc": np.array(center_rc, np.float64),
        "slice_position": geo["position"],
        "snr": snr,
        "noise_sigma": sigma if noise else 0.0,
        "signal_gain": pt["gain"][modality],
        "partial_volume_px": geo["pv_px"],
        "n_papillary": geo["n_papillary"],
        "local_thinning": geo["local_thinning"],
        "oedema": myo["oedema"],
        "epi_radius_px": geo["epi_radius_px"],
        "wall_thickness_px": geo["wall_px"],
        **sequence_attrs,
    }
    if is_t2:
        attrs |= {"t2_offset_fraction": pt["t2_offset"], "t2_blood_ms": pt["t2_blood"],
                  "myo_t2_mean_ms": float(myo["t2"][in_myo].mean())}  # fmt: skip
    elif modality == "t1_native":
        attrs |= {"t1_blood_ms": pt["t1_blood"], "myo_t1_mean_ms": float(myo_values[in_myo].mean())}
    else:
        attrs |= {
            "t1_blood_ms": pt["t1_blood_post"],
            "myo_t1_mean_ms": float(myo_values[in_myo].mean()),
            "myo_ecv_mean_percent": float(100 * myo["ecv"][in_myo].mean()),
        }
    return PhantomAcquisition(
        images=images.astype(np.float32),
        masks=masks,
        times_ms=times,
        truth_ms=truth.astype(np.float32),
        ecv_percent=ecv,
        shift_px=shift,
        rotation_deg=rot,
        attrs=attrs,
    )


def _labels(frac: np.ndarray) -> np.ndarray:
    """Tissue labels uint8 [H, W]: 1 where the myocardium fraction >= 0.5, else the label whose
    tissues (summed) cover most of the pixel."""
    grouped = np.zeros((len(LABEL_NAMES), *frac.shape[1:]), np.float32)
    for tissue, label in enumerate(LABEL_OF_TISSUE):
        grouped[label] += frac[tissue]
    grouped[1] = -1
    labels = np.argmax(grouped, 0).astype(np.uint8)
    labels[frac[MYO] >= 0.5] = 1
    return labels


def simulate_mapping_patient(
    seed: int,
    patient: int,
    slices_per_patient: int = DEFAULT_SLICES,
    noise: bool = True,
    motion: bool = True,
    snr_range: tuple[float, float] = (10.0, 60.0),
    sequence: str = "stone",
) -> PhantomPatient:
    """Simulate all slices and the three acquisitions of patient ``patient`` (depends only on
    ``seed`` and ``patient``).

    Args:
        seed, patient: the patient's random stream is SeedSequence(seed, (patient,)).
        slices_per_patient: slices basal -> apical.
        noise: add Rician noise (False: the noise-free magnitude images).
        motion: move images 1.. against image 0 (False: all images in image-0 geometry).
        snr_range: (low, high) of the log-uniform SNR = myocardial amplitude (M0) / noise SD.
        sequence: T1 sequence of the native and post-contrast acquisitions (:data:`SEQUENCES`).
    """
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got {sequence!r}")
    pt = _sample_patient(_rng(seed, patient), slices_per_patient)
    heart = _sample_heart(seed, patient)
    height, width = pt["shape"]
    y = ((height - 1) / 2 - np.arange(height, dtype=np.float32))[:, None]
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, :]
    a, b = (s / pt["pixel_mm"] for s in pt["body_ab_mm"])
    x2, y2 = np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width))
    body = _ellipse_sd(x2, y2, *pt["body_c"], a, b, pt["body_rot"]) <= 0
    coil = _coil_map(pt, x2, y2, body)
    slices = []
    for j in range(slices_per_patient):
        rng = _rng(seed, patient, j + 1)
        geo = _geometry(pt, rng, j, slices_per_patient)
        myo = _myo_maps(pt, geo, rng, j)

        def render(pose: Pose, j: int = j) -> tuple[np.ndarray, dict]:
            """The slice's anatomy (the same draws) in ``pose``."""
            replay = _rng(seed, patient, j + 1)
            moved = _geometry(pt, replay, j, slices_per_patient, pose)
            return moved["frac"], _myo_maps(pt, moved, replay, j)

        table = _tissue_table(pt, myo)
        labels = _labels(geo["frac"])
        acquisitions = {
            m: _acquire(
                pt,
                geo,
                myo,
                table,
                coil,
                labels,
                m,
                _rng(seed, patient, j + 1, i + 1),
                noise,
                motion,
                snr_range,
                sequence,
                heart,
                _rng(seed, patient, j + 1, i + 1, 1),
                render,
            )  # fmt: skip
            for i, m in enumerate(MODALITIES)
        }
        slices.append(PhantomSlice(labels=labels, acquisitions=acquisitions))
    case_attrs = {
        "patient_id": f"P{patient:04d}",
        "hematocrit": pt["hct"],
        "pixel_mm": pt["pixel_mm"],
        "t1_blood_native_ms": pt["t1_blood"],
        "t1_blood_post_ms": pt["t1_blood_post"],
        "delta_r1_blood_per_s": 1000 * delta_r1_blood_per_ms(pt),
        "myo_ecv_elevated": pt["myo"]["ecv_elevated"],
        "myo_t2_elevated": pt["myo"]["t2_elevated"],
        "oedema": pt["oedema"] is not None,
        "heart_rate_bpm": heart["heart_rate_bpm"],
    }
    return PhantomPatient(case_attrs=case_attrs, slices=slices)


def mapping_phantom_paths(
    directory: str | Path,
    n_patients: int,
    seed: int,
    slices_per_patient: int = DEFAULT_SLICES,
    noise: bool = True,
    motion: bool = True,
    sequence: str = "stone",
) -> dict[str, Path]:
    """File of each modality: ``mapping_<modality>_p{n}_seed{seed}.h5``, with ``_s{k}`` when
    ``slices_per_patient != 5``, ``_nonoise`` / ``_nomotion`` when those are off and
    ``_<sequence>`` for a T1 sequence other than STONE."""
    suffix = f"_s{slices_per_patient}" if slices_per_patient != DEFAULT_SLICES else ""
    suffix += ("" if noise else "_nonoise") + ("" if motion else "_nomotion")
    suffix += "" if sequence == "stone" else f"_{sequence}"
    directory = Path(directory)
    return {m: directory / f"mapping_{m}_p{n_patients}_seed{seed}{suffix}.h5" for m in MODALITIES}


def mapping_phantoms_current(paths: dict[str, Path]) -> bool:
    """Whether every file exists and was written by this generator version (cache check)."""
    for path in paths.values():
        if not Path(path).is_file():
            return False
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("generator_version") != GENERATOR_VERSION:
                    return False
        except OSError:
            return False
    return True


def _write_patient(files: dict[str, h5py.File], case_id: str, patient: PhantomPatient) -> None:
    for modality, f in files.items():
        case = f.create_group(case_id)
        case.attrs.update(patient.case_attrs)
        for j, sl in enumerate(patient.slices):
            acq = sl.acquisitions[modality]
            g = case.create_group(f"slice_{j}")
            g.create_dataset("images", data=acq.images)
            chunks = (1, *acq.masks.shape[1:])  # one image per chunk: per-image reads
            g.create_dataset("masks", data=acq.masks, compression="lzf", chunks=chunks)
            g.create_dataset("te_ms" if modality == "t2" else "ti_ms", data=acq.times_ms)
            truth = g.create_group("truth")
            truth.create_dataset("labels", data=sl.labels, compression="lzf")
            truth.create_dataset("t2_ms" if modality == "t2" else "t1_ms", data=acq.truth_ms)
            if acq.ecv_percent is not None:
                truth.create_dataset("ecv_percent", data=acq.ecv_percent)
            truth.create_dataset("shift_px", data=acq.shift_px)
            truth.create_dataset("rotation_deg", data=acq.rotation_deg)
            g.attrs.update(acq.attrs)


def write_mapping_phantoms(
    directory: str | Path,
    n_patients: int,
    seed: int,
    slices_per_patient: int = DEFAULT_SLICES,
    noise: bool = True,
    motion: bool = True,
    snr_range: tuple[float, float] = (10.0, 60.0),
    sequence: str = "stone",
) -> dict[str, Path]:
    """Write the three phantom files (native T1, T2, post-contrast T1) of one seed, atomically.

    Args:
        directory: output folder (created).
        n_patients: patients (case ids ``case_0000``...; patient ids ``P0000``...).
        seed: generator seed; patient p depends only on (seed, p).
        slices_per_patient, noise, motion, snr_range, sequence: see
            :func:`simulate_mapping_patient`.

    Returns:
        ``{modality: path}`` for ``t1_native``, ``t2``, ``post_contrast`` (names from
        :func:`mapping_phantom_paths`).
    """
    if n_patients < 1 or slices_per_patient < 1:
        raise ValueError(
            f"n_patients={n_patients} and slices_per_patient={slices_per_patient} must be >= 1"
        )
    if sequence not in SEQUENCES:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got {sequence!r}")
    paths = mapping_phantom_paths(
        directory, n_patients, seed, slices_per_patient, noise, motion, sequence
    )

    def simulate(p: int) -> PhantomPatient:
        return simulate_mapping_patient(
            seed, p, slices_per_patient, noise, motion, tuple(snr_range), sequence
        )

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel over patients instead (2 threads); restored below
    with ExitStack() as stack, ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        stack.callback(torch.set_num_threads, torch_threads)
        tmps = {m: stack.enter_context(atomic_write(p)) for m, p in paths.items()}
        files = {m: stack.enter_context(h5py.File(t, "w")) for m, t in tmps.items()}
        for m, f in files.items():
            f.attrs.update(generator=__name__, generator_version=GENERATOR_VERSION,
                           seed=seed, n_patients=n_patients,
                           slices_per_patient=slices_per_patient, modality=m,
                           noise=noise, motion=motion, sequence=sequence)  # fmt: skip
        for first in range(0, n_patients, 8):
            batch = range(first, min(first + 8, n_patients))
            for p, patient in zip(batch, pool.map(simulate, batch), strict=True):
                _write_patient(files, f"case_{p:04d}", patient)
        for f in files.values():
            f.close()  # closed before atomic_write renames the file
    return paths
