"""Stage 5 of the mapping pipeline: the corrections before the fits (noise floor, coil gains:
:func:`coil_corrected`), the T1 model of a slice's sequence (:func:`t1_fit`, :func:`coil_fit`)
and the pixel fits back on the reference image's pixels with their valid range and, when
nothing is left, the reason (:func:`map_and_roi`, :func:`no_value_reason`). docs/method.md §B2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from exports.mapping_settings import MappingError, MappingSettings
from exports.mapping_slice import Acquisition
from exports.mask_preparation import PreparedAcquisition, analysed_region
from exports.whole_slice_maps import free_parameters
from quantification.coil_shading import estimate_coil_gradient
from quantification.ecv import restrict_to_range
from quantification.noise_floor import remove_noise_floor, slice_noise
from quantification.polar import PolarGeometry, from_polar
from quantification.relaxometry import RelaxometryFit, fit_t1
from quantification.t1_sequences import SHMOLLI_IR1_SAMPLES, fit_t1_sequence, resolve_t1_sequence

__all__ = [
    "CorrectedPolar",
    "coil_corrected",
    "coil_fit",
    "in_range",
    "map_and_roi",
    "no_value_reason",
    "t1_fit",
    "t1_parameters",
]


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


def in_range(values: np.ndarray, valid_range: tuple[float, float], details: dict[str, Any]
              ) -> np.ndarray:  # fmt: skip
    """``values`` with NaN outside ``valid_range``; the counts go into ``details``."""
    fitted = np.isfinite(values)
    kept = restrict_to_range(values, valid_range)
    details["n_fitted_px"] = int(fitted.sum())
    details["n_out_of_range_px"] = int(fitted.sum() - np.isfinite(kept).sum())
    details["valid_range"] = list(valid_range)
    return kept


def no_value_reason(details: dict[str, Any]) -> str:
    """Why a slice whose images were valid has no finite myocardial value, from the counts
    that :func:`in_range` and :func:`exports.mask_preparation.analysed_region` left in
    ``details`` (one level down for T1 and T2)."""
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


def coil_corrected(
    settings: MappingSettings,
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
    if settings.noise_floor_correction:
        images = prepared.acquisition.images
        noise = slice_noise(images[prepared.used], pixel_fit, n_parameters)
        details.update(noise.as_details())
        if noise.measured:  # removed before the (variance-lowering) interpolation
            sigma = noise.sigma
            polar = prepared.resample(remove_noise_floor(images, sigma))
            raw = prepared.resample(np.square(images, dtype=np.float64))
    details["noise_floor_removed"] = bool(np.isfinite(sigma))
    gains = np.ones(polar.shape[0])
    if settings.coil_correction:
        centres = np.array([g.centre for g in prepared.geometries if g is not None])
        estimate = estimate_coil_gradient(polar, centres - centres[0], fit)
        details["coil_gradient_per_px"] = estimate.gradient_per_px.tolist()
        gains = estimate.gains
    return CorrectedPolar(polar / gains[:, None, None], raw, sigma, gains)


def map_and_roi(
    settings: MappingSettings,
    prepared: PreparedAcquisition,
    corrected: CorrectedPolar,
    fit: Callable[[np.ndarray], RelaxometryFit],
    valid_range: tuple[float, float],
    details: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray] | None]:
    """The fitted map and its R^2 in the reference image's pixels, and (``segment_fit="roi"``)
    the ROI fit: regions bool [K, H, W] -> the fit of each region's mean signal [K]."""
    geometry = prepared.reference_geometry
    region = analysed_region(prepared, settings.prune_px, details, settings.min_analysed_fraction)
    result = fit(corrected.polar)
    details["fit_failed_fraction"] = float(np.mean(result.flags != 0))
    cart = from_polar(np.stack([result.t_ms, result.r_squared]), geometry, region)
    values = in_range(cart[0], valid_range, details)
    r_squared = np.where(np.isfinite(values), cart[1], np.nan)
    if settings.segment_fit != "roi":
        return values, r_squared, None

    def roi(regions: np.ndarray) -> np.ndarray:
        curves = corrected.region_signals(geometry, region, regions)
        out = np.full(len(regions), np.nan)
        present = np.isfinite(curves).all(axis=0)
        if present.any():
            out[present] = fit(curves[:, present]).t_ms
        return restrict_to_range(out, valid_range)

    return values, r_squared, roi


def t1_fit(settings: MappingSettings, acquisition: Acquisition, details: dict[str, Any]
            ) -> Callable[[np.ndarray, np.ndarray], RelaxometryFit]:  # fmt: skip
    """The T1 fit of the acquisition's sequence (recorded in ``details``)."""
    try:
        sequence, source = resolve_t1_sequence(settings.t1_sequence, acquisition.sequence)
    except ValueError as exc:
        raise MappingError(f"{acquisition.case_id}/{acquisition.slice_id}: {exc}") from exc
    details["sequence"], details["sequence_source"] = sequence, source
    stone_model = settings.t1_model
    return lambda y, times: fit_t1_sequence(y, times, sequence, stone_model=stone_model)


def coil_fit(settings: MappingSettings, sequence: str, times: np.ndarray
              ) -> Callable[[np.ndarray], RelaxometryFit]:  # fmt: skip
    """The fit that scores the coil gains of a T1 acquisition (``quantification.coil_shading``
    calls it ~100 times): the sequence's own fit for STONE and SASHA; for MOLLI the
    three-parameter fit with the polarity its first call restored kept (gains of a few per
    cent never flip a sign), one fit per call instead of four; ShMOLLI the same on its first
    inversion's 5 samples (the later ones follow the curve only for short T1)."""
    if sequence in ("stone", "sasha"):
        model = settings.t1_model
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


def t1_parameters(settings: MappingSettings, sequence: str) -> int:
    return free_parameters("t1", sequence, settings.t2_model, settings.t1_model)
