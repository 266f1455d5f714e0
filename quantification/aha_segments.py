"""AHA 16-segment model, automatic RV insertion point, and the success rules of docs/method.md §B4.

Angles are in degrees, counter-clockwise from the +column axis about the LV (myocardial) centre
with rows pointing down (the phantom's ``rv_insertion_deg`` convention; anterior = up = 90 deg in
the standard short-axis orientation).

Segments (AHA 2002): starting at the *anterior* RV insertion point and turning towards the septum
(``direction`` +1 = counter-clockwise, the standard orientation with the RV on the image left):

- basal (1-6) and mid (7-12), 60 deg each: anteroseptal 2/8, inferoseptal 3/9, inferior 4/10,
  inferolateral 5/11, anterolateral 6/12, anterior 1/7;
- apical (13-16), 90 deg each, the septal segment 14 centred on the middle of the basal/mid
  septum (insertion + 60 deg): septal 14 = [15, 105) deg from the insertion, inferior 15,
  lateral 16, anterior 13.

Automatic insertion point (when none is given; the paper used manual points): the RV blood pool
is the blood-like tissue touching the LV epicardium. For every angle the signal *curve* over all
images of the slice (T2 echoes or T1 inversion times) is sampled in a band 1.5-4.5 px outside the
epicardium of each image, and compared with the curves of the LV blood (the 5 px disc at the
myocardial centroid), of the myocardium (median over the ring) and of signal-free tissue (zero):
an angle is blood-like when its curve is closer (Euclidean, after dividing each image by the
larger of its myocardial and blood values) to the LV blood than to both others. Blood has T1
and T2 unlike any other tissue nearby, so lungs, fat, liver or muscle are rarely taken for it.
Of the circular runs of blood-like angles, the RV contact arc is the one with the largest
length weighted by ``(1 - cos theta) / 2`` (the standard orientation puts the RV on the image
left, 180 deg; this rejects blood-like neighbours on the lateral side, e.g. a fat rim in T2
images) and it must span at least ``min_arc_deg``; its ends are the insertion points, the
*anterior* one is the end closer to 90 deg (anterior up), and ``direction`` is the sense from it
through the arc. Measured on 20 phantom slices per modality (4 patients, seeds 0, 3, noisy): median
error of the anterior point 11-14 deg on basal and mid slices (the band misses the thin ends of
the RV crescent, so the arc comes out short), 1 in 8 beyond 30 deg; apical slices (small RV)
are often not found (None) or wrong. Prefer given (manual) points when available.

Summaries (method.md §B4): slice success = enough valid images (>= 6 T2-weighted; >= 8 native and
>= 8
post-contrast T1-weighted for ECV); patient success = at least one successful basal, mid and
apical slice; patient value = mean of the myocardial pixels of its successful slices; segment
value = mean of the myocardial pixels of that segment.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from quantification.ecv import blood_disc
from quantification.polar import PolarGeometry

__all__ = [
    "LEVEL_SEGMENTS",
    "MIN_VALID_T1_IMAGES",
    "MIN_VALID_T2_IMAGES",
    "N_SEGMENTS",
    "InsertionPoint",
    "aha_segment_map",
    "aha_segments",
    "estimate_rv_insertion",
    "patient_success",
    "pixel_angles_deg",
    "segment_means",
    "slice_success",
    "valid_t1_images_needed",
]

N_SEGMENTS = 16
LEVEL_SEGMENTS = {"basal": range(1, 7), "mid": range(7, 13), "apical": range(13, 17)}
"""AHA segment numbers present at each level."""
MIN_VALID_T2_IMAGES = 6
"""docs/method.md §B4: a T2 slice succeeds with at least this many valid T2-weighted images."""
MIN_VALID_T1_IMAGES = 8
"""method.md §B4: an ECV slice needs at least this many valid native AND post-contrast images (of
the
11 STONE images; other image counts: :func:`valid_t1_images_needed`)."""
SPEC_T1_IMAGES = 11
"""Images per T1 acquisition in the paper (STONE, method.md §B1), the count ``MIN_VALID_T1_IMAGES``
refers to."""

_BASAL_ORDER = np.array([2, 3, 4, 5, 6, 1])  # 60-deg sectors from the anterior insertion point
_APICAL_ORDER = np.array([14, 15, 16, 13])  # 90-deg sectors from insertion + 15 deg


def aha_segments(
    angle_deg: np.ndarray, insertion_deg: float, level: str, direction: int = 1
) -> np.ndarray:
    """AHA segment number (1-16) of each angle; 0 where the angle is NaN.

    Args:
        angle_deg: float [...] angles about the LV centre (module convention).
        insertion_deg: anterior RV insertion point, same convention.
        level: ``"basal"``, ``"mid"`` or ``"apical"``.
        direction: +1 if the septum lies counter-clockwise of the insertion point, else -1.

    Returns:
        int64 [...] segment numbers.
    """
    if level not in LEVEL_SEGMENTS:
        raise ValueError(f"level must be basal, mid or apical, got {level!r}")
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    a = np.asarray(angle_deg, dtype=np.float64)
    finite = np.isfinite(a)
    rel = np.mod(direction * (np.where(finite, a, 0.0) - insertion_deg), 360.0)
    if level == "apical":
        seg = _APICAL_ORDER[(np.mod(rel - 15.0, 360.0) // 90.0).astype(np.int64) % 4]
    else:
        seg = _BASAL_ORDER[(rel // 60.0).astype(np.int64) % 6] + (6 if level == "mid" else 0)
    return np.where(finite, seg, 0)


def pixel_angles_deg(shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    """float64 [H, W] angle of every pixel about ``centre`` (row, col), module convention."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.mod(np.degrees(np.arctan2(centre[0] - rows, cols - centre[1])), 360.0)


def aha_segment_map(
    region: np.ndarray,
    centre: tuple[float, float],
    insertion_deg: float,
    level: str,
    direction: int = 1,
) -> np.ndarray:
    """int64 [H, W]: AHA segment of every pixel of ``region`` (bool [H, W]), 0 elsewhere."""
    seg = aha_segments(pixel_angles_deg(region.shape, centre), insertion_deg, level, direction)
    return np.where(np.asarray(region, dtype=bool), seg, 0)


def segment_means(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """float64 [16]: mean of the finite ``values`` per segment 1-16 (NaN where none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    s = np.asarray(segments).ravel()
    ok = np.isfinite(v) & (s >= 1) & (s <= N_SEGMENTS)
    sums = np.bincount(s[ok], weights=v[ok], minlength=N_SEGMENTS + 1)[1:]
    counts = np.bincount(s[ok], minlength=N_SEGMENTS + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass(frozen=True)
class InsertionPoint:
    """RV insertion points of a slice.

    Attributes:
        anterior_deg: anterior insertion point (segment origin), degrees.
        inferior_deg: inferior insertion point (NaN when given by hand without it).
        direction: +1 if the septum (RV contact arc) runs counter-clockwise from the anterior point.
        source: ``"given"`` or ``"estimated"``.
    """

    anterior_deg: float
    inferior_deg: float
    direction: int
    source: str


def _circular_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of True in a circular bool array."""
    n = flags.size
    if flags.all():
        return [(0, n)]
    if not flags.any():
        return []
    shift = int(np.argmin(flags))  # start at a False so no run wraps
    rolled = np.roll(flags, -shift)
    edges = np.diff(np.concatenate([[0], rolled.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [((s + shift) % n, e - s) for s, e in zip(starts, ends, strict=True)]


def estimate_rv_insertion(
    images: np.ndarray,
    masks: np.ndarray,
    geometries: Sequence[PolarGeometry],
    *,
    band_px: tuple[float, float] = (1.5, 4.5),
    min_arc_deg: float = 30.0,
    blood_radius_px: float = 5.0,
) -> InsertionPoint | None:
    """Anterior RV insertion point from the RV position (module docstring), or None if no RV.

    Args:
        images: float [N, H, W] the images used for the fit.
        masks: [N, H, W] their myocardial masks.
        geometries: the polar geometry of each image (its ``n_angles`` set the angular step).
        band_px: (start, stop) distance outside the epicardium sampled for the neighbour tissue.
        min_arc_deg: shortest RV contact arc accepted.
        blood_radius_px: LV blood disc radius.
    """
    images = np.asarray(images, dtype=np.float64)
    n_angles = geometries[0].n_angles
    offsets = np.linspace(band_px[0], band_px[1], 4)
    outside, blood, myo = [], [], []
    for image, mask, geo in zip(images, masks, geometries, strict=True):
        theta = geo.angles_rad[:, None]
        rho = geo.r_outer[:, None] + offsets[None, :]
        rows = geo.centre[0] - rho * np.sin(theta)
        cols = geo.centre[1] + rho * np.cos(theta)
        band = ndimage.map_coordinates(image, [rows, cols], order=1, mode="nearest").mean(axis=1)
        myo_value = float(np.median(image[np.asarray(mask, dtype=bool)]))
        blood_value = float(image[blood_disc(image.shape, geo.centre, blood_radius_px)].mean())
        scale = max(abs(myo_value), abs(blood_value), 1e-12)
        outside.append(band / scale)
        blood.append(blood_value / scale)
        myo.append(myo_value / scale)
    out = np.stack(outside, axis=1)  # [A, N]
    d_blood = np.linalg.norm(out - np.asarray(blood)[None, :], axis=1)
    d_myo = np.linalg.norm(out - np.asarray(myo)[None, :], axis=1)
    d_air = np.linalg.norm(out, axis=1)  # signal-free tissue (lung, air) must not pass for blood
    runs = _circular_runs((d_blood < d_myo) & (d_blood < d_air))
    if not runs:
        return None
    step = 360.0 / n_angles
    # prior of the standard orientation (RV on the image left): weight (1 - cos theta) / 2
    left = (1.0 - np.cos(np.radians((np.arange(n_angles) + 0.5) * step))) / 2.0

    def score(run: tuple[int, int]) -> float:
        return float(left[(run[0] + np.arange(run[1])) % n_angles].sum())

    start, length = max(runs, key=score)
    if length * step < min_arc_deg or length == n_angles:
        return None
    first = (start * step) % 360.0  # lower edge of the first blood-like bin
    last = ((start + length) * step) % 360.0  # upper edge of the last one
    # the arc runs counter-clockwise from `first` to `last`; anterior = end nearer 90 deg
    d_first = abs((first - 90.0 + 180.0) % 360.0 - 180.0)
    d_last = abs((last - 90.0 + 180.0) % 360.0 - 180.0)
    if d_first <= d_last:
        return InsertionPoint(first, last, 1, "estimated")
    return InsertionPoint(last, first, -1, "estimated")


def slice_success(n_valid: int | Iterable[int], minimum: int) -> bool:
    """method.md §B4 slice success: every count in ``n_valid`` (one per acquisition) >=
    ``minimum``."""
    counts = [n_valid] if isinstance(n_valid, int) else list(n_valid)
    return all(int(c) >= minimum for c in counts)


def valid_t1_images_needed(n_images: int, minimum: int = MIN_VALID_T1_IMAGES) -> int:
    """Valid images a T1 acquisition of ``n_images`` needs: method.md §B4's ``minimum`` of the 11
    STONE
    images, scaled to the sequence's image count (the same share, rounded up).

    Example:
        >>> [valid_t1_images_needed(n) for n in (11, 9, 8, 7)]  # STONE, MOLLI post/native, ShMOLLI
        [8, 7, 6, 6]
    """
    return min(int(n_images), int(np.ceil(minimum * n_images / SPEC_T1_IMAGES - 1e-9)))


def patient_success(successful_levels: Iterable[str]) -> bool:
    """docs/method.md §B4 patient success: at least one successful basal, mid and apical slice."""
    return {"basal", "mid", "apical"} <= set(successful_levels)
