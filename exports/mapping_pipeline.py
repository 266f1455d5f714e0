"""Inline T1, T2 and ECV mapping of one short-axis slice (method.md §B2), from images to maps and
segments.

Per acquisition (the N weighted images of one slice):

1. Myocardium masks: from the segmentation artifact (:class:`MyocardiumSegmenter`) or, without
   a model, the masks stored in the file.
2. Shape QC of every mask (``quantification.myocardium_shape``): largest object, Euler number 0,
   eccentricity < 0.65.
3. Failed masks replaced by the best valid mask of the slice, affinely aligned
   (``quantification.mask_alignment``); with no valid mask the images are excluded.
4. Polar resampling of every used image about its own myocardial centroid
   (``quantification.polar``) on a ring shared by the slice (median of the per-image border
   radii, :func:`common_ring`), which aligns the images; the *reference* geometry is that of
   the first used image (image 0 unless it was excluded), so maps come out in its pixels.
5. Pixel-wise fit on the polar grid (``quantification.relaxometry``): T2 ``A exp(-TE/T2) + B``
   (by default B / A shared by the slice, ``t2_model``; B free per pixel as in method.md §B2 with
   ``t2_3p``), or T1 with the model of the slice's sequence (``quantification.t1_sequences``:
   STONE, MOLLI, ShMOLLI, SASHA; the slice attr ``sequence`` with ``t1_sequence="auto"``,
   STONE when it is absent), plus, for ECV, blood T1 from the cavity pixels of the 5 px disc at
   the myocardial centroid (``quantification.ecv``). Before the fit
   the Rician noise floor is removed (sigma from the image frame, ``quantification.noise_floor``)
   and the per-image receive-coil gains caused by the heart moving through the fixed coil
   sensitivity are estimated and divided out (``quantification.coil_shading``).
6. ECV on the polar grid (native and post polar grids are both anchored on the myocardium, so
   sample (angle, depth) is the same tissue in both), back to Cartesian pixels of the reference
   image, boundary pruning, valid range; AHA segments from the RV insertion point (given, e.g. the
   file attribute ``rv_insertion_deg``, or estimated) and the docs/method.md §B4 slice success rule.

With ``segment_fit="roi"`` (T1 and T2) each AHA segment's value is the fit of the mean signal
of its pixels (the aligned images resampled on the reference image's pixels) and the slice mean
the fit of the mean signal of all analysed pixels, instead of means of the pixel map.

Without masks and without a segmentation model, T1 and T2 slices are mapped whole
(:mod:`exports.whole_slice_maps`: every pixel with signal, native geometry, no segments).

A slice that fails the success rule (too few valid images) is reported with its reason and
all-NaN maps. Importable with torch, NumPy and SciPy only (no h5py, Lightning, Hydra or W&B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deployment.artifact import MYOCARDIUM_TASK, Artifact, ArtifactError
from exports.whole_slice_maps import free_parameters, whole_slice_map
from quantification.aha_segments import (
    MIN_VALID_T1_IMAGES,
    MIN_VALID_T2_IMAGES,
    N_SEGMENTS,
    InsertionPoint,
    aha_segment_map,
    estimate_rv_insertion,
    segment_means,
    slice_success,
    valid_t1_images_needed,
)
from quantification.coil_shading import estimate_coil_gradient
from quantification.ecv import (
    BLOOD_DISC_RADIUS_PX,
    BLOOD_MARGIN_PX,
    ECV_RANGE_PERCENT,
    T1_RANGE_MS,
    T2_RANGE_MS,
    blood_t1,
    ecv_percent,
    prune_boundary,
    restrict_to_range,
)
from quantification.image_resize import (
    NETWORK_SIZE,
    ResizeGeometry,
    image_to_network,
    normalize_intensity,
    probability_from_network,
)
from quantification.mask_alignment import replace_failed_masks
from quantification.myocardium_shape import MAX_ECCENTRICITY, REQUIRED_EULER_NUMBER, shape_qc
from quantification.noise_floor import remove_noise_floor, slice_noise
from quantification.polar import PolarGeometry, from_polar, polar_geometry, to_polar
from quantification.relaxometry import (
    RelaxometryFit,
    estimate_offset_fraction,
    fit_t1,
    fit_t2,
)
from quantification.t1_sequences import (
    SHMOLLI_IR1_SAMPLES,
    T1_SEQUENCES,
    fit_t1_sequence,
    resolve_t1_sequence,
)

__all__ = [
    "MYOCARDIUM_TASK",
    "Acquisition",
    "CorrectedPolar",
    "MappingError",
    "MappingPipeline",
    "MappingSettings",
    "MyocardiumSegmenter",
    "PreparedAcquisition",
    "common_ring",
    "SliceResult",
]

"""``metadata["task"]`` of the myocardium segmentation artifacts."""


MID_WALL_CUT = 5 / 16
"""The T2 offset shared by a slice is estimated from the middle of the wall: this fraction of the
transmural samples is left out at each border. Blood at the endocardium decays so slowly over
TE <= 60 ms that a sample with some of it looks like offset (noise-free phantoms: leaving out a
quarter at each border gave a slice T2 bias of -0.21 ms, 5/16 -0.08 ms)."""


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
    """

    max_eccentricity: float = MAX_ECCENTRICITY
    required_euler_number: int = REQUIRED_EULER_NUMBER
    min_area_px: int = 20
    n_angles: int = 120
    n_depth: int = 16
    prune_px: int = 2
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


class MyocardiumSegmenter:
    """Runs a myocardium segmentation artifact on native-size images.

    The artifact (task ``myocardium_segmentation``) maps float32 ``[B, 1, S, S]`` (S = 256) to
    probabilities ``[B, 2, S, S]`` (softmax over ``metadata["classes"]``, the ``"myocardium"``
    channel is used) or ``[B, 1, S, S]`` (sigmoid P(myocardium)). The images are prepared exactly
    as in training, by :mod:`quantification.image_resize` with ``metadata["preprocessing"]``
    (written from ``MappingDataModule.preprocessing``): per-image percentile scaling
    (``percentiles``, ``clip``), zero padding to a square if ``keep_aspect``, bicubic resize to
    ``size``; the probabilities go back to the native pixels bilinearly (padding cropped) and are
    thresholded at ``threshold``.
    """

    def __init__(self, artifact: Artifact, threshold: float = 0.5, batch_size: int = 16) -> None:
        meta = artifact.metadata
        if meta["task"] != MYOCARDIUM_TASK:
            raise ArtifactError(
                f"{artifact.path}: task {meta['task']!r}, expected {MYOCARDIUM_TASK!r}"
            )
        prep = dict(meta.get("preprocessing") or {})
        if prep.get("normalisation", "percentile") != "percentile":
            raise ArtifactError(
                f"{artifact.path}: preprocessing normalisation {prep.get('normalisation')!r}; this "
                "runtime implements 'percentile' (quantification.image_resize.normalize_intensity)"
            )
        if prep.get("interpolation", "bicubic") != "bicubic":
            raise ArtifactError(
                f"{artifact.path}: preprocessing interpolation {prep.get('interpolation')!r}; "
                "this runtime implements 'bicubic'"
            )
        size = prep.get("size", (meta.get("input_shape") or [None, 1, NETWORK_SIZE])[-1:] * 2)
        if len(size) != 2 or int(size[0]) != int(size[1]):
            raise ArtifactError(f"{artifact.path}: preprocessing size {size}, expected [S, S]")
        classes = list(meta.get("classes") or [])
        self.channel = classes.index("myocardium") if "myocardium" in classes else -1
        self.artifact = artifact
        self.threshold = threshold
        self.batch_size = batch_size
        self.size = int(size[0])
        self.percentiles = tuple(float(p) for p in prep.get("percentiles", (1.0, 99.0)))
        self.clip = bool(prep.get("clip", True))
        self.keep_aspect = bool(prep.get("keep_aspect", False))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, H, W] P(myocardium) of native-size images [N, H, W]."""
        images = np.asarray(images, dtype=np.float32)
        geometry = ResizeGeometry(*images.shape[-2:], size=self.size, keep_aspect=self.keep_aspect)
        x = normalize_intensity(images, *self.percentiles, clip=self.clip)
        x = torch.from_numpy(image_to_network(x, geometry))[:, None]
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            with torch.inference_mode():
                prob = self.artifact.module(x[start : start + self.batch_size].contiguous())
            if prob.ndim != 4 or prob.shape[1] not in (1, 2):
                raise ArtifactError(
                    f"{self.artifact.path}: output shape {tuple(prob.shape)}, expected "
                    f"[B, 1 or 2, {self.size}, {self.size}]"
                )
            channel = 0 if prob.shape[1] == 1 else self.channel
            out.append(prob[:, channel].float())
        return probability_from_network(torch.cat(out).numpy(), geometry)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """bool [N, H, W] myocardium masks of native-size images [N, H, W]."""
        return self.probabilities(images) > self.threshold


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


@dataclass(frozen=True)
class _T2Slice:
    """A T2 slice between preparation and fit."""

    prepared: PreparedAcquisition
    corrected: CorrectedPolar
    te_ms: np.ndarray
    details: dict[str, Any]

    def mid_wall(self) -> np.ndarray:
        """The corrected polar samples of the middle of the wall (``MID_WALL_CUT``)."""
        polar = self.corrected.polar
        cut = round(polar.shape[-1] * MID_WALL_CUT)
        return polar[..., cut : polar.shape[-1] - cut]


@dataclass(frozen=True)
class CorrectedPolar:
    """The used images of an acquisition on the polar grid, ready for the fits.

    Attributes:
        polar: float64 [n_used, n_angles, n_depth] without the Rician noise floor and with the
            coil gains divided out (the pixel fits' input).
        raw: float64 [n_used, n_angles, n_depth] the resampled magnitudes ``M``, or, with the
            noise floor removed, the resampled ``M^2``.
        sigma: noise SD per channel (NaN when the floor is not removed).
        gains: float64 [n_used] coil gains divided out (ones without coil correction).
    """

    polar: np.ndarray
    raw: np.ndarray
    sigma: float
    gains: np.ndarray

    @property
    def power(self) -> bool:
        """Whether ``raw`` holds squared magnitudes (the noise floor is removed)."""
        return bool(np.isfinite(self.sigma) and self.sigma > 0)

    def region_signals(
        self, geometry: PolarGeometry, region: np.ndarray, regions: np.ndarray
    ) -> np.ndarray:
        """Mean signal [n_used, K] of each of the ``regions`` bool [K, H, W] (pixels of the
        reference image inside ``region``; NaN where a region has no pixel).

        With the noise floor removed the magnitudes are power-averaged, ``sqrt(mean(M^2) -
        2 sigma^2)``: ``M^2`` is resampled (linear, so ``E[M^2] = S^2 + 2 sigma^2`` survives
        the interpolation, which lowers the variance of interpolated magnitudes), and the mean
        over a region is unbiased for its ``S^2`` where the per-pixel floor removal (clipped at
        0) is not: near an inversion's null point or at a short saturation time.
        """
        use_power = self.power
        aligned = from_polar(self.raw, geometry, region)
        inside = np.isfinite(aligned).all(axis=0)
        signals = np.full((aligned.shape[0], len(regions)), np.nan)
        for k, pixels in enumerate(regions):  # <= 17 regions
            pixels = pixels & inside
            if pixels.any():
                signals[:, k] = aligned[:, pixels].mean(axis=1)
        if use_power:
            signals = np.sqrt(np.maximum(signals - 2.0 * self.sigma**2, 0.0))
        return signals / self.gains[:, None]


def _in_range(values: np.ndarray, valid_range: tuple[float, float], details: dict[str, Any]
              ) -> np.ndarray:  # fmt: skip
    """``values`` with NaN outside ``valid_range``; the counts go into ``details``."""
    fitted = np.isfinite(values)
    kept = restrict_to_range(values, valid_range)
    details["n_fitted_px"] = int(fitted.sum())
    details["n_out_of_range_px"] = int(fitted.sum() - np.isfinite(kept).sum())
    details["valid_range"] = list(valid_range)
    return kept


def _no_value_reason(details: dict[str, Any]) -> str:
    """Why a slice whose images were valid has no finite myocardial value (from the counts
    :func:`_in_range` and ``MappingPipeline._analysed_region`` left in ``details``, one level
    down for ECV's native / post)."""
    counts = {**details, **details.get("t1", {}), **details.get("t2", {})}
    if counts.get("n_analysed_px", 1) == 0:
        return "no finite myocardial value: the analysed myocardium is empty"
    if counts.get("n_fitted_px", 1) == 0:
        return "no finite myocardial value: every pixel fit failed"
    if counts.get("n_out_of_range_px", 0) > 0:
        low, high = counts["valid_range"]
        return (f"no finite myocardial value: all {counts['n_out_of_range_px']} fitted pixels "
                f"outside the valid range {low:g}-{high:g}")  # fmt: skip
    return "no finite myocardial value"


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


class MappingPipeline:
    """Maps slices; keep one instance (it holds the loaded segmentation model, if any).

    Args:
        settings: thresholds (:class:`MappingSettings`).
        segmenter: a :class:`MyocardiumSegmenter`; None uses the masks stored with the images.
    """

    def __init__(
        self, settings: MappingSettings | None = None, segmenter: MyocardiumSegmenter | None = None
    ) -> None:
        self.settings = settings or MappingSettings()
        self.segmenter = segmenter

    # ---------------------------------------------------------------- one acquisition
    def prepare(self, acquisition: Acquisition) -> PreparedAcquisition:
        """Segmentation (or stored masks), QC, replacement and polar resampling."""
        s = self.settings
        where = f"{acquisition.case_id}/{acquisition.slice_id}"
        if self.segmenter is not None:
            raw = self.segmenter(acquisition.images)
        elif acquisition.masks is not None:
            raw = np.asarray(acquisition.masks) != 0
        else:
            raise MappingError(f"{where}: no masks stored and no segmentation model given")
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

    def _analysed_region(self, prepared: PreparedAcquisition, details: dict[str, Any]
                         ) -> np.ndarray:  # fmt: skip
        """The reference mask without ``prune_px`` boundary pixels; a wall too thin for that
        (a thin myocardium at a coarse resolution) is pruned less, down to 0, rather than
        analysed nowhere (the width used is ``details["prune_px_used"]``)."""
        mask = prepared.masks[prepared.reference]
        width = self.settings.prune_px
        region = prune_boundary(mask, width)
        while width > 0 and not region.any():
            width -= 1
            region = prune_boundary(mask, width)
        details["prune_px_used"] = width
        details["n_analysed_px"] = int(region.sum())
        return region

    def _insertion(
        self, prepared: list[PreparedAcquisition], given: float | None
    ) -> InsertionPoint | None:
        if given is not None and np.isfinite(given):
            return InsertionPoint(float(given), float("nan"), 1, "given")
        images, masks, geometries = [], [], []
        for p in prepared:
            for n in np.flatnonzero(p.used):
                images.append(p.acquisition.images[n])
                masks.append(p.masks[n])
                geometries.append(p.geometries[n])
        if not images:
            return None
        return estimate_rv_insertion(
            np.stack(images),
            np.stack(masks),
            geometries,
            blood_radius_px=self.settings.blood_radius_px,
        )

    def _finish(
        self,
        prepared: list[PreparedAcquisition],
        quantity: str,
        values: np.ndarray | None,
        success: bool,
        reason: str,
        details: dict[str, Any],
        roi: Callable[[np.ndarray], np.ndarray] | None = None,
        r_squared: np.ndarray | None = None,
    ) -> SliceResult:
        """The slice result: segments from the insertion point (means of ``values``, or the ROI
        fit ``roi`` of each segment's pixels, which also gives the slice mean)."""
        last = prepared[-1]
        acquisition = last.acquisition
        shape = acquisition.images.shape[1:]
        if values is None or not success:
            values = np.full(shape, np.nan)
        finite = np.isfinite(values)
        if success and not finite.any():
            success, reason = False, _no_value_reason(details)
        insertion = None
        seg_map = None
        segments = np.full(N_SEGMENTS, np.nan)
        mean = float(values[finite].mean()) if finite.any() else float("nan")
        if success and acquisition.level is not None and finite.any():
            insertion = self._insertion(prepared, acquisition.rv_insertion_deg)
            if insertion is not None:
                seg_map = aha_segment_map(
                    finite,
                    last.reference_geometry.centre,
                    insertion.anterior_deg,
                    acquisition.level,
                    insertion.direction,
                )
                segments = segment_means(values, seg_map)
        if roi is not None and success and finite.any():
            labels = np.zeros(shape, np.int64) if seg_map is None else seg_map
            regions = np.stack([labels == k for k in range(1, N_SEGMENTS + 1)] + [finite])
            fitted = roi(regions)
            segments, mean = fitted[:-1], fitted[-1]  # NaN where a segment is absent
            details["segment_fit"] = "roi"
        refined = sum(int(p.replaced.sum()) for p in prepared)
        n_images = sum(int(p.valid.size) for p in prepared)
        reference_image = acquisition.images[last.reference] if last.reference >= 0 else None
        return SliceResult(
            case_id=acquisition.case_id,
            slice_id=acquisition.slice_id,
            level=acquisition.level,
            quantity=quantity,
            values=values.astype(np.float32),
            segments=segments,
            success=success,
            reason=reason,
            refined_images=refined,
            n_images=n_images,
            mean=float(mean),
            n_pixels=int(finite.sum()),
            insertion=insertion,
            details=details,
            reference_image=reference_image,
            segment_labels=None if seg_map is None else seg_map.astype(np.int8),
            r_squared=None if r_squared is None or not success else r_squared.astype(np.float32),
        )

    def _coil_corrected(
        self,
        prepared: PreparedAcquisition,
        fit: Callable[[np.ndarray], RelaxometryFit],
        details: dict[str, Any],
        pixel_fit: Callable[[np.ndarray], RelaxometryFit],
        n_parameters: int,
    ) -> CorrectedPolar:
        """The polar stack without the Rician noise floor and with the motion-induced coil
        gains divided out (each if enabled). The noise is measured on the used images
        (:func:`quantification.noise_floor.slice_noise`: verified air in the image frame, else
        the residuals of ``pixel_fit``, ``n_parameters`` per pixel); when it cannot be measured
        the floor is left in and ``details["noise_note"]`` says why."""
        polar = raw = prepared.polar
        sigma = float("nan")
        if self.settings.noise_floor_correction:
            images = prepared.acquisition.images
            noise = slice_noise(images[prepared.used], pixel_fit, n_parameters)
            details.update(noise.as_details())
            if noise.measured:  # removed before the (variance-lowering) interpolation
                sigma = noise.sigma
                polar = prepared.resample(remove_noise_floor(images, sigma))
                raw = prepared.resample(np.square(images, dtype=np.float64))
        details["noise_floor_removed"] = bool(np.isfinite(sigma))
        gains = np.ones(polar.shape[0])
        if self.settings.coil_correction:
            centres = np.array([g.centre for g in prepared.geometries if g is not None])
            estimate = estimate_coil_gradient(polar, centres - centres[0], fit)
            details["coil_gradient_per_px"] = estimate.gradient_per_px.tolist()
            gains = estimate.gains
        return CorrectedPolar(polar / gains[:, None, None], raw, sigma, gains)

    # ---------------------------------------------------------------- fits
    def _map_and_roi(
        self,
        prepared: PreparedAcquisition,
        corrected: CorrectedPolar,
        fit: Callable[[np.ndarray], RelaxometryFit],
        valid_range: tuple[float, float],
        details: dict[str, Any],
    ) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
        """The fitted map and its R^2 in the reference image's pixels, and (``segment_fit="roi"``)
        the ROI fit: regions bool [K, H, W] -> the fit of each region's mean signal [K]."""
        geometry = prepared.reference_geometry
        region = self._analysed_region(prepared, details)
        result = fit(corrected.polar)
        details["fit_failed_fraction"] = float(np.mean(result.flags != 0))
        cart = from_polar(np.stack([result.t_ms, result.r_squared]), geometry, region)
        values = _in_range(cart[0], valid_range, details)
        r_squared = np.where(np.isfinite(values), cart[1], np.nan)
        if self.settings.segment_fit != "roi":
            return values, r_squared, None

        def roi(regions: np.ndarray) -> np.ndarray:
            curves = corrected.region_signals(geometry, region, regions)
            out = np.full(len(regions), np.nan)
            present = np.isfinite(curves).all(axis=0)
            if present.any():
                out[present] = fit(curves[:, present]).t_ms
            return restrict_to_range(out, valid_range)

        return values, r_squared, roi

    def _t1_fit(self, acquisition: Acquisition, details: dict[str, Any]
                ) -> Callable[[np.ndarray, np.ndarray], RelaxometryFit]:  # fmt: skip
        """The T1 fit of the acquisition's sequence (recorded in ``details``)."""
        try:
            sequence, source = resolve_t1_sequence(self.settings.t1_sequence, acquisition.sequence)
        except ValueError as exc:
            raise MappingError(f"{acquisition.case_id}/{acquisition.slice_id}: {exc}") from exc
        details["sequence"], details["sequence_source"] = sequence, source
        stone_model = self.settings.t1_model
        return lambda y, times: fit_t1_sequence(y, times, sequence, stone_model=stone_model)

    def _coil_fit(self, sequence: str, times: np.ndarray
                  ) -> Callable[[np.ndarray], RelaxometryFit]:  # fmt: skip
        """The fit that scores the coil gains of a T1 acquisition (``quantification.coil_shading``
        calls it ~100 times): the sequence's own fit for STONE and SASHA; for MOLLI the
        three-parameter fit with the polarity its first call restored kept (gains of a few per
        cent never flip a sign), one fit per call instead of four; ShMOLLI the same on its first
        inversion's 5 samples (the later ones follow the curve only for short T1)."""
        if sequence in ("stone", "sasha"):
            model = self.settings.t1_model
            return lambda y: fit_t1_sequence(y, times, sequence, stone_model=model)
        rows = list(SHMOLLI_IR1_SAMPLES) if sequence == "shmolli" else slice(None)
        first: list[np.ndarray] = []

        def fit(y: np.ndarray) -> RelaxometryFit:
            y = y[rows]
            if not first or first[0].shape != y.shape:
                result = fit_t1(y, times[rows], model="t1_3p")
                first[:] = [result.polarity]
                return result
            return fit_t1(y * first[0], times[rows], model="t1_3p", restore_polarity=False)

        return fit

    def _t1_parameters(self, sequence: str) -> int:
        return free_parameters("t1", sequence, self.settings.t2_model, self.settings.t1_model)

    def _t1_images_needed(self, acquisition: Acquisition) -> int:
        return valid_t1_images_needed(acquisition.images.shape[0], self.settings.min_valid_t1)

    # ---------------------------------------------------------------- whole slice
    def whole_slice(self, acquisition: Acquisition, quantity: str) -> SliceResult:
        """T1 or T2 map (ms) of every pixel with signal, in the native geometry, no segments
        (:mod:`exports.whole_slice_maps`)."""
        details: dict[str, Any] = {"whole_slice": True, quantity: {}}
        sequence = "auto"
        if quantity == "t1":
            self._t1_fit(acquisition, details["t1"])  # resolve (and record) the sequence
            sequence = details["t1"]["sequence"]
        result = whole_slice_map(
            acquisition.images, acquisition.times_ms, quantity, sequence,
            t2_model=self.settings.t2_model,
            noise_floor_correction=self.settings.noise_floor_correction,
        )  # fmt: skip
        details[quantity].update(result.details())
        finite = np.isfinite(result.map_ms)
        return SliceResult(
            case_id=acquisition.case_id,
            slice_id=acquisition.slice_id,
            level=acquisition.level,
            quantity=f"{quantity}_ms",
            values=result.map_ms,
            segments=np.full(N_SEGMENTS, np.nan),
            success=bool(finite.any()),
            reason="" if finite.any() else "no pixel with signal could be fitted",
            refined_images=0,
            n_images=int(acquisition.images.shape[0]),
            mean=float(result.map_ms[finite].mean()) if finite.any() else float("nan"),
            n_pixels=int(finite.sum()),
            insertion=None,
            details=details,
            reference_image=acquisition.images[0],
            r_squared=result.r_squared,
            whole_slice=True,
        )

    def _unsegmented(self, acquisition: Acquisition) -> bool:
        return self.segmenter is None and acquisition.masks is None

    # ---------------------------------------------------------------- T2
    def _t2_prepared(self, acquisition: Acquisition) -> _T2Slice | SliceResult:
        """A T2 slice ready for its fit (masks, polar grid, corrections), or its failed result."""
        s = self.settings
        prepared = self.prepare(acquisition)
        counts = prepared.counts()
        details: dict[str, Any] = {"t2": counts}
        if not slice_success(counts["n_valid"], s.min_valid_t2):
            reason = f"{counts['n_valid']} valid T2-weighted images < {s.min_valid_t2}"
            return self._finish([prepared], "t2_ms", None, False, reason, details)
        te = np.asarray(acquisition.times_ms)[prepared.used]
        t2_fit = lambda y: fit_t2(y, te)  # noqa: E731
        corrected = self._coil_corrected(prepared, t2_fit, details["t2"], t2_fit, 3)
        return _T2Slice(prepared, corrected, te, details)

    def _t2_mapped(self, t2: _T2Slice, beta: float | None) -> SliceResult:
        if beta is not None:
            t2.details["t2"]["offset_fraction"] = beta
        values, r_squared, roi = self._map_and_roi(
            t2.prepared, t2.corrected, lambda y: fit_t2(y, t2.te_ms, offset_fraction=beta),
            self.settings.t2_range_ms, t2.details["t2"],
        )  # fmt: skip
        return self._finish([t2.prepared], "t2_ms", values, True, "", t2.details, roi, r_squared)

    def t2_slice(self, acquisition: Acquisition) -> SliceResult:
        """T2 map (ms) of one slice of T2-prepared images (whole slice without masks or model);
        a shared offset is estimated from this slice alone."""
        if self._unsegmented(acquisition):
            return self.whole_slice(acquisition, "t2")
        t2 = self._t2_prepared(acquisition)
        if isinstance(t2, SliceResult):
            return t2
        beta = None
        if self.settings.t2_model == "t2_shared_offset":
            beta = estimate_offset_fraction(t2.mid_wall(), t2.te_ms)
        return self._t2_mapped(t2, beta)

    def t2_case(self, acquisitions: list[Acquisition]) -> list[SliceResult]:
        """T2 maps of all slices of one patient; with ``t2_offset_scope="case"`` the shared
        offset B / A is estimated once from the mid-wall of all its slices (one sequence, one
        myocardium: the same B / A), else per slice (:meth:`t2_slice`)."""
        if self.settings.t2_offset_scope != "case" or self.settings.t2_model != "t2_shared_offset":
            return [self.t2_slice(a) for a in acquisitions]
        ready = {
            k: self._t2_prepared(a) for k, a in enumerate(acquisitions) if not self._unsegmented(a)
        }
        fitted = [t for t in ready.values() if isinstance(t, _T2Slice)]
        beta = None
        if fitted:
            beta = estimate_offset_fraction([t.mid_wall() for t in fitted],
                                            [t.te_ms for t in fitted])  # fmt: skip
        results = []
        for k, acquisition in enumerate(acquisitions):
            t2 = ready.get(k)
            if t2 is None:
                results.append(self.whole_slice(acquisition, "t2"))
            elif isinstance(t2, SliceResult):
                results.append(t2)
            else:
                t2.details["t2"]["offset_scope"] = "case"
                results.append(self._t2_mapped(t2, beta))
        return results

    # ---------------------------------------------------------------- T1
    def t1_slice(self, acquisition: Acquisition) -> SliceResult:
        """T1 map (ms) of one slice of native or post-contrast T1-weighted images, fitted with
        the model of its sequence (whole slice without masks or model)."""
        if self._unsegmented(acquisition):
            return self.whole_slice(acquisition, "t1")
        s = self.settings
        details: dict[str, Any] = {"t1": {}}
        fit = self._t1_fit(acquisition, details["t1"])
        prepared = self.prepare(acquisition)
        details["t1"].update(prepared.counts())
        needed = self._t1_images_needed(acquisition)
        n_valid = prepared.counts()["n_valid"]
        reason = ""
        if not slice_success(n_valid, needed):
            reason = f"{n_valid} valid T1-weighted images < {needed}"
        elif details["t1"]["sequence"] == "shmolli" and prepared.excluded.any():
            reason = f"ShMOLLI needs all 7 images; {int(prepared.excluded.sum())} excluded"
        if reason:
            return self._finish([prepared], "t1_ms", None, False, reason, details)
        times = np.asarray(acquisition.times_ms)[prepared.used]
        coil_fit = self._coil_fit(details["t1"]["sequence"], times)
        corrected = self._coil_corrected(
            prepared, coil_fit, details["t1"], lambda y: fit(y, times),
            self._t1_parameters(details["t1"]["sequence"]),
        )  # fmt: skip
        values, r_squared, roi = self._map_and_roi(
            prepared, corrected, lambda y: fit(y, times), s.t1_range_ms, details["t1"]
        )
        return self._finish([prepared], "t1_ms", values, True, "", details, roi, r_squared)

    # ---------------------------------------------------------------- ECV
    def ecv_slice(self, native: Acquisition, post: Acquisition, hematocrit: float) -> SliceResult:
        """ECV map (%) of one slice from its native and post-contrast T1-weighted images, each
        fitted with the model of its sequence.

        The map is in the pixels of the post-contrast reference image.
        """
        s = self.settings
        if (native.case_id, native.slice_id) != (post.case_id, post.slice_id):
            raise MappingError(
                f"native {native.case_id}/{native.slice_id} and post {post.case_id}/"
                f"{post.slice_id} are not the same slice"
            )
        prepared = [self.prepare(native), self.prepare(post)]
        details: dict[str, Any] = {"native": prepared[0].counts(), "post": prepared[1].counts()}
        fits = [self._t1_fit(a, details[k]) for a, k in ((native, "native"), (post, "post"))]
        n_valid = [p.counts()["n_valid"] for p in prepared]
        needed = [self._t1_images_needed(a) for a in (native, post)]
        if not all(slice_success(n, k) for n, k in zip(n_valid, needed, strict=True)):
            reason = (
                f"{n_valid[0]} valid native and {n_valid[1]} valid post-contrast T1-weighted "
                f"images; need >= {needed[0]} and >= {needed[1]}"
            )
            return self._finish(prepared, "ecv_percent", None, False, reason, details)
        t1_polar, t1_blood = [], []
        for p, name, fit in zip(prepared, ("native", "post"), fits, strict=True):
            used = p.used
            times = np.asarray(p.acquisition.times_ms)[used]
            coil_fit = self._coil_fit(details[name]["sequence"], times)
            corrected = self._coil_corrected(
                p, coil_fit, details[name], lambda y, f=fit, t=times: f(y, t),
                self._t1_parameters(details[name]["sequence"]),
            )  # fmt: skip
            result = fit(corrected.polar, times)
            blood = blood_t1(
                p.acquisition.images[used],
                p.masks[used],
                times,
                radius_px=s.blood_radius_px,
                model=s.t1_model,
                margin_px=s.blood_margin_px,
                statistic=s.blood_statistic,
                sequence=details[name]["sequence"],
            )
            t1_polar.append(result.t_ms)
            t1_blood.append(float(blood.t_ms))
            details[name]["t1_blood_ms"] = float(blood.t_ms)
            details[name]["fit_failed_fraction"] = float(np.mean(result.flags != 0))
        if not all(np.isfinite(t1_blood)):
            reason = f"blood T1 fit failed (native {t1_blood[0]}, post {t1_blood[1]} ms)"
            return self._finish(prepared, "ecv_percent", None, False, reason, details)
        ecv_polar = ecv_percent(t1_polar[0], t1_polar[1], t1_blood[0], t1_blood[1], hematocrit)
        post_prepared = prepared[1]
        region = self._analysed_region(post_prepared, details)
        cart = from_polar(ecv_polar, post_prepared.reference_geometry, region)
        details["hematocrit"] = float(hematocrit)
        values = _in_range(cart, s.ecv_range_percent, details)
        return self._finish(prepared, "ecv_percent", values, True, "", details)
