"""Shape quality control of a myocardium segmentation (docs/method.md §B2 steps 1-2).

A segmentation of one short-axis image is kept as its largest connected object and is *valid*
when it is one closed ring: Euler number 0 (one object with one hole) and eccentricity below
0.65 (the largest value in the paper's data; both thresholds are arguments).

Conventions (identical to ``skimage.measure.regionprops``, which the tests compare against):

- Connectivity: objects are 8-connected (pixels touching at a corner belong together) and holes
  are therefore 4-connected background components not touching the image border. The Euler
  number is ``objects - holes``, computed from 2x2 bit-quad counts (Gray 1971):
  ``E8 = (n(Q1) - n(Q3) - 2 n(QD)) / 4``.
- Eccentricity of the moment ellipse: with ``l1 >= l2`` the eigenvalues of the covariance of the
  pixel coordinates (second central moments divided by the area),
  ``eccentricity = sqrt(1 - l2 / l1)``; 0 for a circle (or a round ring), 1 for a line.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "MAX_ECCENTRICITY",
    "REQUIRED_EULER_NUMBER",
    "ShapeQC",
    "eccentricity",
    "euler_number",
    "largest_object",
    "myocardium_centroid",
    "shape_qc",
]

MAX_ECCENTRICITY = 0.65
"""QC threshold: a valid myocardium has eccentricity strictly below this (docs/method.md §B2)."""
REQUIRED_EULER_NUMBER = 0
"""QC rule: a valid myocardium is one ring (1 object - 1 hole)."""

_EIGHT = np.ones((3, 3), dtype=bool)


def largest_object(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected object of a 2-D mask.

    Args:
        mask: [H, W] bool or integer (non-zero = myocardium).

    Returns:
        bool [H, W]; all False for an empty mask. Ties go to the lowest label (raster order).
    """
    mask = np.asarray(mask) != 0
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def euler_number(mask: np.ndarray) -> int:
    """Euler number (8-connected objects minus 4-connected holes) of a 2-D mask.

    Args:
        mask: [H, W] bool or integer (non-zero = foreground).

    Returns:
        objects - holes, e.g. 1 for a disc, 0 for a ring, -1 for a figure eight.
    """
    m = np.pad(np.asarray(mask) != 0, 1).astype(np.int8)
    # code of each 2x2 quad: top-left 1, top-right 2, bottom-left 4, bottom-right 8
    code = m[:-1, :-1] + 2 * m[:-1, 1:] + 4 * m[1:, :-1] + 8 * m[1:, 1:]
    counts = np.bincount(code.ravel(), minlength=16)
    n1 = counts[[1, 2, 4, 8]].sum()
    n3 = counts[[7, 11, 13, 14]].sum()
    nd = counts[[6, 9]].sum()
    return int((n1 - n3 - 2 * nd) // 4)


def myocardium_centroid(mask: np.ndarray) -> tuple[float, float]:
    """Centre of mass (row, col) in pixels of a non-empty 2-D mask."""
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        raise ValueError("empty mask has no centroid")
    return float(rows.mean()), float(cols.mean())


def second_moments(mask: np.ndarray) -> np.ndarray:
    """Covariance [2, 2] (px^2, row/col order) of the pixel coordinates of a non-empty mask."""
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        raise ValueError("empty mask has no second moments")
    coords = np.stack([rows, cols]).astype(np.float64)
    coords -= coords.mean(axis=1, keepdims=True)
    return coords @ coords.T / rows.size


def eccentricity(mask: np.ndarray) -> float:
    """Eccentricity ``sqrt(1 - l2/l1)`` of the moment ellipse of a 2-D mask (NaN if empty)."""
    if not np.any(mask):
        return float("nan")
    l2, l1 = np.linalg.eigvalsh(second_moments(mask))
    if l1 <= 0:
        return 0.0
    return float(np.sqrt(max(0.0, 1.0 - l2 / l1)))


@dataclass(frozen=True)
class ShapeQC:
    """QC of one segmentation.

    Attributes:
        mask: bool [H, W] the largest object (what is analysed when valid).
        area_px: its area in pixels.
        euler_number: objects - holes of the largest object.
        eccentricity: moment-ellipse eccentricity of the largest object (NaN if empty).
        valid: the QC decision.
        reason: "" when valid, else why not (for logs and reports).
    """

    mask: np.ndarray
    area_px: int
    euler_number: int
    eccentricity: float
    valid: bool
    reason: str


def shape_qc(
    mask: np.ndarray,
    *,
    max_eccentricity: float = MAX_ECCENTRICITY,
    required_euler_number: int = REQUIRED_EULER_NUMBER,
    min_area_px: int = 20,
) -> ShapeQC:
    """Keep the largest object of a segmentation and apply the QC rule of docs/method.md §B2.

    Args:
        mask: [H, W] segmentation (non-zero = myocardium).
        max_eccentricity: valid only if eccentricity < this.
        required_euler_number: valid only if the Euler number equals this (0: one ring).
        min_area_px: valid only if the object has at least this many pixels.

    Returns:
        :class:`ShapeQC`.
    """
    obj = largest_object(mask)
    area = int(obj.sum())
    euler = euler_number(obj)
    ecc = eccentricity(obj)
    reasons = []
    if area < min_area_px:
        reasons.append(f"area {area} px < {min_area_px}")
    if euler != required_euler_number:
        reasons.append(f"Euler number {euler} != {required_euler_number}")
    if not ecc < max_eccentricity:
        reasons.append(f"eccentricity {ecc:.3f} >= {max_eccentricity}")
    return ShapeQC(obj, area, euler, ecc, not reasons, "; ".join(reasons))
