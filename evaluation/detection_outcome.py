"""Per-case outcome of an LV detection against a reference mask: Dice and, for a failure, why.

method.md §A7: a detection succeeds when Dice(reference LV, predicted LV) > 0.5. A failure is given
one
reason, checked in this order:

* ``empty``: no LV pixel was predicted;
* ``outside the heart``: no predicted LV pixel lies within ``heart_margin_px`` (8-connected
  dilation, default 2 px: about the myocardial wall) of the reference LV or RV blood pool;
* ``picked the RV``: the prediction overlaps the reference RV at least as much as the reference LV;
* ``partial LV``: on the LV, but too small, too large or shifted for Dice > 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from quantification.lv_mask import LABEL_LV, LABEL_RV, STRUCTURE_8

SUCCESS_DICE = 0.5
"""Detection succeeds above this LV Dice (docs/method.md §A7)."""
GOOD_DICE = 0.75
"""Secondary threshold of docs/method.md §A7."""
FAILURE_REASONS = ("empty", "outside the heart", "picked the RV", "partial LV")


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape; two empty masks score 1."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"mask shapes differ: {prediction.shape} vs {reference.shape}")
    total = int(prediction.sum() + reference.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & reference).sum()) / total


@dataclass(frozen=True)
class DetectionOutcome:
    """Dice of the LV and the failure reason ("" for a success)."""

    lv_dice: float
    reason: str

    @property
    def success(self) -> bool:
        return self.reason == ""


def detection_outcome(
    predicted: np.ndarray, reference: np.ndarray, heart_margin_px: int = 2
) -> DetectionOutcome:
    """Score one predicted label map against the reference.

    Args:
        predicted: uint8 [RO, E1] labels (0 background, 1 LV, 2 RV).
        reference: uint8 [RO, E1] reference labels, same shape, with at least one LV pixel.
        heart_margin_px: dilation of the reference blood pools that still counts as the heart.

    Returns:
        :class:`DetectionOutcome` (reason in :data:`FAILURE_REASONS`, "" on success).
    """
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape:
        raise ValueError(f"predicted {predicted.shape} and reference {reference.shape} differ")
    lv, ref_lv, ref_rv = predicted == LABEL_LV, reference == LABEL_LV, reference == LABEL_RV
    if not ref_lv.any():
        raise ValueError("the reference has no LV pixel (label 1): nothing to score against")
    score = dice(lv, ref_lv)
    if score > SUCCESS_DICE:
        return DetectionOutcome(score, "")
    if not lv.any():
        return DetectionOutcome(score, "empty")
    heart = (
        ndimage.binary_dilation(
            ref_lv | ref_rv, structure=STRUCTURE_8, iterations=max(heart_margin_px, 0)
        )
        if heart_margin_px > 0
        else ref_lv | ref_rv
    )
    if not (lv & heart).any():
        return DetectionOutcome(score, "outside the heart")
    if (lv & ref_rv).sum() >= (lv & ref_lv).sum():
        return DetectionOutcome(score, "picked the RV")
    return DetectionOutcome(score, "partial LV")
