"""What the mapping pipeline takes and gives per slice: the weighted images of one slice in one
modality (:class:`Acquisition`, the mapping contract of docs/data_contracts.md) and the
outcome (:class:`SliceResult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exports.mapping_settings import MappingError
from quantification.aha_segments import InsertionPoint

__all__ = ["Acquisition", "SliceResult"]


@dataclass(frozen=True)
class Acquisition:
    """The weighted images of one slice in one modality (the mapping contract of data_contracts.md).

    Attributes:
        case_id, slice_id: where it came from (for messages and outputs).
        images: float32 [N, H, W].
        times_ms: float [N] T2-prep echo times (T2) or inversion times (T1), ms.
        masks: uint8/bool [N, H, W] stored myocardium masks, or None (a model must segment).
        level: "basal", "mid" or "apical" (None if unknown: no AHA segments).
        rv_insertion_deg: anterior RV insertion point (degrees, ``aha_segments`` convention) if
            known, else None (estimated).
        sequence: the slice attr ``sequence`` (stone | molli | shmolli | sasha | look_locker |
            t2prep), None if unknown.
    """

    case_id: str
    slice_id: str
    images: np.ndarray
    times_ms: np.ndarray
    masks: np.ndarray | None = None
    level: str | None = None
    rv_insertion_deg: float | None = None
    sequence: str | None = None

    def __post_init__(self) -> None:
        where = f"{self.case_id}/{self.slice_id}"
        if self.images.ndim != 3:
            raise MappingError(f"{where}: images must be [N, H, W], got {self.images.shape}")
        if np.shape(self.times_ms) != self.images.shape[:1]:
            raise MappingError(
                f"{where}: {self.images.shape[0]} images but times of shape "
                f"{np.shape(self.times_ms)}"
            )
        if self.masks is not None and self.masks.shape != self.images.shape:
            raise MappingError(
                f"{where}: masks {self.masks.shape} do not match images {self.images.shape}"
            )


@dataclass
class SliceResult:
    """Outcome of one slice.

    Attributes:
        case_id, slice_id, level: identification.
        quantity: ``"t1_ms"``, ``"t2_ms"`` or ``"ecv_percent"``.
        values: float32 [H, W] the map in the reference image's pixels, NaN outside the analysed
            myocardium (all NaN for a failed slice).
        segments: float64 [16] mean per AHA segment (NaN where absent or failed).
        success: docs/method.md §B4 slice success.
        reason: why it failed ("" on success).
        refined_images: replaced masks over all acquisitions of the slice.
        n_images: images over all acquisitions.
        mean: mean of the map's finite pixels (NaN if none).
        n_pixels: finite pixels of the map.
        insertion: the RV insertion point used (None: no segments).
        details: per-acquisition counts, blood T1 etc. (JSON-able).
        reference_image: the image (of the last acquisition, post for ECV) the map is drawn on.
        segment_labels: int8 [H, W] AHA segment (1-16) of every analysed pixel, 0 elsewhere
            (None without segments).
        r_squared: float32 [H, W] the pixel fits' coefficient of determination where ``values``
            is finite (T1 and T2; None for ECV).
        whole_slice: the map covers every pixel with signal (no masks and no model: no
            segments; ``mean`` is over all fitted pixels, not only myocardium).
    """

    case_id: str
    slice_id: str
    level: str | None
    quantity: str
    values: np.ndarray
    segments: np.ndarray
    success: bool
    reason: str
    refined_images: int
    n_images: int
    mean: float
    n_pixels: int
    insertion: InsertionPoint | None
    details: dict[str, Any] = field(default_factory=dict)
    reference_image: np.ndarray | None = None
    segment_labels: np.ndarray | None = None
    r_squared: np.ndarray | None = None
    whole_slice: bool = False

    @property
    def refinement_rate(self) -> float:
        """Replaced masks / images of the slice."""
        return self.refined_images / self.n_images if self.n_images else float("nan")
