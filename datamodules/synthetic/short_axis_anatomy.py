"""Procedural short-axis tissue label maps, cropped like clinical mapping images.

One call draws one short-axis slice of a random patient, from base to apex, as a label map
(uint8 [H, W], :data:`LABEL_NAMES`): LV myocardium (label 1) with a non-circular endocardium
(ellipse axis ratio and angular harmonics) and a wall whose thickness varies around the ring
(septum often thicker), the LV blood pool with trabeculation along the endocardium and two
papillary muscles (anterolateral, posteromedial) in mid slices, the RV cavity (an ellipse
wrapped round the septum, minus the LV) with its thin free wall, patchy epicardial / pericardial
fat (thickest near the AV groove), mediastinal soft tissue, the chest wall (subcutaneous fat,
muscle, ribs), both lungs with vessels, the diaphragm with the liver and the stomach below the
heart, the spine (vertebral body, spinal canal, paraspinal muscles) and the descending aorta.
Everything is drawn in millimetres in a heart-centred frame (x right, y up on screen: RV on the
left, anterior wall up), then the whole scene is bent by a smooth random displacement field,
rotated and placed in the field of view.

Field of view: the image width in mm is the patient's mid-ventricular LV blood-pool diameter
divided by ``blood_pool_fraction`` (clinical mapping crops: 20-45 % of the width; full 360 mm
fields: about 12 %); the LV centre lies anywhere that keeps the heart in view. ``aspect`` is
the field's height / width: rendered on a square grid (``shape=(S, S)``) the pixels are
anisotropic, which is exactly what the network sees after the stretch to 256 x 256 of a
non-square image; with ``square_pixels=True`` the grid keeps square pixels (native images).

The myocardium label satisfies the mapping pipeline's shape QC (method.md §B2: one 8-connected ring,
Euler number 0, eccentricity < 0.65) and does not touch the image border; a draw that breaks
this is drawn again.

Example:
    >>> labels, info = render_short_axis(np.random.default_rng(0), AnatomyRanges(), (128, 128))
    >>> labels.shape, labels.dtype, info["level"] in LEVELS, bool((labels == MYOCARDIUM).any())
    ((128, 128), dtype('uint8'), True, True)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from formats.atomic_file import atomic_write
from quantification.myocardium_shape import shape_qc

LABEL_NAMES = (
    "background", "lv_myocardium", "lv_blood", "rv_blood", "rv_myocardium",
    "papillary_trabeculae", "epicardial_fat", "subcutaneous_fat", "skeletal_muscle", "lung",
    "lung_vessel", "liver", "stomach", "bone", "aorta", "diaphragm", "soft_tissue", "csf",
)  # fmt: skip
(
    BACKGROUND, MYOCARDIUM, LV_BLOOD, RV_BLOOD, RV_MYOCARDIUM, PAPILLARY, EPICARDIAL_FAT,
    SUBCUTANEOUS_FAT, MUSCLE, LUNG, LUNG_VESSEL, LIVER, STOMACH, BONE, AORTA, DIAPHRAGM,
    SOFT_TISSUE, CSF,
) = range(len(LABEL_NAMES))  # fmt: skip
LEVELS = ("basal", "mid", "apical")
POOL_VERSION = 1
"""Bumped whenever the generator's output changes: cached label pools of another version are
rewritten (file attr ``generator_version``)."""


@dataclass(frozen=True)
class AnatomyRanges:
    """Ranges (low, high) of the random anatomy; each draw is uniform in its range.

    Attributes:
        blood_pool_fraction: mid-ventricular LV blood-pool diameter / image width.
        lv_diameter_mm: mid-ventricular LV blood-pool diameter, mm.
        wall_mm: mean LV wall thickness at the base, mm (thinner towards the apex).
        position: slice position along the long axis, 0 base ... 1 apex (< 0.35 basal,
            < 0.75 mid, else apical).
        rotation_deg: in-plane rotation of the heart, degrees counter-clockwise on screen.
        aspect: field of view height / width.
        centre_offset: largest LV centre offset from the image centre, fraction of the width
            (also limited so that the heart stays in view).
        axis_ratio: LV ellipse minor / major axis (>= 0.8 keeps the ring's eccentricity
            below the QC limit of 0.65).
        elastic_mm: SD of the smooth random displacement field, mm.
        rv_scale: RV size relative to the LV epicardial radius.
        fat_mm: largest epicardial fat thickness, mm.
        trabeculation_mm: largest depth of the trabeculae into the blood pool, mm.
    """

    blood_pool_fraction: tuple[float, float] = (0.12, 0.45)
    lv_diameter_mm: tuple[float, float] = (38.0, 58.0)
    wall_mm: tuple[float, float] = (6.0, 12.0)
    position: tuple[float, float] = (0.0, 1.0)
    rotation_deg: tuple[float, float] = (-45.0, 45.0)
    aspect: tuple[float, float] = (0.75, 1.0)
    centre_offset: tuple[float, float] = (0.0, 0.22)
    axis_ratio: tuple[float, float] = (0.82, 1.0)
    elastic_mm: tuple[float, float] = (0.0, 2.5)
    rv_scale: tuple[float, float] = (0.8, 1.25)
    fat_mm: tuple[float, float] = (0.0, 8.0)
    trabeculation_mm: tuple[float, float] = (0.0, 3.0)


def level_of_position(position: float) -> str:
    """``basal`` below 0.35, ``mid`` below 0.75, else ``apical`` (0 base ... 1 apex)."""
    return "basal" if position < 0.35 else "mid" if position < 0.75 else "apical"


def _ellipse(x, y, cx, cy, a, b, rot=0.0) -> np.ndarray:
    """Squared normalised radius of an ellipse (centre, semi-axes a, b mm, angle rad) at the
    points (x, y) mm: < 1 inside."""
    f = np.float32
    co, si = f(np.cos(rot)), f(np.sin(rot))
    dx, dy = x - f(cx), y - f(cy)
    p, q = (co * dx + si * dy) * f(1 / a), (co * dy - si * dx) * f(1 / b)
    return p * p + q * q


def _harmonics(phi: np.ndarray, amps, phases, orders) -> np.ndarray:
    """sum_m amp_m cos(m (phi - phase_m)) over the given orders."""
    out = np.zeros_like(phi)
    for amp, phase, m in zip(amps, phases, orders, strict=True):
        out += np.float32(amp) * np.cos(m * (phi - np.float32(phase)))
    return out


def _smooth_field(rng: np.random.Generator, shape, sd: float, nodes: int = 6) -> np.ndarray:
    """A smooth random field [H, W] of about ``sd`` SD: Gaussian values on a coarse lattice,
    interpolated with cubic splines."""
    coarse = torch.from_numpy(rng.normal(0.0, sd, (1, 1, nodes, nodes)).astype(np.float32))
    return F.interpolate(coarse, size=tuple(shape), mode="bicubic", align_corners=True)[
        0, 0
    ].numpy()


def _draw(rng: np.random.Generator, ranges: AnatomyRanges, shape, square_pixels: bool):
    u = rng.uniform
    r = ranges
    height, width = shape
    s = u(*r.position)
    d_mid = u(*r.lv_diameter_mm)
    width_mm = d_mid / u(*r.blood_pool_fraction)
    height_mm = width_mm * u(*r.aspect)
    if square_pixels:
        height_mm = width_mm * height / width
    px_x, px_y = width_mm / width, height_mm / height

    # the heart at this level (mm)
    r_bp = max(0.5 * d_mid * (1 - 0.55 * s**1.6), 4.0)
    wall = u(*r.wall_mm) * (1 - 0.25 * s)
    k = u(*r.axis_ratio)
    psi = u(0, np.pi)
    r_epi = r_bp + wall

    # where the LV centre lies in the image (mm from the image centre, y up)
    margin = r_epi * 1.15 + 3 * max(px_x, px_y)
    lim_x = max(0.0, 0.5 * width_mm - margin)
    lim_y = max(0.0, 0.5 * height_mm - margin)
    off = u(*r.centre_offset) * width_mm
    ang = u(0, 2 * np.pi)
    ox = float(np.clip(off * np.cos(ang), -lim_x, lim_x))
    oy = float(np.clip(off * np.sin(ang), -lim_y, lim_y))
    theta = np.deg2rad(u(*r.rotation_deg))

    # pixel centres -> heart frame (mm), bent by a smooth displacement field
    cols = (np.arange(width, dtype=np.float32) - (width - 1) / 2) * np.float32(px_x)
    rows = ((height - 1) / 2 - np.arange(height, dtype=np.float32)) * np.float32(px_y)
    gx, gy = np.meshgrid(cols - np.float32(ox), rows - np.float32(oy))
    co, si = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    x, y = co * gx + si * gy, -si * gx + co * gy
    elastic = u(*r.elastic_mm)
    if elastic > 0:
        x = x + _smooth_field(rng, shape, elastic)
        y = y + _smooth_field(rng, shape, elastic)

    labels = np.zeros(shape, np.uint8)

    # chest: body outline, subcutaneous fat, muscle, ribs, thoracic cavity (lung)
    bx, by = -u(15, 60), -u(10, 55)
    ba, bb, brot = u(130, 185), u(95, 135), u(-0.2, 0.2)
    fat_t, mus_t = u(4, 25), u(6, 18)
    labels[_ellipse(x, y, bx, by, ba, bb, brot) < 1] = SUBCUTANEOUS_FAT
    labels[_ellipse(x, y, bx, by, ba - fat_t, bb - fat_t, brot) < 1] = MUSCLE
    ca, cb = ba - fat_t - mus_t, bb - fat_t - mus_t
    for a_rib in u(0, 2 * np.pi, rng.integers(3, 9)):
        rx = bx + (ca + 0.5 * mus_t) * np.cos(a_rib)
        ry = by + (cb + 0.5 * mus_t) * np.sin(a_rib)
        labels[_ellipse(x, y, rx, ry, u(4, 9), u(2.5, 4.5), a_rib + np.pi / 2) < 1] = BONE
    cavity = _ellipse(x, y, bx, by, ca, cb, brot) < 1
    labels[cavity] = LUNG
    for _ in range(rng.integers(8, 30)):  # pulmonary vessels
        va = u(0, 2 * np.pi)
        vr = np.sqrt(u(0.1, 1.0))
        vx, vy = bx + vr * ca * np.cos(va), by + vr * cb * np.sin(va)
        vessel = (_ellipse(x, y, vx, vy, u(1, 4.5), u(1, 4.5), u(0, np.pi)) < 1) & cavity
        labels[vessel] = LUNG_VESSEL

    # diaphragm, liver (left on screen) and stomach (right) below the heart
    if rng.random() < 0.85 - 0.25 * s:
        y0 = -r_epi - u(0, 35)
        x0, kappa = u(-40, 10), u(0.002, 0.012)
        dome = y0 - kappa * (x - x0) ** 2
        band = u(3, 7)
        below = (y < dome) & cavity
        labels[below & (y > dome - band)] = DIAPHRAGM
        abdomen = below & (y <= dome - band)
        labels[abdomen] = LIVER
        if rng.random() < 0.5:
            split = x0 + u(10, 50)
            labels[abdomen & (x > split)] = STOMACH

    # spine, spinal canal, paraspinal muscles, descending aorta
    sx = bx + u(-15, 15)
    sy = by - cb + u(20, 40)
    rv_b = u(13, 20)
    for side in (-1, 1):  # paraspinal muscles
        dx, dy, a, b, rot = u(22, 32), u(5, 20), u(15, 24), u(20, 32), u(-0.4, 0.4)
        labels[_ellipse(x, y, sx + side * dx, sy - dy, a, b, rot) < 1] = MUSCLE
    labels[_ellipse(x, y, sx, sy, rv_b, rv_b * u(0.8, 1.0)) < 1] = BONE
    labels[_ellipse(x, y, sx, sy - rv_b - u(5, 9), u(5, 8), u(5, 8)) < 1] = CSF
    if rng.random() < 0.95:
        ar = u(9, 15)
        ax, ay = sx + u(12, 35), sy + rv_b + ar * u(0.6, 1.2)
        labels[_ellipse(x, y, ax, ay, ar, ar * u(0.85, 1)) < 1] = AORTA

    # LV geometry in polar coordinates of the ellipse-scaled frame
    cp, sp = np.float32(np.cos(psi)), np.float32(np.sin(psi))
    xe, ye = cp * x + sp * y, (-sp * x + cp * y) / np.float32(k)
    rho = np.sqrt(xe * xe + ye * ye)
    phi = np.arctan2(y, x)  # heart-frame angle: 0 lateral wall, +-pi septum, pi/2 anterior
    endo = np.float32(r_bp) * (1 + _harmonics(phi, u(0, 0.05, 2), u(0, 2 * np.pi, 2), (2, 3)))
    thick = _harmonics(phi, (u(0, 0.25), u(0, 0.12)), u(0, 2 * np.pi, 2), (1, 2))
    septum = np.float32(u(0, 0.25)) * np.exp(-((np.abs(phi) - np.pi) ** 2) / 0.5)
    epi = endo + np.float32(wall) * (1 + thick + septum)

    # RV: an ellipse left of the LV, minus the LV; free wall around it
    heart = rho < epi
    rv_on = s < 0.85 or rng.random() < 0.5
    if rv_on:
        scale = u(*r.rv_scale) * (1 - 0.55 * s)
        a_rv, b_rv = r_epi * u(0.55, 0.85) * scale, r_epi * u(1.0, 1.35) * scale + 0.3 * r_epi
        c_rv = -r_epi - a_rv + u(0.35, 0.75) * r_epi
        y_rv, rot_rv = u(-0.25, 0.25) * r_epi, u(-0.3, 0.3)
        rv_wall_t = u(2.5, 5)
        rv_cav = _ellipse(x, y, c_rv, y_rv, a_rv, b_rv, rot_rv) < 1
        rv_out = _ellipse(x, y, c_rv, y_rv, a_rv + rv_wall_t, b_rv + rv_wall_t, rot_rv) < 1
        heart |= rv_out

    # epicardial fat and mediastinal soft tissue round the heart
    fat_max = u(*r.fat_mm)
    fat = np.float32(fat_max) * np.clip(
        0.3 + _harmonics(phi, u(0.2, 0.7, 3), u(0, 2 * np.pi, 3), (1, 2, 3)), 0, None
    )
    medi = np.float32(u(0.5, 4))
    around = ndimage.distance_transform_edt(~heart, sampling=(px_y, px_x)).astype(np.float32)
    labels[(around > 0) & (around < fat + medi)] = SOFT_TISSUE
    labels[(around > 0) & (around < fat)] = EPICARDIAL_FAT
    if rv_on:
        labels[rv_out & ~(rho < epi)] = RV_MYOCARDIUM
        labels[rv_cav & ~(rho < epi)] = RV_BLOOD

    # LV wall, blood pool, trabeculae, papillary muscles
    labels[rho < epi] = MYOCARDIUM
    labels[rho < endo] = LV_BLOOD
    depth = u(*r.trabeculation_mm) * (0.5 + s if s < 0.5 else 1.0)
    if depth > 0.3:
        teeth = _harmonics(phi, u(0.3, 1, 4), u(0, 2 * np.pi, 4), rng.integers(9, 25, 4))
        inner = endo - np.float32(depth) * np.clip(teeth / 2, 0, 1)
        labels[(rho >= inner) & (rho < endo)] = PAPILLARY
    n_pm = 2 if 0.25 <= s < 0.8 else 2 * int(rng.random() < 0.4) if s < 0.9 else 0
    for mean_deg in (45, -110)[:n_pm]:
        a_pm = np.deg2rad(mean_deg + u(-20, 20))
        r_pm = min(u(2.5, 6.5) * (1 - 0.3 * s), 0.45 * r_bp)
        along = a_pm - psi
        dist = r_bp / np.sqrt(np.cos(along) ** 2 + (np.sin(along) / k) ** 2) - u(0.4, 1) * r_pm
        px, py = dist * np.cos(a_pm), dist * np.sin(a_pm)
        labels[(_ellipse(x, y, px, py, r_pm, r_pm * u(0.7, 1), u(0, np.pi)) < 1) & (rho < endo)] = (
            PAPILLARY
        )
    info = {
        "position": float(s),
        "level": level_of_position(s),
        "pixel_mm": (float(px_y), float(px_x)),
        "lv_center_rc": (
            float((height - 1) / 2 - oy / px_y),
            float((width - 1) / 2 + ox / px_x),
        ),
        "blood_pool_fraction": float(d_mid / width_mm),
        "rotation_deg": float(np.rad2deg(theta)),
        "wall_mm": float(wall),
        "blood_pool_radius_mm": float(r_bp),
    }
    return labels, info


def render_short_axis(
    rng: np.random.Generator,
    ranges: AnatomyRanges = AnatomyRanges(),
    shape: tuple[int, int] = (256, 256),
    square_pixels: bool = False,
    max_tries: int = 20,
) -> tuple[np.ndarray, dict]:
    """One random short-axis label map (module docstring).

    Args:
        rng: random stream (the map depends only on it).
        ranges: the anatomy's random ranges.
        shape: (H, W) pixels.
        square_pixels: keep square pixels (native images; the aspect follows ``shape``) instead
            of the field's random ``aspect`` stretched onto the grid.
        max_tries: draws before giving up on a myocardium that passes the shape QC.

    Returns:
        labels uint8 [H, W] (:data:`LABEL_NAMES`) and info: ``position``, ``level``,
        ``pixel_mm`` (rows, cols), ``lv_center_rc`` (px), ``blood_pool_fraction``,
        ``rotation_deg``, ``wall_mm``, ``blood_pool_radius_mm``.

    Raises:
        RuntimeError: no draw in ``max_tries`` gave a valid myocardium ring (ranges too wide).
    """
    for _ in range(max_tries):
        labels, info = _draw(rng, ranges, shape, square_pixels)
        myo = labels == MYOCARDIUM
        border = myo[0].any() or myo[-1].any() or myo[:, 0].any() or myo[:, -1].any()
        if not border and shape_qc(myo).valid and int(ndimage.label(myo, np.ones((3, 3)))[1]) == 1:
            return labels, info
    raise RuntimeError(f"no valid myocardium ring in {max_tries} draws with {ranges}")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def label_pool_path(directory: str | os.PathLike, n_maps: int, seed: int, size: int) -> Path:
    """Cache file of a label-map pool: ``short_axis_labels_v<version>_n<n>_s<S>_seed<seed>.h5``."""
    name = f"short_axis_labels_v{POOL_VERSION}_n{n_maps}_s{size}_seed{seed}.h5"
    return Path(directory) / name


def write_label_pool(
    path: str | os.PathLike,
    n_maps: int,
    seed: int,
    size: int = 256,
    ranges: AnatomyRanges = AnatomyRanges(),
) -> Path:
    """Write ``n_maps`` label maps [n, size, size] (uint8, one lzf chunk per map) atomically.

    Map i depends only on (seed, i). Attrs: ``generator_version``, ``seed``, ``ranges`` (JSON
    of :class:`AnatomyRanges`); datasets ``labels`` and ``position`` [n] (0 base ... 1 apex).
    """
    import json

    def one(i: int) -> tuple[np.ndarray, dict]:
        return render_short_axis(_rng(seed, i), ranges, (size, size))

    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        maps = list(pool.map(one, range(n_maps)))
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(generator=__name__, generator_version=POOL_VERSION, seed=seed,
                       ranges=json.dumps(asdict(ranges)))  # fmt: skip
        f.create_dataset("labels", data=np.stack([m for m, _ in maps]), compression="lzf",
                         chunks=(1, size, size))  # fmt: skip
        f.create_dataset("position", data=np.array([i["position"] for _, i in maps], np.float32))
    return Path(path)


def read_label_pool(path: str | os.PathLike) -> np.ndarray:
    """All label maps of a pool file, uint8 [n, S, S]; raises ``ValueError`` naming the file
    if it was written by another generator version."""
    with h5py.File(path, "r") as f:
        version = f.attrs.get("generator_version")
        if version != POOL_VERSION:
            raise ValueError(f"{path}: label pool version {version}, expected {POOL_VERSION}")
        return f["labels"][()]
