"""One perfusion case -> MBF, PS, Vb, Visf maps (docs/perfusion.md; method:
docs/method.md §P1-§P3).

Steps: for a dual-sequence case, the AIF curve from the LV mask of the AIF series
(:func:`quantification.aif_curve.aif_curve`), SR/PD ratios of the AIF and of every imaging pixel,
the bolus foot of the AIF from the data (:mod:`quantification.bolus_timing`) and the
conversion to gadolinium with each readout's own timing
(:mod:`quantification.saturation_recovery`); then the pixel-wise fit of every slice and, with a
myocardium mask, the fit of each slice's mean myocardial curve
(:func:`quantification.perfusion_fit.fit_perfusion`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from formats.perfusion_contract import PerfusionCase, PerfusionResult
from quantification.aif_curve import aif_curve
from quantification.bolus_timing import bolus_foot_peak, pre_contrast_frames
from quantification.perfusion_fit import (
    FAILURE_REASONS,
    PARAMETER_NAMES,
    PerfusionFit,
    fit_perfusion,
)
from quantification.saturation_recovery import SaturationRecoveryTiming, gd_from_ratio

__all__ = ["PerfusionSettings", "case_gd", "map_case"]

MIN_PD_FRACTION = 0.05
"""Imaging pixels whose PD signal is below this fraction of the slice's 99th percentile hold no
tissue (air): they are set to 0 mmol/L and reported as not enhancing."""


@dataclass(frozen=True)
class PerfusionSettings:
    """Knobs of the perfusion mapping (the CLI's options)."""

    model: str = "bte"
    hematocrit: float | None = None  # None: the case's attr, else DEFAULT_HEMATOCRIT
    tissue_density_g_per_ml: float = 1.05
    delay_range_s: tuple[float, float] = (0.0, 6.0)
    min_enhancement_fraction: float = 0.02


DEFAULT_HEMATOCRIT = 0.42


def _dual_to_gd(case: PerfusionCase, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dual-sequence frames -> (aif_gd [T], images_gd [S, T, H, W], times_s [T]) without PD."""
    dual = case.dual
    assert dual is not None
    n_pd = dual.n_pd_frames
    if n_pd < 1:
        raise ValueError(f"{where}: attr 'n_pd_frames' = 0; the dual-sequence conversion needs "
                         "proton-density frames first")  # fmt: skip
    aif_timing = SaturationRecoveryTiming.from_attrs(dual.aif_attrs, f"{where}, key 'series'")
    image_timing = SaturationRecoveryTiming.from_attrs(
        dual.perfusion_attrs, f"{where}, key 'perfusion'"
    )
    times = case.times_s[n_pd:]
    signal = aif_curve(dual.aif_series, dual.lv_mask).astype(np.float64)
    aif_ratio = signal[n_pd:] / signal[:n_pd].mean()
    foot_s, _ = bolus_foot_peak(aif_ratio, times)
    baseline = pre_contrast_frames(times, foot_s)
    aif_gd = gd_from_ratio(aif_ratio, aif_timing, baseline)

    frames = dual.perfusion.astype(np.float64)
    pd = frames[:, :n_pd].mean(axis=1)  # [S, H, W]
    tissue = pd > MIN_PD_FRACTION * np.percentile(pd, 99, axis=(1, 2), keepdims=True)
    ratio = np.where(tissue[:, None], frames[:, n_pd:] / np.where(tissue, pd, 1.0)[:, None], 0.0)
    gd = gd_from_ratio(ratio.transpose(1, 0, 2, 3), image_timing, baseline).transpose(1, 0, 2, 3)
    return aif_gd, np.where(tissue[:, None], gd, 0.0), times


def case_gd(case: PerfusionCase, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aif_gd [T], images_gd [S, T, H, W], times_s [T]) of a case of either form, mmol/L."""
    if case.dual is not None:
        return _dual_to_gd(case, where)
    assert case.aif_gd is not None and case.perfusion_gd is not None
    return case.aif_gd, case.perfusion_gd, case.times_s


def _segments(labels: np.ndarray, images: np.ndarray, fit: PerfusionFit, aif_gd: np.ndarray,
              times: np.ndarray, options: dict) -> dict[str, np.ndarray]:  # fmt: skip
    """Per slice and segment label: the fit of the segment's mean curve [S, L, 5] (NaN where a
    slice lacks the label) and the mean of its pixel MBFs [S, L]."""
    values = np.unique(labels[labels > 0])
    masks = labels[:, None] == values[None, :, None, None]  # [S, L, H, W]
    n_px = masks.sum(axis=(2, 3))
    curves = np.einsum("sthw,slhw->slt", images, masks) / np.maximum(n_px, 1)[..., None]
    regional = fit_perfusion(aif_gd, curves, times, **options)
    table = np.stack([getattr(regional, name) for name in PARAMETER_NAMES], axis=2)
    mbf = np.where(masks, fit.mbf_ml_min_g[:, None], np.nan).reshape(*masks.shape[:2], -1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a segment with no fitted pixel: NaN
        pixel_mean = np.nanmean(mbf, axis=2)
    empty = n_px == 0
    table[empty] = np.nan
    return {
        "segment_labels": values.astype(np.int64),
        "segments": table.astype(np.float64),
        "pixel_mean_mbf_ml_min_g": np.where(empty, np.nan, pixel_mean),
    }


def map_case(
    case: PerfusionCase, settings: PerfusionSettings, where: str
) -> tuple[PerfusionResult, PerfusionFit, np.ndarray]:
    """Maps of every slice of a case (and regional fits with a myocardium mask).

    Returns the result to write, the pixel-wise fit (maps [S, H, W], fitted curves) and the
    images in mmol/L [S, T, H, W] (for the figure)."""
    aif_gd, images, times = case_gd(case, where)
    hematocrit = settings.hematocrit
    if hematocrit is None:
        hematocrit = case.hematocrit if case.hematocrit is not None else DEFAULT_HEMATOCRIT
    options = dict(
        model=settings.model,
        hematocrit=hematocrit,
        tissue_density_g_per_ml=settings.tissue_density_g_per_ml,
        delay_range_s=settings.delay_range_s,
        min_enhancement_fraction=settings.min_enhancement_fraction,
    )
    fit = fit_perfusion(aif_gd, images.transpose(0, 2, 3, 1), times, **options)
    squeeze = (lambda a: a[0]) if case.squeeze_slices else (lambda a: a)
    maps = {name: squeeze(getattr(fit, name)) for name in PARAMETER_NAMES}
    maps |= {
        "rmse_mmol_l": squeeze(fit.rmse_mmol_l),
        "r_squared": squeeze(fit.r_squared),
        "failure": squeeze(fit.failure),
    }
    regions = {} if case.mask is None else _segments(case.mask, images, fit, aif_gd, times, options)
    result = PerfusionResult(
        maps=maps,
        aif_gd=aif_gd,
        times_s=times,
        regions=regions,
        attrs={
            "model": settings.model,
            "hematocrit": float(hematocrit),
            "tissue_density_g_per_ml": settings.tissue_density_g_per_ml,
            "failure_reasons": {str(k): v for k, v in FAILURE_REASONS.items()},
            "source": "dual_sequence" if case.dual is not None else "gd",
            "region_columns": ",".join(PARAMETER_NAMES),
        },
    )
    return result, fit, images
