"""Every threshold of the mapping pipeline (:class:`MappingSettings`, the flags of ``inline-cmr
mapping``) and its error (:class:`MappingError`).

Importable with NumPy and SciPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantification.aha_segments import MIN_VALID_T1_IMAGES, MIN_VALID_T2_IMAGES
from quantification.ecv import (
    BLOOD_DISC_RADIUS_PX,
    BLOOD_MARGIN_PX,
    ECV_RANGE_PERCENT,
    T1_RANGE_MS,
    T2_RANGE_MS,
)
from quantification.myocardium_shape import MAX_ECCENTRICITY, REQUIRED_EULER_NUMBER
from quantification.t1_sequences import T1_SEQUENCES

__all__ = ["MappingError", "MappingSettings"]


class MappingError(ValueError):
    """A slice cannot be mapped (inconsistent input); the message names the slice."""


@dataclass(frozen=True)
class MappingSettings:
    """Every threshold of the mapping pipeline (command-line flags of ``python -m exports
    mapping``; defaults = docs/method.md §B2/B4).

    Attributes:
        max_eccentricity: QC, a valid mask has eccentricity below this.
        required_euler_number: QC, a valid mask has this Euler number (0: one ring).
        min_area_px: QC, a valid mask has at least this many pixels.
        n_angles, n_depth: polar grid (angle bins over 360 deg x transmural samples).
        prune_px: boundary pixels removed by erosion (each of endo- and epicardium). 2: on the
            phantoms the errors sit in the outer 2 px (partial volume 1-1.8 px plus the blur of
            resampling moved images); the third pixel in had no error (measured, noise-free).
        min_analysed_fraction: a wall so thin that pruning ``prune_px`` leaves less than this
            fraction of the mask is pruned less (``exports.mask_preparation.analysed_region``).
            0.15: phantom masks keep 21-44 % with 2 px; masks one pixel thinner (a 4 px wall)
            kept 0.6-22 %, one pixel of a 290 px apical mask.
        t2_range_ms, ecv_range_percent, t1_range_ms: valid ranges; values outside become NaN.
        blood_radius_px: blood-pool disc radius at the myocardial centroid, input pixels.
        blood_statistic: ``"pixel_median"`` (median of the per-pixel T1s of the cavity pixels of
            the disc), ``"median"`` or ``"mean"`` (of the disc signal; the paper: mean).
        noise_floor_correction: remove the Rician noise floor from the polar samples before the
            fits, with sigma from the image frame (``quantification.noise_floor``).
        coil_correction: estimate per-image receive-coil gains from the heart's motion
            (``quantification.coil_shading``) and divide them out before the fits.
        blood_margin_px: blood-pool pixels lie more than this from the myocardium (partial
            volume; :func:`quantification.ecv.blood_pool_pixels`), input pixels.
        t1_sequence: ``"auto"`` (the slice attr ``sequence``; STONE when absent) or one of
            ``quantification.t1_sequences.T1_SEQUENCES`` for every slice (T1 and ECV).
        t1_model: STONE's model: ``"t1_2p"`` (docs/method.md §B2) or ``"t1_3p"``.
        t2_model: ``"t2_shared_offset"`` (default): ``A (exp(-TE/T2) + beta)`` with beta = B / A
            one value per slice (estimated from the mid-wall,
            ``relaxometry.estimate_offset_fraction``) and A, T2 per pixel, or ``"t2_3p"``
            (method.md §B2): ``A exp(-TE/T2) + B`` with B free per pixel. With TE <= 60 ms a free B
            is
            nearly degenerate with T2: its per-pixel SD is 1.5-2.5x the Cramer-Rao bound of
            that model at SNR 30 (and biased 8-27 %), while the shared offset reaches its bound
            (benchmarks/mapping_accuracy.py). It needs masks that follow the motion between
            images.
        t2_offset_scope: ``"case"`` (default): one B / A for all slices of a patient
            (``t2_case``; the offset comes from the T1 recovery after the T2 preparation: the
            same sequence and myocardium in every slice), ``"slice"``: one per slice (also what
            ``t2_slice`` does). On the phantoms at SNR 30 the per-slice estimate's noise (the
            three-parameter bound over the slice's pixels) gave slice means of SD 1.75 ms (R
            0.92), the per-patient one 0.88 ms (R 0.98).
        segment_fit: ``"pixel"``: segment and slice means of the pixel map; ``"roi"``: the fit
            of the mean signal of each segment's pixels, and of all analysed pixels for the
            slice mean (T1 and T2).
        min_valid_t2, min_valid_t1: method.md §B4 slice success (valid images per acquisition; the
        T1
            count is for 11 images and scales with the sequence's image count,
            ``aha_segments.valid_t1_images_needed``).
        mask_threshold: probability above which a pixel is myocardium (with a model).
        fuse_slice: with a model, one segmentation per slice: the mean of the probabilities of
            all its images, thresholded, for every image (the images of a mapping slice share
            the anatomy; meant for motion-corrected series, as the images are then not aligned
            by their own masks).
        mask_cleanup: before the QC, fill the holes of a mask other than the cavity and close
            gaps of up to 2 px in an open ring (``exports.mask_preparation.clean_myocardium``).
    """

    max_eccentricity: float = MAX_ECCENTRICITY
    required_euler_number: int = REQUIRED_EULER_NUMBER
    min_area_px: int = 20
    n_angles: int = 120
    n_depth: int = 16
    prune_px: int = 2
    min_analysed_fraction: float = 0.15
    t2_range_ms: tuple[float, float] = T2_RANGE_MS
    ecv_range_percent: tuple[float, float] = ECV_RANGE_PERCENT
    t1_range_ms: tuple[float, float] = T1_RANGE_MS
    blood_radius_px: float = BLOOD_DISC_RADIUS_PX
    blood_margin_px: float = BLOOD_MARGIN_PX
    coil_correction: bool = True
    noise_floor_correction: bool = True
    blood_statistic: str = "pixel_median"
    t1_sequence: str = "auto"
    t1_model: str = "t1_2p"
    t2_model: str = "t2_shared_offset"
    t2_offset_scope: str = "case"
    segment_fit: str = "pixel"
    min_valid_t2: int = MIN_VALID_T2_IMAGES
    min_valid_t1: int = MIN_VALID_T1_IMAGES
    mask_threshold: float = 0.5
    fuse_slice: bool = False
    mask_cleanup: bool = False

    def __post_init__(self) -> None:
        choices = {
            "t1_sequence": ("auto", *T1_SEQUENCES),
            "t1_model": ("t1_2p", "t1_3p"),
            "t2_model": ("t2_shared_offset", "t2_3p"),
            "segment_fit": ("pixel", "roi"),
            "t2_offset_scope": ("slice", "case"),
            "blood_statistic": ("pixel_median", "median", "mean"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"MappingSettings.{key}={getattr(self, key)!r}; expected one of "
                                 f"{allowed}")  # fmt: skip
