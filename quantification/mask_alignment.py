"""Replacement of failed myocardium segmentations by valid ones of the same slice (method.md §B2
step 3).

Method: **mask-moment affine alignment** (chosen over intensity-based registration because the
images of one slice have very different contrast - T2-prep echoes, and inversion times on both
sides of the null point in T1 - so intensities are not comparable, while both masks outline the
same heart). For a failed mask ``Bu`` and a valid donor ``Bs``:

1. Both masks are *filled*: the convex hull of each mask's pixels is the epicardial disc, also
   for a ring that is broken open (a missing arc) or has spurious holes.
2. The affine map ``x_u = M x_s + t`` (pixel coordinates (row, col)) sends the donor disc's
   centroid onto the failed disc's centroid and its second-moment ellipse onto the failed one's:
   ``M = C_u^{1/2} C_s^{-1/2}`` (symmetric square roots of the coordinate covariances), i.e.
   scaling and shear along the principal axes, with no arbitrary rotation (moments of a
   near-round disc do not define one).
3. The singular values of ``M`` are clipped to ``[1/max_scale, max_scale]``: a failed
   segmentation is by definition unreliable, so it may move the donor and stretch it a little,
   but never blow it up. An empty or tiny failed mask (below ``min_area_fraction`` of the donor)
   carries no geometry: the donor is used unchanged (images of a slice are nearly aligned).
4. The donor ring is resampled with bilinear interpolation of the 0/1 mask, threshold 0.5.

Donor choice: among the valid masks of the slice, the one whose filled disc overlaps the failed
one's most (intersection over union); ties, or an empty failed mask, go to the nearest image
index (neighbouring images have the most similar contrast). With no valid mask in the slice the
image is excluded. Refinement rate = replaced / all images.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = ["MaskReplacement", "align_mask", "filled_disc", "moment_affine", "replace_failed_masks"]


def filled_disc(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the convex hull of the mask's pixels (pixel centres inside or on the hull).

    For a ring this is the epicardial disc, also when the ring is broken (a gap, a missing arc)
    or has holes; the left ventricle is convex, so the hull is a fair outline of it.
    """
    m = np.asarray(mask) != 0
    points = np.argwhere(m).astype(np.float64)
    if points.shape[0] < 3 or np.linalg.matrix_rank(points - points.mean(0)) < 2:
        return m.copy()
    try:
        hull = ConvexHull(points)
    except QhullError:
        return m.copy()
    r0, c0 = points.min(0).astype(int)
    r1, c1 = points.max(0).astype(int) + 1
    rows, cols = np.mgrid[r0:r1, c0:c1]
    # inside = on the inner side of every facet: normal . x + offset <= 0
    normals, offsets = hull.equations[:, :2], hull.equations[:, 2]
    side = rows.ravel()[:, None] * normals[:, 0] + cols.ravel()[:, None] * normals[:, 1] + offsets
    out = np.zeros_like(m)
    out[r0:r1, c0:c1] = np.all(side <= 1e-9, axis=1).reshape(rows.shape)
    return out | m


def _sqrtm(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-6)
    return (v * (w ** (-0.5 if inverse else 0.5))) @ v.T


def _moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(mask)
    coords = np.stack([rows, cols]).astype(np.float64)
    centre = coords.mean(axis=1)
    d = coords - centre[:, None]
    return centre, d @ d.T / rows.size


def moment_affine(
    donor: np.ndarray,
    target: np.ndarray,
    *,
    max_scale: float = 1.2,
    min_area_fraction: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """The affine map ``x_target = M @ x_donor + t`` (pixel (row, col)) of the module docstring.

    Args:
        donor: [H, W] valid mask (non-empty).
        target: [H, W] failed mask (may be empty).
        max_scale: bound on the singular values of M (and of its inverse).
        min_area_fraction: below this filled-area ratio target/donor, return the identity.

    Returns:
        (M float64 [2, 2], t float64 [2] in px).
    """
    d = filled_disc(donor)
    u = filled_disc(target)
    if not d.any():
        raise ValueError("donor mask is empty")
    if u.sum() < min_area_fraction * d.sum():
        return np.eye(2), np.zeros(2)
    c_d, cov_d = _moments(d)
    c_u, cov_u = _moments(u)
    m = _sqrtm(cov_u) @ _sqrtm(cov_d, inverse=True)
    left, sv, right = np.linalg.svd(m)
    m = (left * np.clip(sv, 1.0 / max_scale, max_scale)) @ right
    return m, c_u - m @ c_d


def align_mask(mask: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """bool [H, W]: ``mask`` moved by ``x' = matrix @ x + offset`` (bilinear, threshold 0.5)."""
    inverse = np.linalg.inv(matrix)
    moved = ndimage.affine_transform(
        np.asarray(mask, dtype=np.float64), inverse, offset=-inverse @ offset, order=1, cval=0.0
    )
    return moved >= 0.5


@dataclass(frozen=True)
class MaskReplacement:
    """Masks of one slice after replacement.

    Attributes:
        masks: bool [N, H, W] the mask used for each image (original if valid, aligned donor if
            replaced, all False if excluded).
        replaced: bool [N] images whose mask was replaced ("refined").
        excluded: bool [N] images with a failed mask and no valid donor.
        donor: int [N] index of the donor image (-1 where not replaced).
    """

    masks: np.ndarray
    replaced: np.ndarray
    excluded: np.ndarray
    donor: np.ndarray

    @property
    def used(self) -> np.ndarray:
        """bool [N]: images that enter the fit (valid or replaced)."""
        return ~self.excluded


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def replace_failed_masks(
    masks: np.ndarray,
    valid: np.ndarray,
    *,
    max_scale: float = 1.2,
    min_area_fraction: float = 0.3,
) -> MaskReplacement:
    """Replace every failed mask of a slice by the best valid one, affinely aligned.

    Args:
        masks: [N, H, W] segmentations (largest object already kept for the valid ones).
        valid: bool [N] QC decision per image.
        max_scale, min_area_fraction: see :func:`moment_affine`.

    Returns:
        :class:`MaskReplacement`.
    """
    masks = np.asarray(masks) != 0
    valid = np.asarray(valid, dtype=bool)
    if masks.ndim != 3 or valid.shape != masks.shape[:1]:
        raise ValueError(f"need masks [N, H, W] and valid [N], got {masks.shape}, {valid.shape}")
    n = masks.shape[0]
    out = np.where(valid[:, None, None], masks, False)
    replaced = np.zeros(n, dtype=bool)
    excluded = np.zeros(n, dtype=bool)
    donor = np.full(n, -1, dtype=np.int64)
    donors = np.flatnonzero(valid)
    if donors.size == 0:
        excluded[:] = True
        return MaskReplacement(out, replaced, excluded, donor)
    failed_images = np.flatnonzero(~valid)
    discs = {int(i): filled_disc(masks[i]) for i in donors} if failed_images.size else {}
    for i in failed_images:
        failed = filled_disc(masks[i])
        best = min(donors, key=lambda j: (-_iou(discs[int(j)], failed), abs(int(j) - int(i))))
        m, t = moment_affine(
            masks[best],
            masks[i],
            max_scale=max_scale,
            min_area_fraction=min_area_fraction,
        )
        out[i] = align_mask(masks[best], m, t)
        replaced[i] = True
        donor[i] = best
    return MaskReplacement(out, replaced, excluded, donor)
