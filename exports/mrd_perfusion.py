"""Config ``inlinecmr_perfusion``: first-pass perfusion frames -> MBF maps and myocardial MBF.

Input images, told apart by the image meta ``InlineCMR_role``:

* no role: the imaging frames, grouped into slices by the header's ``slice``, each slice's frames
  in ``image_index`` order (the same number of frames per slice); frame times from the first
  slice's time stamps (:func:`formats.mrd.images.frame_times_s`);
* ``aif``: the frames of the AIF series (dual-sequence acquisition, PD frames first, as many
  frames as each slice);
* ``lv_mask``: optional, one label image in the AIF frames' geometry (1 = LV blood pool); without
  it the server's AIF model finds the LV;
* ``myocardium_mask``: optional, one label image per slice (its ``slice``) in the imaging
  geometry: 0 elsewhere, each value > 0 a myocardial segment (AHA 1-16, or 1 for all).

Two forms, as in the HDF5 contract (:mod:`formats.perfusion_contract`, docs/perfusion.md):

* saturation-recovery signal (default): the imaging frames and the AIF frames, PD frames first
  (``n_pd_frames``). The signal -> gadolinium step needs each readout's timing,
  :data:`quantification.saturation_recovery.SEQUENCE_ATTRS` (``saturation_time_ms``,
  ``echo_spacing_ms``, ``flip_angle_deg``, ``pd_flip_angle_deg``, ``lines_to_centre``,
  ``relaxivity_l_mmol_s``): each is read from the meta of the readout's first frame, else from
  the JSON parameter of that name (imaging) or ``aif_<name>`` (AIF). A missing one ends the
  session with an error naming it; there is no default.
* gadolinium units: imaging frames whose meta ``InlineCMR_units`` is ``mmol/L`` (no PD frames),
  and the blood AIF in mmol/L as the JSON parameter ``aif_gd`` (one value per frame).

JSON parameters: ``n_pd_frames``, ``aif_gd`` and the timing (above); ``model`` (``bte``,
``2cxm``, ``fermi``; default ``bte``), ``hematocrit`` (default 0.42), ``output_series_index``
(default: the highest input series index + 1).

Reply: per slice one MBF map image (uint16, ``RescaleSlope`` :data:`MBF_SLOPE` ml/min/g per
stored unit, 0 where no value) in the geometry of the slice's first frame, as one new series,
its window spanning the 1st-99th percentiles of the fitted (myocardial, with a mask) values;
and one JSON text message (``"config": "inlinecmr_perfusion", "status": "ok"``) with the AIF
used, each slice's median MBF and, with a myocardium mask, per segment the fit of its mean curve
(MBF, PS, Vb, Visf, delay) and the mean of its pixel MBFs, and the whole myocardium's median
pixel MBF (per slice and over all slices).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from exports.mapping_output import finite_or_none
from exports.mrd_session import InlineModels, Reply, SessionError, SessionParameters
from exports.perfusion_pipeline import DEFAULT_HEMATOCRIT, PerfusionSettings, map_case
from formats.mrd.images import (
    MRDSeriesError,
    aif_frames,
    derived_image,
    frame_times_s,
    image_pixels,
)
from formats.mrd.meta import parse_meta
from formats.mrd.stream import ImageMessage
from formats.perfusion_contract import DualSequence, PerfusionCase
from quantification.perfusion_fit import PARAMETER_NAMES, PerfusionFit
from quantification.perfusion_models import MODELS
from quantification.saturation_recovery import (
    SEQUENCE_ATTRS,
    MissingSequenceAttribute,
    SaturationRecoveryTiming,
)

__all__ = ["GD_UNITS", "MBF_SLOPE", "PERFUSION_CONFIG", "process_perfusion"]

PERFUSION_CONFIG = "inlinecmr_perfusion"
MBF_SLOPE = 0.001
"""ml/min/g per stored unit of the MBF map images (as their DICOM Parametric Maps)."""
GD_UNITS = "mmol/L"
"""The value of the meta ``InlineCMR_units`` marking frames already in gadolinium units."""
ROLES = ("aif", "lv_mask", "myocardium_mask")


def _meta_text(image: ImageMessage, key: str) -> str:
    values = parse_meta(image.attributes).get(key, [])
    return str(values[0]).strip() if values else ""


def _by_role(images: Sequence[ImageMessage]) -> dict[str, list[ImageMessage]]:
    roles: dict[str, list[ImageMessage]] = {"": [], **{r: [] for r in ROLES}}
    for image in images:
        role = _meta_text(image, "InlineCMR_role")
        if role not in roles:
            raise SessionError(
                f"{PERFUSION_CONFIG}: meta InlineCMR_role {role!r}; expected "
                f"none (imaging frames) or one of {list(ROLES)}"
            )
        roles[role].append(image)
    if not roles[""]:
        raise SessionError(
            f"{PERFUSION_CONFIG}: no imaging frames received (images without "
            "an InlineCMR_role meta)"
        )
    return roles


def _slices(frames: list[ImageMessage]) -> tuple[list[list[ImageMessage]], np.ndarray]:
    """Imaging frames by slice (ascending), each in image_index order; [S, T, H, W] pixels."""
    by_slice: dict[int, list[ImageMessage]] = {}
    for image in frames:
        by_slice.setdefault(int(image.head.slice), []).append(image)
    slices = [
        sorted(g, key=lambda im: int(im.head.image_index)) for _, g in sorted(by_slice.items())
    ]
    counts = {len(g) for g in slices}
    if len(counts) != 1:
        raise MRDSeriesError(
            f"{PERFUSION_CONFIG}: slices {sorted(by_slice)} have "
            f"{[len(g) for g in slices]} frames; expected the same number"
        )
    pixels = [np.stack([image_pixels(im) for im in g]) for g in slices]
    shapes = sorted({p.shape[1:] for p in pixels})
    if len(shapes) != 1:
        raise MRDSeriesError(f"{PERFUSION_CONFIG}: frames of different sizes [y, x]: {shapes}")
    return slices, np.stack(pixels)


def _timing(first: ImageMessage, params: SessionParameters, prefix: str, what: str) -> dict:
    """A readout's timing attrs: the frame's meta, else the JSON parameters (module docstring);
    checked here so that a missing one is named before any work."""
    meta = parse_meta(first.attributes)
    attrs: dict[str, Any] = {}
    for name in SEQUENCE_ATTRS:
        if name in meta and meta[name]:
            attrs[name] = meta[name][0]
        elif f"{prefix}{name}" in params.values:
            attrs[name] = params.values[f"{prefix}{name}"]
    for name, value in attrs.items():
        try:
            attrs[name] = float(value)
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"{PERFUSION_CONFIG}: {what}: {name} = {value!r}; expected a number"
            ) from exc
    where = (
        f"{PERFUSION_CONFIG}: {what} (image meta of its first frame or JSON parameter "
        f"'{prefix}<name>')"
    )
    try:
        SaturationRecoveryTiming.from_attrs(attrs, where)
    except MissingSequenceAttribute as exc:
        raise SessionError(str(exc)) from exc
    return attrs


def _lv_mask(
    roles: dict[str, list[ImageMessage]],
    series: np.ndarray,
    times_s: np.ndarray,
    n_pd: int,
    models: InlineModels,
) -> np.ndarray:
    """The LV of the AIF series [RO, E1]: the ``lv_mask`` image, else the AIF model's."""
    if roles["lv_mask"]:
        mask = image_pixels(roles["lv_mask"][0]).T == 1
        if mask.shape != series.shape[1:] or not mask.any():
            raise SessionError(
                f"{PERFUSION_CONFIG}: lv_mask image {mask.T.shape} [y, x] with "
                f"{int(mask.sum())} LV pixels; expected the AIF frames' "
                f"{series.shape[1:][::-1]} with LV = 1"
            )
        return mask
    if models.aif is None:
        raise SessionError(
            f"{PERFUSION_CONFIG}: the LV of the AIF series is needed: send an "
            "lv_mask image or start the server with --aif-model"
        )
    return models.aif.run(series, times_s, n_pd, case_id="session").mask == 1


def _case(
    roles: dict[str, list[ImageMessage]],
    slices: list,
    pixels: np.ndarray,
    params: SessionParameters,
    models: InlineModels,
    mask: np.ndarray | None,
) -> PerfusionCase:
    """The session's images as a perfusion case of either form."""
    times_s, _ = frame_times_s(slices[0])
    hematocrit = params.number("hematocrit", DEFAULT_HEMATOCRIT, 0.0, 1.0)
    units = {_meta_text(im, "InlineCMR_units") for im in roles[""]}
    if units == {GD_UNITS}:
        aif = params.numbers("aif_gd")
        if aif is None or len(aif) != times_s.size or not all(isinstance(v, float) for v in aif):
            found = "nothing" if aif is None else f"{len(aif)} values"
            raise SessionError(
                f"{PERFUSION_CONFIG}: frames in {GD_UNITS} need the JSON "
                f"parameter 'aif_gd': the blood AIF, {times_s.size} values "
                f"(mmol/L, one per frame); found {found}"
            )
        return PerfusionCase(
            "session",
            times_s,
            np.asarray(aif, np.float64),
            pixels.astype(np.float64),
            None,
            mask,
            hematocrit,
            False,
        )
    if units != {""}:
        raise SessionError(
            f"{PERFUSION_CONFIG}: meta InlineCMR_units {sorted(units)}; expected "
            f"{GD_UNITS!r} on every imaging frame or on none"
        )
    if not roles["aif"]:
        raise SessionError(
            f"{PERFUSION_CONFIG}: signal frames need the AIF series (images with "
            "meta InlineCMR_role = aif), or frames in mmol/L (meta "
            f"InlineCMR_units = {GD_UNITS}) with the parameter 'aif_gd'"
        )
    aif_attrs = _timing(roles["aif"][0], params, "aif_", "AIF series")
    image_attrs = _timing(slices[0][0], params, "", "imaging frames")
    frames = aif_frames(roles["aif"])
    if frames.series.shape[0] != pixels.shape[1]:
        raise MRDSeriesError(
            f"{PERFUSION_CONFIG}: {frames.series.shape[0]} AIF frames and "
            f"{pixels.shape[1]} frames per slice; expected the same"
        )
    n_pd = int(params.integer("n_pd_frames", 0, minimum=0))  # type: ignore[arg-type]
    lv = _lv_mask(roles, frames.series, frames.times_s, n_pd, models)
    dual = DualSequence(frames.series, lv, aif_attrs, pixels, image_attrs, n_pd)
    return PerfusionCase("session", frames.times_s, None, None, dual, mask, hematocrit, False)


def _myocardium(
    roles: dict[str, list[ImageMessage]], slices: list, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Segment labels [S, H, W] from the ``myocardium_mask`` images (one per slice), or None."""
    images = roles["myocardium_mask"]
    if not images:
        return None
    by_slice = {int(im.head.slice): im for im in images}
    wanted = [int(g[0].head.slice) for g in slices]
    if sorted(by_slice) != wanted:
        raise SessionError(
            f"{PERFUSION_CONFIG}: myocardium_mask images for slices "
            f"{sorted(by_slice)}; expected one for each of {wanted}"
        )
    mask = np.stack([image_pixels(by_slice[s]) for s in wanted])
    if mask.shape != shape or mask.min() < 0 or mask.max() > 255 or not (mask > 0).any():
        raise SessionError(
            f"{PERFUSION_CONFIG}: myocardium_mask {mask.shape}, values "
            f"{mask.min():g}-{mask.max():g}; expected {shape} labels 0-255 with "
            "myocardium > 0"
        )
    return np.round(mask).astype(np.uint8)


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _slice_figures(
    fit: PerfusionFit, mask: np.ndarray | None, regions: dict, slice_index: int, k: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Figures of slice k, and the values that set its map's window."""
    mbf = fit.mbf_ml_min_g[k]
    fitted = fit.failure[k] == 0
    figures: dict[str, Any] = {
        "slice": slice_index,
        "fitted_pixels": int(fitted.sum()),
        "median_mbf_fitted_pixels": _median(mbf[fitted]),
    }
    if mask is None:
        return figures, mbf[fitted]
    myocardium = mask[k] > 0
    figures["myocardium_median_mbf_ml_min_g"] = _median(mbf[myocardium])
    segments = {}
    for j, label in enumerate(regions["segment_labels"]):
        row = regions["segments"][k, j]
        if np.isnan(row).all():
            continue
        segments[str(int(label))] = {
            **{name: float(v) for name, v in zip(PARAMETER_NAMES, row, strict=True)},
            "pixel_mean_mbf_ml_min_g": float(regions["pixel_mean_mbf_ml_min_g"][k, j]),
            "n_pixels": int((mask[k] == label).sum()),
        }
    figures["segments"] = segments
    return figures, mbf[myocardium & fitted]


def _map_image(
    source: ImageMessage,
    mbf: np.ndarray,
    window_from: np.ndarray,
    series_index: int,
    image_index: int,
    meta: dict,
) -> ImageMessage:
    finite = np.isfinite(mbf)
    stored = np.round(np.clip(np.where(finite, mbf, 0.0) / MBF_SLOPE, 0, 65535))
    values = window_from[np.isfinite(window_from)]
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 6.0)
    full_meta = {
        "DataRole": "Quantitative",
        "SeriesDescription": ["INLINECMR", "MBF"],
        "ImageComment": ["MBF_ml_min_g"],
        "ImageType": "MBFMAP",
        "ImageProcessingHistory": ["INLINECMR", "PERFUSION"],
        "WindowCenter": round(float(low + high) / 2 / MBF_SLOPE),
        "WindowWidth": max(round(float(high - low) / MBF_SLOPE), 2),
        "RescaleSlope": MBF_SLOPE,
        "RescaleIntercept": 0.0,
        "Keep_image_geometry": 1,
        "InlineCMR_quantity": "mbf",
        "InlineCMR_unit": "ml/min/g",
        **meta,
    }
    return derived_image(source, stored.astype(np.uint16), series_index, image_index, full_meta)


def process_perfusion(
    images: Sequence[ImageMessage], params: SessionParameters, models: InlineModels
) -> Reply:
    """MBF maps of the received perfusion frames (module docstring).

    Raises:
        SessionError: bad or missing parameters or timing, images of an unknown role, masks that
            do not fit.
        MRDSeriesError, AIFInputError, ValueError: frames the pipeline cannot take.
    """
    start = time.perf_counter()
    roles = _by_role(images)
    settings = PerfusionSettings(model=params.choice("model", "bte", MODELS))
    first = max((int(im.head.image_series_index) for im in images), default=0) + 1
    series_out = int(params.integer("output_series_index", first, minimum=0))  # type: ignore[arg-type]
    slices, pixels = _slices(roles[""])
    mask = _myocardium(roles, slices, (pixels.shape[0],) + pixels.shape[2:])
    case = _case(roles, slices, pixels, params, models, mask)
    result, fit, _ = map_case(case, settings, PERFUSION_CONFIG)
    reply = Reply()
    per_slice = []
    for k, group in enumerate(slices):
        figures, window_from = _slice_figures(
            fit, mask, result.regions, int(group[0].head.slice), k
        )
        meta = {
            "InlineCMR_model": settings.model,
            "InlineCMR_median_mbf": figures.get(
                "myocardium_median_mbf_ml_min_g", figures["median_mbf_fitted_pixels"]
            ),
        }
        reply.images.append(
            _map_image(group[0], fit.mbf_ml_min_g[k], window_from, series_out, k, meta)
        )
        per_slice.append({**figures, "output_series_index": series_out, "image_index": k})
    document: dict[str, Any] = {
        "config": PERFUSION_CONFIG,
        "status": "ok",
        "model": settings.model,
        "unit": "ml/min/g",
        "source": result.attrs["source"],
        "hematocrit": result.attrs["hematocrit"],
        "n_frames": int(case.times_s.size),
        "aif_gd": result.aif_gd.tolist(),
        "times_s": result.times_s.tolist(),
        "slices": per_slice,
    }
    if mask is not None:
        document["myocardium_median_mbf_ml_min_g"] = _median(fit.mbf_ml_min_g[mask > 0])
    document["processing_ms"] = round(1e3 * (time.perf_counter() - start), 1)
    reply.texts.append(json.dumps(finite_or_none(document)))
    if mask is None:
        reply.texts.append(
            f"WRN {PERFUSION_CONFIG}: no myocardium_mask images: no segment or "
            "myocardial MBF, only the maps"
        )
    reply.summary = {"slices": len(slices), "median_mbf": per_slice[0]["median_mbf_fitted_pixels"]}
    return reply
