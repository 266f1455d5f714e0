"""Stages 2-4 of the mapping pipeline: myocardium masks (segmented or stored), their shape QC,
failed masks replaced by an aligned donor, and every used image on a polar grid shared by the
slice (:func:`prepare_acquisition`), plus the analysed region of the reference image
(:func:`analysed_region`). docs/method.md §B2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from exports.mapping_settings import MappingError, MappingSettings
from exports.mapping_slice import Acquisition
from quantification.ecv import prune_boundary
from quantification.mask_alignment import replace_failed_masks
from quantification.myocardium_shape import largest_object, shape_qc
from quantification.polar import PolarGeometry, polar_geometry, to_polar

__all__ = [
    "CLEANUP_GAP_PX",
    "PreparedAcquisition",
    "analysed_region",
    "clean_myocardium",
    "common_ring",
    "prepare_acquisition",
]

CLEANUP_GAP_PX = 2
"""Gaps of an open predicted ring closed by :func:`clean_myocardium`, px (radius of the disc)."""


@dataclass(frozen=True)
class PreparedAcquisition:
    """An acquisition after segmentation, QC, replacement and polar resampling.

    Attributes:
        acquisition: the input.
        masks: bool [N, H, W] the mask used per image (all False if excluded).
        valid: bool [N] masks that passed QC on their own.
        replaced: bool [N] masks replaced by an aligned donor ("refined").
        excluded: bool [N] images left out (no valid mask in the slice).
        qc_reasons: why each failed mask failed ("" if valid).
        geometries: polar geometry per used image (None where excluded).
        polar: float64 [n_used, n_angles, n_depth] the used images on the polar grid.
        reference: index of the reference image (first used one), -1 if none.
    """

    acquisition: Acquisition
    masks: np.ndarray
    valid: np.ndarray
    replaced: np.ndarray
    excluded: np.ndarray
    qc_reasons: list[str]
    geometries: list[PolarGeometry | None]
    polar: np.ndarray
    reference: int

    @property
    def used(self) -> np.ndarray:
        return ~self.excluded

    @property
    def reference_geometry(self) -> PolarGeometry:
        geometry = self.geometries[self.reference] if self.reference >= 0 else None
        if geometry is None:
            raise MappingError(f"{self.where}: no usable image")
        return geometry

    @property
    def where(self) -> str:
        return f"{self.acquisition.case_id}/{self.acquisition.slice_id}"

    def resample(self, images: np.ndarray) -> np.ndarray:
        """Images [N, H, W] of this acquisition (e.g. a function of its images) on the polar
        grid of each used image: float64 [n_used, n_angles, n_depth]."""
        used = [(image, g) for image, g in zip(images, self.geometries, strict=True)
                if g is not None]  # fmt: skip
        return np.stack([to_polar(image, g) for image, g in used])

    def counts(self) -> dict[str, int]:
        return {
            "n_images": int(self.valid.size),
            "n_valid": int(self.valid.sum()),
            "n_refined": int(self.replaced.sum()),
            "n_excluded": int(self.excluded.sum()),
        }


def common_ring(geometries: list[PolarGeometry | None]) -> list[PolarGeometry | None]:
    """The slice's images on one ring: each keeps its own centroid, all share the median radii.

    Per-image radii come from pixel-quantised masks (+-0.5 px at each border, a large fraction
    of a 6-10 px wall); the median over the images of a slice is a steadier ring, and image n's
    grid is that ring translated to image n's centroid (sub-pixel accurate), which aligns images
    that moved by translation exactly.
    """
    present = [g for g in geometries if g is not None]
    if not present:
        return list(geometries)
    r_in = np.median(np.stack([g.r_inner for g in present]), axis=0)
    r_out = np.median(np.stack([g.r_outer for g in present]), axis=0)
    return [
        None
        if g is None
        else PolarGeometry(
            centre=g.centre, r_inner=r_in, r_outer=r_out, n_depth=g.n_depth, shape=g.shape
        )  # fmt: skip
        for g in geometries
    ]


def clean_myocardium(mask: np.ndarray, gap_px: int = CLEANUP_GAP_PX) -> np.ndarray:
    """bool [H, W]: a predicted myocardium tidied before its shape QC.

    The largest 8-connected object; every hole but the largest (the cavity) filled (small holes
    in the wall make the Euler number negative); and a ring left open by a gap of up to
    ``gap_px`` pixels closed (binary closing with a disc of that radius, only when the object has
    no hole at all: a closed ring is never changed). docs/method.md §B2.
    """
    obj = largest_object(mask)
    if not obj.any():
        return obj
    holes, n_holes = ndimage.label(~obj & ndimage.binary_fill_holes(obj))
    if n_holes == 0 and gap_px > 0:
        rows, cols = np.ogrid[-gap_px : gap_px + 1, -gap_px : gap_px + 1]
        disc = rows**2 + cols**2 <= gap_px**2
        closed = ndimage.binary_closing(np.pad(obj, gap_px), structure=disc)
        closed = closed[gap_px:-gap_px, gap_px:-gap_px]
        holes, n_holes = ndimage.label(~closed & ndimage.binary_fill_holes(closed))
        if n_holes == 0:
            return obj
        obj = closed
    if n_holes > 1:
        sizes = ndimage.sum_labels(np.ones_like(holes), holes, index=np.arange(1, n_holes + 1))
        cavity = int(np.argmax(sizes)) + 1
        obj = obj | ((holes > 0) & (holes != cavity))
    return obj


def prepare_acquisition(
    acquisition: Acquisition,
    settings: MappingSettings,
    segmenter: Callable[[np.ndarray], np.ndarray] | None,
) -> PreparedAcquisition:
    """Segmentation (or stored masks), QC, replacement and polar resampling."""
    s = settings
    where = f"{acquisition.case_id}/{acquisition.slice_id}"
    if segmenter is not None:
        raw = segmenter(acquisition.images)
    elif acquisition.masks is not None:
        raw = np.asarray(acquisition.masks) != 0
    else:
        raise MappingError(f"{where}: no masks stored and no segmentation model given")
    if s.mask_cleanup:
        raw = np.stack([clean_myocardium(m) for m in raw])
    qcs = [
        shape_qc(
            m,
            max_eccentricity=s.max_eccentricity,
            required_euler_number=s.required_euler_number,
            min_area_px=s.min_area_px,
        )
        for m in raw
    ]
    valid = np.array([q.valid for q in qcs], dtype=bool)
    kept = np.stack([q.mask if q.valid else m for q, m in zip(qcs, raw, strict=True)])
    replacement = replace_failed_masks(kept, valid)
    own: list[PolarGeometry | None] = []
    excluded = replacement.excluded.copy()
    for n, mask in enumerate(replacement.masks):
        geometry = None
        if not excluded[n]:
            try:
                geometry = polar_geometry(mask, n_angles=s.n_angles, n_depth=s.n_depth)
            except ValueError:  # an aligned donor moved off the image: nothing to sample
                excluded[n] = True
        own.append(geometry)
    geometries = common_ring(own)
    polar = [
        to_polar(image, g)
        for image, g in zip(acquisition.images, geometries, strict=True)
        if g is not None
    ]
    used = np.flatnonzero(~excluded)
    return PreparedAcquisition(
        acquisition=acquisition,
        masks=replacement.masks & ~excluded[:, None, None],
        valid=valid,
        replaced=replacement.replaced & ~excluded,
        excluded=excluded,
        qc_reasons=[q.reason for q in qcs],
        geometries=geometries,
        polar=np.stack(polar) if polar else np.empty((0, s.n_angles, s.n_depth)),
        reference=int(used[0]) if used.size else -1,
    )


def analysed_region(
    prepared: PreparedAcquisition,
    prune_px: int,
    details: dict[str, Any],
    min_fraction: float = 0.0,
) -> np.ndarray:
    """The reference mask without ``prune_px`` boundary pixels. A wall too thin for that (a
    thin myocardium at a coarse resolution: pruning 2 px at each border of a 4 px wall leaves
    nothing) is pruned less, down to 0, until at least ``min_fraction`` of the mask and one
    pixel are left (the width used is ``details["prune_px_used"]``)."""
    mask = prepared.masks[prepared.reference]
    width = prune_px
    region = prune_boundary(mask, width)
    while width > 0 and (not region.any() or region.sum() < min_fraction * mask.sum()):
        width -= 1
        region = prune_boundary(mask, width)
    details["prune_px_used"] = width
    details["n_analysed_px"] = int(region.sum())
    return region
