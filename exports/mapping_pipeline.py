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

The stages live in their own modules: the segmentation model
(:mod:`exports.myocardium_segmenter`), masks, QC, replacement and polar grid
(:mod:`exports.mask_preparation`), the corrections and fits (:mod:`exports.mapping_fits`), the
settings (:mod:`exports.mapping_settings`) and a slice in and out (:mod:`exports.mapping_slice`);
this module chains them per quantity (:class:`MappingPipeline`).

A slice with no finite value in its analysed myocardium is not a success: its reason says why
(the region empty, every fit failed, or every value outside the valid range).
A slice that fails the success rule (too few valid images) is reported with its reason and
all-NaN maps. Importable with torch, NumPy and SciPy only (no h5py, Lightning, Hydra or W&B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from exports.mapping_fits import (
    CorrectedPolar,
    coil_corrected,
    coil_fit,
    in_range,
    map_and_roi,
    no_value_reason,
    t1_fit,
    t1_parameters,
)
from exports.mapping_settings import MappingError, MappingSettings
from exports.mapping_slice import Acquisition, SliceResult
from exports.mask_preparation import (
    PreparedAcquisition,
    analysed_region,
    common_ring,
    prepare_acquisition,
)
from exports.myocardium_segmenter import MYOCARDIUM_TASK, MyocardiumSegmenter
from exports.whole_slice_maps import whole_slice_map
from quantification.aha_segments import (
    N_SEGMENTS,
    InsertionPoint,
    aha_segment_map,
    estimate_rv_insertion,
    segment_means,
    slice_success,
    valid_t1_images_needed,
)
from quantification.ecv import blood_t1, ecv_percent
from quantification.polar import from_polar
from quantification.relaxometry import estimate_offset_fraction, fit_t2

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

MID_WALL_CUT = 5 / 16
"""The T2 offset shared by a slice is estimated from the middle of the wall: this fraction of the
transmural samples is left out at each border. Blood at the endocardium decays so slowly over
TE <= 60 ms that a sample with some of it looks like offset (noise-free phantoms: leaving out a
quarter at each border gave a slice T2 bias of -0.21 ms, 5/16 -0.08 ms)."""


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
        """Segmentation (or stored masks), QC, replacement and polar resampling
        (:func:`exports.mask_preparation.prepare_acquisition`)."""
        return prepare_acquisition(acquisition, self.settings, self.segmenter)

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
            success, reason = False, no_value_reason(details)
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

    def _t1_images_needed(self, acquisition: Acquisition) -> int:
        return valid_t1_images_needed(acquisition.images.shape[0], self.settings.min_valid_t1)

    # ---------------------------------------------------------------- whole slice
    def whole_slice(self, acquisition: Acquisition, quantity: str) -> SliceResult:
        """T1 or T2 map (ms) of every pixel with signal, in the native geometry, no segments
        (:mod:`exports.whole_slice_maps`)."""
        details: dict[str, Any] = {"whole_slice": True, quantity: {}}
        sequence = "auto"
        if quantity == "t1":
            t1_fit(self.settings, acquisition, details["t1"])  # resolve (and record) the sequence
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
        corrected = coil_corrected(self.settings, prepared, t2_fit, details["t2"], t2_fit, 3)
        return _T2Slice(prepared, corrected, te, details)

    def _t2_mapped(self, t2: _T2Slice, beta: float | None) -> SliceResult:
        if beta is not None:
            t2.details["t2"]["offset_fraction"] = beta
        values, r_squared, roi = map_and_roi(self.settings,
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
        fit = t1_fit(self.settings, acquisition, details["t1"])
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
        gain_fit = coil_fit(self.settings, details["t1"]["sequence"], times)
        corrected = coil_corrected(
            self.settings, prepared, gain_fit, details["t1"], lambda y: fit(y, times),
            t1_parameters(self.settings, details["t1"]["sequence"]),
        )  # fmt: skip
        values, r_squared, roi = map_and_roi(
            self.settings,
            prepared,
            corrected,
            lambda y: fit(y, times),
            s.t1_range_ms,
            details["t1"],
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
        fits = [
            t1_fit(self.settings, a, details[k]) for a, k in ((native, "native"), (post, "post"))
        ]
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
            gain_fit = coil_fit(self.settings, details[name]["sequence"], times)
            corrected = coil_corrected(
                self.settings, p, gain_fit, details[name], lambda y, f=fit, t=times: f(y, t),
                t1_parameters(self.settings, details[name]["sequence"]),
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
        region = analysed_region(post_prepared, s.prune_px, details, s.min_analysed_fraction)
        cart = from_polar(ecv_polar, post_prepared.reference_geometry, region)
        details["hematocrit"] = float(hematocrit)
        values = in_range(cart, s.ecv_range_percent, details)
        return self._finish(prepared, "ecv_percent", values, True, "", details)
