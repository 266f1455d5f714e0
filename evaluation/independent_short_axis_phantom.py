"""A second, deliberately different short-axis phantom generator, for out-of-distribution
evaluation of myocardium networks only.

Written without the training generator's code (``datamodules/synthetic/short_axis_anatomy.py``,
``tissue_contrast.py``) and with other choices at every step:

- geometry on a 3x supersampled grid, block-averaged to partial-volume fractions: the LV
  endocardium and epicardium as closed Fourier contours (random radial harmonics m = 1..5 of
  their own, not ellipses), the RV as the difference of two circles (a crescent), a
  superellipse body with a fat rim, two superellipse lungs, a random-quadrilateral liver, a disc
  spine and aorta, papillary muscles as discs touching the endocardium; no trabeculation, no
  pericardial fat, no stomach, no elastic bending;
- contrast: a MOLLI-like inversion-recovery bSSFP series (apparent T1* = T1 (B/A - 1),
  B/A 1.7-1.95, steady-state amplitude ~ PD sqrt(T2 / T1)) at 3 T tissue values (not the
  training's 1.5 T table), 7-8 images at the inversion times of a 5(3)3 scheme at the patient's
  heart rate;
- a linear receive-coil ramp instead of a smooth random field; complex Gaussian noise, magnitude;
  native matrices 96-224 px with square pixels (not the 256 grid).

Its output is a mapping contract file (``formats.mapping_contract``), modality ``t1_native``,
with the myocardium masks (fraction >= 0.5) and ``pixel_spacing_mm``.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from formats.atomic_file import atomic_write
from formats.mapping_contract import write_mapping_case, write_mapping_slice

SUPER = 3
# 3 T (T1 ms, T2 ms, proton density)
TISSUES = {
    "air": (1000.0, 50.0, 0.0),
    "myocardium": (1200.0, 45.0, 0.8),
    "blood": (1950.0, 250.0, 0.95),
    "fat": (380.0, 70.0, 0.9),
    "muscle": (1400.0, 30.0, 0.7),
    "lung": (1300.0, 30.0, 0.1),
    "liver": (810.0, 35.0, 0.75),
    "bone": (600.0, 50.0, 0.6),
}
NAMES = tuple(TISSUES)


def _fourier_radius(rng: np.random.Generator, angle: np.ndarray, mean: float, wiggle: float):
    radius = np.full_like(angle, mean)
    for m in range(1, 6):
        radius += mean * wiggle / m * rng.normal() * np.cos(m * angle + rng.uniform(0, 2 * np.pi))
    return radius


def _superellipse(x, y, cx, cy, a, b, n) -> np.ndarray:
    return np.abs((x - cx) / a) ** n + np.abs((y - cy) / b) ** n < 1


def _quadrilateral(x, y, corners: np.ndarray) -> np.ndarray:
    """Inside a convex quadrilateral (corners counter-clockwise), by half-planes."""
    inside = np.ones(x.shape, bool)
    for i in range(4):
        (x0, y0), (x1, y1) = corners[i], corners[(i + 1) % 4]
        inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
    return inside


def independent_slice(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images float32 [N, H, W], myocardium masks uint8 [N, H, W] and attrs of one slice."""
    height, width = int(rng.integers(96, 225)), int(rng.integers(96, 225))
    bp_diameter = rng.uniform(30, 60)
    pixel = bp_diameter / rng.uniform(0.15, 0.45) / width
    rows = (np.arange(height * SUPER) + 0.5) / SUPER - height / 2
    cols = (np.arange(width * SUPER) + 0.5) / SUPER - width / 2
    x, y = np.meshgrid(cols * pixel, -rows * pixel)  # mm, y up
    wall = rng.uniform(5, 12)
    r_epi = bp_diameter / 2 + wall
    limit = np.array([width, height]) * pixel / 2 - r_epi - 6
    cx, cy = rng.uniform(-1, 1, 2) * np.maximum(limit, 0) * 0.7
    dx, dy = x - cx, y - cy
    angle, radius = np.arctan2(dy, dx), np.hypot(dx, dy)
    endo = _fourier_radius(rng, angle, bp_diameter / 2, 0.04)
    epi = endo + _fourier_radius(rng, angle, wall, 0.15)
    spin = rng.uniform(-0.6, 0.6)  # RV direction about the screen left

    tissue = np.zeros(x.shape, np.int8)
    body = (
        rng.uniform(-60, -10),
        rng.uniform(-60, -5),
        rng.uniform(140, 190),
        rng.uniform(100, 140),
    )
    n_body = rng.uniform(2.2, 3.0)
    tissue[_superellipse(x, y, *body, n_body)] = NAMES.index("fat")
    rim = rng.uniform(6, 20)
    inner = (body[0], body[1], body[2] - rim, body[3] - rim)
    tissue[_superellipse(x, y, *inner, n_body)] = NAMES.index("muscle")
    cavity = (body[0], body[1], body[2] - rim - 12, body[3] - rim - 12)
    tissue[_superellipse(x, y, *cavity, n_body)] = NAMES.index("muscle")
    for side in (-1, 1):
        lung = (body[0] + side * cavity[2] * 0.5, body[1] + 10, cavity[2] * 0.5, cavity[3] * 0.8)
        tissue[_superellipse(x, y, *lung, 2.5)] = NAMES.index("lung")
    if rng.random() < 0.8:
        corners = np.array([[-150, -40], [-150 + rng.uniform(40, 120), -r_epi - 40],
                            [rng.uniform(-20, 40), -r_epi - rng.uniform(2, 20)],
                            [rng.uniform(-40, 20), -150]]) + [cx, cy]  # fmt: skip
        tissue[_quadrilateral(x, y, corners[::-1])] = NAMES.index("liver")
    spine = (body[0] + rng.uniform(-10, 10), body[1] - body[3] + rim + 35)
    tissue[np.hypot(x - spine[0], y - spine[1]) < rng.uniform(12, 18)] = NAMES.index("bone")
    aorta = (spine[0] + rng.uniform(15, 30), spine[1] + rng.uniform(25, 40))
    tissue[np.hypot(x - aorta[0], y - aorta[1]) < rng.uniform(9, 14)] = NAMES.index("blood")
    # RV crescent: a big circle to the left minus the LV's epicardial circle (+ its wall)
    rv_r = r_epi * rng.uniform(0.9, 1.3)
    rv_c = (cx - (r_epi + rv_r) * 0.55 * np.cos(spin), cy + (r_epi + rv_r) * 0.55 * np.sin(spin))
    rv_d = np.hypot(x - rv_c[0], y - rv_c[1])
    lv_out = radius < epi + 3
    tissue[(rv_d < rv_r + 3) & ~lv_out] = NAMES.index("myocardium")
    tissue[(rv_d < rv_r) & ~lv_out] = NAMES.index("blood")
    tissue[radius < epi] = NAMES.index("myocardium")
    tissue[radius < endo] = NAMES.index("blood")
    for pm_angle in (rng.uniform(0.4, 1.2), rng.uniform(-2.2, -1.4))[: int(rng.integers(0, 3))]:
        pm_r = rng.uniform(2, 5)
        d = bp_diameter / 2 - pm_r * 0.8
        pc = (cx + d * np.cos(pm_angle), cy + d * np.sin(pm_angle))
        tissue[(np.hypot(x - pc[0], y - pc[1]) < pm_r) & (radius < endo)] = NAMES.index(
            "myocardium"
        )

    # block-average each tissue's fraction to the native grid
    frac = np.stack([(tissue == k).reshape(height, SUPER, width, SUPER).mean((1, 3))
                     for k in range(len(NAMES))])  # fmt: skip
    lv_wall = ((radius >= endo) & (radius < epi)).reshape(height, SUPER, width, SUPER).mean((1, 3))
    mask = (lv_wall >= 0.5).astype(np.uint8)

    # MOLLI-like IR bSSFP series at the heart rate
    rr = 60000 / rng.uniform(55, 95)
    ti = np.sort(np.concatenate([rng.uniform(100, 130) + rr * np.arange(5),
                                 rng.uniform(180, 260) + rr * np.arange(3)]))  # fmt: skip
    ti = ti[: int(rng.integers(7, 9))]
    props = np.array([TISSUES[n] for n in NAMES]) * rng.uniform(0.93, 1.07, (len(NAMES), 3))
    t1, t2, pd = props.T
    ratio = rng.uniform(1.7, 1.95)
    amp = pd * np.sqrt(t2 / t1)
    t1_star = t1 * (ratio - 1)
    signal = amp[None] * (1 - ratio * np.exp(-ti[:, None] / t1_star[None]))  # [N, K]
    images = np.abs(np.tensordot(signal, frac, axes=(1, 0)))
    ramp = 1 + rng.uniform(-0.5, 0.5) * (np.arange(width) / width - 0.5)[None, :]
    ramp = ramp + rng.uniform(-0.5, 0.5) * (np.arange(height) / height - 0.5)[:, None]
    sigma = amp[NAMES.index("myocardium")] / rng.uniform(8, 40)
    noise = rng.normal(0, sigma, (2, *images.shape))
    images = np.hypot(images * ramp + noise[0], noise[1]).astype(np.float32)
    attrs = {"pixel_spacing_mm": np.array([pixel, pixel]), "sequence": "molli",
             "generator": __name__}  # fmt: skip
    return images, np.repeat(mask[None], len(ti), 0), attrs | {"ti": ti}


def write_independent_short_axis(path: str | os.PathLike, n_slices: int, seed: int) -> Path:
    """Write ``n_slices`` slices (one case each) of the independent generator, atomically."""
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(generator=__name__, seed=seed)
        for i in range(n_slices):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            images, masks, attrs = independent_slice(rng)
            ti = attrs.pop("ti")
            case = write_mapping_case(f, f"case_{i:04d}", f"I{i:04d}")
            level = ("basal", "mid", "apical")[i % 3]
            write_mapping_slice(case, "slice_0", images, ti, "t1_native", level, masks=masks,
                                attrs=attrs)  # fmt: skip
    return Path(path)
