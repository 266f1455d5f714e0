"""Configs ``inlinecmr_t1``, ``inlinecmr_t2``, ``inlinecmr_ecv``: weighted images -> maps per slice.

Input: the weighted images of one series (T1, T2) or of two series (ECV: native and
post-contrast T1-weighted), grouped into slices by the header's ``slice``
(:func:`formats.mrd.images.mapping_slices`). Relaxation times come from the image meta
``InversionTime`` (T1, ECV) or ``T2PrepDuration`` (T2), in ms, or from the JSON parameters.

JSON parameters:

==========================  =================================================================
``ti_ms`` / ``te_ms``       times in ``image_index`` order of a slice: one list for every
                            slice, or one list per slice (ECV: ``ti_ms_native``,
                            ``ti_ms_post``)
``sequence``                T1: ``auto`` | ``stone`` | ``molli`` | ``shmolli`` |
                            ``look_locker`` | ``sasha``; T2: ``auto`` | ``t2prep``
                            (:mod:`exports.whole_slice_maps`)
``hematocrit``              ECV: blood hematocrit, a fraction in (0, 1) (required)
``levels``                  slice levels for AHA segments, in slice order (``basal``,
                            ``mid``, ``apical``); default: basal, mid, apical for 3 slices
``native_series_index``,    ECV: which series is which (default: the series acquired first
``post_series_index``       is native)
``blood_t1_ms``             ECV without a myocardium model: [native, post] blood T1, ms
``map_dtype``               ``uint16`` (default: ms or 0.1 % units with ``RescaleSlope``,
                            0 = no value) or ``float32`` (values as they are, 0 = no value)
``output_series_index``     first output series (default: the highest input index + 1)
==========================  =================================================================

Reply, per slice, one map image in the geometry of the slice's first image (``DataRole``
Quantitative, window/level of the map, ``InlineCMR_unit``, the times and the sequence in meta):

* ``inlinecmr_t1``: a whole-slice T1 map (ms).
* ``inlinecmr_t2``: with a myocardium model, the T2 map of the analysed myocardium
  (:meth:`exports.mapping_pipeline.MappingPipeline.t2_slice`: segmentation, QC, polar fit), its
  16 AHA segment means (``InlineCMR_AHA_segments``, ``nan`` where absent) and its outline
  (``ROI_MYO``); without, a whole-slice T2 map.
* ``inlinecmr_ecv``: with a myocardium model, the ECV map (%) of
  :meth:`~exports.mapping_pipeline.MappingPipeline.ecv_slice` with AHA segments; without, the
  whole-slice native and post-contrast T1 maps (two series) and, given ``blood_t1_ms``, a
  whole-slice ECV map (a third series; native and post images must then be registered).

plus one JSON text message with the per-slice figures, and ``WRN`` texts for what was skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exports.mapping_output import finite_or_none
from exports.mapping_pipeline import Acquisition, MappingPipeline, SliceResult
from exports.mrd_aif import roi_meta
from exports.mrd_session import InlineModels, Reply, SessionError, SessionParameters
from exports.whole_slice_maps import whole_slice_map
from formats.mapping_contract import LEVELS
from formats.mrd.images import SliceImages, derived_image, mapping_slices, split_series
from formats.mrd.stream import ImageMessage
from quantification.ecv import ECV_RANGE_PERCENT, ecv_percent, restrict_to_range
from quantification.t1_sequences import T1_SEQUENCES

__all__ = ["MAPPING_CONFIGS", "map_image", "map_window", "process_mapping"]

MAPPING_CONFIGS = {"inlinecmr_t1": "t1", "inlinecmr_t2": "t2", "inlinecmr_ecv": "ecv"}
"""Config name -> quantity."""
_TIME_META = {"t1": "InversionTime", "t2": "T2PrepDuration"}
_UNIT = {"t1": "ms", "t2": "ms", "ecv": "%"}
_UINT16_SLOPE = {"t1": 1.0, "t2": 1.0, "ecv": 0.1}
GOOD_FIT_R2 = 0.9
"""Whole-slice pixels with at least this R^2 enter the reported median (and the T1 window)."""


def map_window(quantity: str, values: np.ndarray) -> tuple[int, int]:
    """(WindowCenter, WindowWidth) in the map's unit: T2 20-80 ms, ECV 10-50 %, T1 400-1800 ms
    (native) or 100-900 ms (post-contrast: the 75th percentile of ``values`` below 800 ms; a
    whole slice's median is often fat's ~270 ms, its upper quartile is myocardium and blood)."""
    if quantity == "t2":
        return 50, 60
    if quantity == "ecv":
        return 30, 40
    finite = values[np.isfinite(values)]
    post_contrast = finite.size and float(np.percentile(finite, 75)) < 800
    return (500, 800) if post_contrast else (1100, 1400)


def map_image(
    source: ImageMessage,
    values: np.ndarray,
    quantity: str,
    series_index: int,
    image_index: int,
    dtype: str,
    window_values: np.ndarray,
    meta: dict[str, Any],
) -> ImageMessage:
    """A quantitative map image [H, W] in the geometry of ``source``; NaN pixels become 0.

    ``uint16``: stored value = map / slope (slope 1 for ms, 0.1 for %), ``RescaleSlope`` in meta.
    """
    center, width = map_window(quantity, window_values)
    finite = np.isfinite(values)
    if dtype == "uint16":
        slope = _UINT16_SLOPE[quantity]
        stored = np.round(np.clip(np.where(finite, values, 0.0) / slope, 0, 65535))
        pixels, rescale = stored.astype(np.uint16), {"RescaleSlope": slope, "RescaleIntercept": 0.0}
    else:
        pixels, rescale = np.where(finite, values, 0.0).astype(np.float32), {}
    name = {"t1": "T1MAP", "t2": "T2MAP", "ecv": "ECVMAP"}[quantity]
    full_meta = {
        "DataRole": "Quantitative",
        "SeriesDescription": ["INLINECMR", name],
        "ImageComment": [f"{quantity.upper()}_{_UNIT[quantity].replace('%', 'percent')}"],
        "ImageType": name,
        "ImageProcessingHistory": ["INLINECMR", name],
        "WindowCenter": center,
        "WindowWidth": width,
        **rescale,
        "Keep_image_geometry": 1,
        "InlineCMR_quantity": quantity,
        "InlineCMR_unit": _UNIT[quantity],
        **meta,
    }
    return derived_image(source, pixels, series_index, image_index, full_meta)


def _slices(images: Sequence[ImageMessage], quantity: str, times: Any) -> list[SliceImages]:
    return mapping_slices(images, _TIME_META["t2" if quantity == "t2" else "t1"], times)


def _levels(params: SessionParameters, n_slices: int) -> list[str | None]:
    given = params.words("levels", LEVELS)
    if given is not None:
        if len(given) != n_slices:
            raise SessionError(f"parameter 'levels': {len(given)} levels for {n_slices} slices")
        return list(given)
    return ["basal", "mid", "apical"] if n_slices == 3 else [None] * n_slices


def _one_series(images: Sequence[ImageMessage], config: str) -> list[ImageMessage]:
    series = split_series(images)
    if len(series) != 1:
        raise SessionError(
            f"{config}: expected the images of one series; found series {sorted(series)}"
        )
    return next(iter(series.values()))


@dataclass
class _SliceMap:
    """One map to send: values [H, W] in the geometry of ``source``, the pixels that set the
    window, the map's meta, and its figures for the JSON summary."""

    source: ImageMessage
    values: np.ndarray
    window_from: np.ndarray
    meta: dict[str, Any]
    figures: dict[str, Any]


@dataclass
class _Output:
    """The reply being built: images, the per-slice figures, warnings."""

    dtype: str
    reply: Reply = field(default_factory=Reply)
    slices: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, m: _SliceMap, quantity: str, series_index: int, image_index: int) -> None:
        image = map_image(
            m.source,
            m.values,
            quantity,
            series_index,
            image_index,
            self.dtype,
            m.window_from,
            m.meta,
        )
        self.reply.images.append(image)
        self.slices.append(
            {**m.figures, "output_series_index": series_index, "image_index": image_index}
        )


def _whole_slice(s: SliceImages, quantity: str, sequence: str, **meta: Any) -> _SliceMap:
    """A whole-slice map; its median over the pixels fitted with R^2 >= :data:`GOOD_FIT_R2`."""
    fitted = whole_slice_map(s.images, s.times_ms, quantity, sequence)
    good = np.isfinite(fitted.map_ms) & (fitted.r_squared >= GOOD_FIT_R2)
    median = float(np.median(fitted.map_ms[good])) if good.any() else float("nan")
    figures = {
        "slice": s.slice_index,
        "n_images": len(s.times_ms),
        "times_ms": s.times_ms.tolist(),
        "good_fit_pixels": int(good.sum()),
        "median": median,
    }
    meta = {
        "InlineCMR_times_ms": s.times_ms.tolist(),
        "InlineCMR_sequence": sequence,
        "InlineCMR_median": median,
        **meta,
    }
    return _SliceMap(s.sources[0], fitted.map_ms, fitted.map_ms[good], meta, figures)


def _from_model(result: SliceResult, s: SliceImages) -> _SliceMap:
    """The myocardial map of :class:`MappingPipeline`, with AHA segments and its outline."""
    insertion = result.insertion
    figures = {
        "slice": s.slice_index,
        "n_images": result.n_images,
        "level": result.level,
        "success": bool(result.success),
        "reason": result.reason,
        "mean": result.mean,
        "n_pixels": result.n_pixels,
        "refined_images": result.refined_images,
        "segments": dict(zip(range(1, 17), result.segments.tolist(), strict=True)),
        "insertion_deg": insertion.anterior_deg if insertion else None,
    }
    meta = {
        "InlineCMR_times_ms": s.times_ms.tolist(),
        "InlineCMR_AHA_segments": [float(v) for v in result.segments],
        "InlineCMR_mean": result.mean,
        "InlineCMR_slice_success": int(result.success),
        **roi_meta("MYO", np.isfinite(result.values), (0.0, 1.0, 0.0)),
    }
    return _SliceMap(s.sources[0], result.values, result.values, meta, figures)


def process_mapping(
    images: Sequence[ImageMessage],
    params: SessionParameters,
    models: InlineModels,
    config: str,
) -> Reply:
    """Map the received slices for ``config`` (module docstring).

    Raises:
        SessionError: bad or missing parameters, the wrong number of series, unmatched slices.
        MRDSeriesError, MappingError, ValueError: images that cannot be mapped (missing times,
            too few images for the fit...).
    """
    start = time.perf_counter()
    quantity = MAPPING_CONFIGS[config]
    out = _Output(params.choice("map_dtype", "uint16", ("uint16", "float32")))
    choices = ("auto", "t2prep") if quantity == "t2" else ("auto", *T1_SEQUENCES)
    sequence = params.choice("sequence", "auto", choices)
    first = max((int(im.head.image_series_index) for im in images), default=0) + 1
    series_out = int(params.integer("output_series_index", first, minimum=0))  # type: ignore[arg-type]
    pipeline = MappingPipeline(segmenter=models.myocardium) if models.myocardium else None
    document: dict[str, Any] = {
        "config": config,
        "status": "ok",
        "quantity": quantity,
        "unit": _UNIT[quantity],
        "sequence": sequence,
    }
    if quantity == "ecv":
        document["hematocrit"] = _ecv(images, params, pipeline, sequence, series_out, out)
    else:
        times = params.numbers("ti_ms" if quantity == "t1" else "te_ms")
        slices = _slices(_one_series(images, config), quantity, times)
        levels = _levels(params, len(slices))
        for k, (s, level) in enumerate(zip(slices, levels, strict=True)):
            if quantity == "t2" and pipeline is not None:
                acquisition = Acquisition(
                    "session", f"slice_{s.slice_index}", s.images, s.times_ms, level=level
                )
                out.add(_from_model(pipeline.t2_slice(acquisition), s), quantity, series_out, k)
            else:
                out.add(_whole_slice(s, quantity, sequence), quantity, series_out, k)
    by_model = pipeline is not None and quantity != "t1"
    document.update(
        method="myocardium_model" if by_model else "whole_slice",
        slices=out.slices,
        warnings=out.warnings,
        processing_ms=round(1e3 * (time.perf_counter() - start), 1),
    )
    out.reply.texts.append(json.dumps(finite_or_none(document)))
    out.reply.texts.extend(f"WRN {config}: {w}" for w in out.warnings)
    out.reply.summary = {"slices": len(out.slices), "images_out": len(out.reply.images)}
    return out.reply


def _native_and_post(
    images: Sequence[ImageMessage], params: SessionParameters
) -> tuple[list[ImageMessage], list[ImageMessage]]:
    """The native and post-contrast series: as given, else the series acquired first is native."""
    series = split_series(images)
    native = params.integer("native_series_index", None, minimum=0)
    post = params.integer("post_series_index", None, minimum=0)
    if native is None and post is None:
        if len(series) != 2:
            raise SessionError(
                f"inlinecmr_ecv: expected two series (native and post-contrast T1-weighted); "
                f"found series {sorted(series)}"
            )
        native, post = sorted(
            series, key=lambda k: min(im.head.acquisition_time_stamp for im in series[k])
        )
    for name, index in (("native", native), ("post", post)):
        if index not in series:
            raise SessionError(
                f"inlinecmr_ecv: {name} series {index} not received; found "
                f"series {sorted(series)} (parameters native_series_index, "
                "post_series_index)"
            )
    return series[native], series[post]  # type: ignore[index]


def _ecv(
    images: Sequence[ImageMessage],
    params: SessionParameters,
    pipeline: MappingPipeline | None,
    sequence: str,
    series_out: int,
    out: _Output,
) -> float:
    """ECV maps per slice into ``out``; returns the hematocrit used."""
    hematocrit = params.number("hematocrit", None, 0.0, 1.0)
    if hematocrit is None:
        raise SessionError(
            "inlinecmr_ecv needs the hematocrit: JSON parameter 'hematocrit', a fraction in (0, 1)"
        )
    native_images, post_images = _native_and_post(images, params)
    native = _slices(native_images, "t1", params.numbers("ti_ms_native"))
    post = _slices(post_images, "t1", params.numbers("ti_ms_post"))
    if [s.slice_index for s in native] != [s.slice_index for s in post]:
        raise SessionError(
            f"inlinecmr_ecv: native slices {[s.slice_index for s in native]} and post-contrast "
            f"slices {[s.slice_index for s in post]} differ"
        )
    levels = _levels(params, len(post))
    blood = params.numbers("blood_t1_ms")
    if blood is not None and (len(blood) != 2 or not all(isinstance(b, float) for b in blood)):
        raise SessionError("parameter 'blood_t1_ms': expected [native, post] in ms")
    if pipeline is None and blood is None:
        out.warnings.append(
            "no myocardium model and no 'blood_t1_ms' parameter: ECV not "
            "computed; sent the native and post-contrast T1 maps"
        )
    for k, (n, p, level) in enumerate(zip(native, post, levels, strict=True)):
        if pipeline is not None:
            result = pipeline.ecv_slice(
                Acquisition("session", f"slice_{n.slice_index}", n.images, n.times_ms),
                Acquisition("session", f"slice_{p.slice_index}", p.images, p.times_ms, level=level),
                hematocrit,
            )
            out.add(_from_model(result, p), "ecv", series_out, k)
            continue
        maps = [
            _whole_slice(s, "t1", sequence, InlineCMR_contrast=name)
            for name, s in (("native", n), ("post", p))
        ]
        for offset, m in enumerate(maps):
            out.add(m, "t1", series_out + offset, k)
        if blood is not None:
            ecv = ecv_percent(maps[0].values, maps[1].values, *blood, hematocrit)  # type: ignore[arg-type]
            ecv = restrict_to_range(ecv, ECV_RANGE_PERCENT)
            finite = ecv[np.isfinite(ecv)]
            figures = {
                "slice": p.slice_index,
                "median": float(np.median(finite)) if finite.size else None,
                "blood_t1_ms": list(blood),
            }
            meta = {"InlineCMR_blood_t1_ms": list(blood), "InlineCMR_hematocrit": hematocrit}
            out.add(_SliceMap(p.sources[0], ecv, ecv, meta, figures), "ecv", series_out + 2, k)
    return hematocrit
