"""Config ``inlinecmr_aif``: the frames of one AIF series -> LV/RV labels, the AIF and its features.

Input: the images of one series and slice; ``image_index`` is the frame number, the frame time
comes from ``acquisition_time_stamp`` (2.5 ms ticks) or ``physiology_time_stamp``
(:func:`formats.mrd.images.frame_times_s`). Frames are [y, x] images with x the readout (RO) and
y the phase encoding (E1): the AIF contract's [RO, E1] frame is the image transposed.

JSON parameters: ``n_pd_frames`` (leading proton-density frames, default 0), ``time_source``
(``auto`` | ``acquisition`` | ``physiology``), ``output_series_index`` (default: the input's
series index + 1).

Reply:

* one uint16 label image (0 background, 1 LV, 2 RV) in the geometry and header of the first
  frame, as a new series; its meta: ``DataRole`` Quantitative, window 0-2, ``ROI_LV`` (red) and
  ``ROI_RV`` (blue) outlines (further loops ``ROI_LV_2``...), the AIF (``InlineCMR_AIF``, in
  coil-corrected signal units) on its grid (``InlineCMR_AIF_times_s``, seconds from the first
  saturation-recovery frame), the six first-pass features (``InlineCMR_foot_s``,
  ``InlineCMR_peak_s``, ``InlineCMR_valley_s``, ``InlineCMR_first_pass_s``,
  ``InlineCMR_peak_value``, ``InlineCMR_auc``), the model's ``InlineCMR_model_sha256`` and the
  backend that ran it (``InlineCMR_backend``: ``torchscript``, ``onnx-fp32`` or ``onnx-int8``);
* one text message: the same figures as JSON (``"config": "inlinecmr_aif", "status": "ok"``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from exports.aif_pipeline import AIFResult
from exports.mrd_session import InlineModels, Reply, SessionError, SessionParameters
from formats.mrd.images import TIME_SOURCES, aif_frames, derived_image
from formats.mrd.stream import ImageMessage
from quantification.contours import mask_outlines
from quantification.lv_mask import LABEL_LV, LABEL_RV

__all__ = ["AIF_CONFIG", "FEATURES", "process_aif", "roi_meta"]

AIF_CONFIG = "inlinecmr_aif"
FEATURES = ("foot_s", "peak_s", "valley_s", "first_pass_s", "peak_value", "auc")
"""The six first-pass features sent back (``quantification.aif_curve.AIFFeatures``)."""
_ROI_STYLE = {"LV": (1.0, 0.0, 0.0), "RV": (0.0, 0.4, 1.0)}


def roi_meta(name: str, mask: np.ndarray, colour: tuple[float, float, float]) -> dict[str, list]:
    """FIRE ``ROI_<name>`` entries outlining ``mask`` [rows, cols] (one per loop).

    Each value list is r, g, b, line thickness 1, style 0 (solid), visible 1, then the
    (row, col) corners of the closed outline (:func:`quantification.contours.mask_outlines`).
    """
    entries = {}
    for k, outline in enumerate(mask_outlines(mask)):
        key = f"ROI_{name}" if k == 0 else f"ROI_{name}_{k + 1}"
        entries[key] = [*colour, 1.0, 0.0, 1.0, *outline.ravel().tolist()]
    return entries


def _figures(result: AIFResult) -> dict[str, Any]:
    features = asdict(result.features)
    return {
        "lv_pixels": int((result.mask == LABEL_LV).sum()),
        "rv_pixels": int((result.mask == LABEL_RV).sum()),
        "features": {k: float(features[k]) for k in FEATURES},
        "aif": [float(v) for v in result.aif],
        "aif_times_s": [float(v) for v in result.grid_s],
        "aif_unit": "coil-corrected signal",
    }


def process_aif(
    images: Sequence[ImageMessage], params: SessionParameters, models: InlineModels
) -> Reply:
    """Run the AIF pipeline on the received frames (module docstring).

    Raises:
        SessionError: no AIF model loaded, bad parameters.
        MRDSeriesError, AIFInputError (ValueError): frames the pipeline cannot take (several
            series, too few frames, missing times, no LV found...).
    """
    if models.aif is None:
        raise SessionError(f"{AIF_CONFIG} needs an AIF model: start the server with --aif-model")
    start = time.perf_counter()
    n_pd = params.integer("n_pd_frames", 0, minimum=0)
    frames = aif_frames(images, params.choice("time_source", "auto", TIME_SOURCES))
    series_in = int(frames.images[0].head.image_series_index)
    series_out = params.integer("output_series_index", series_in + 1, minimum=0)
    result = models.aif.run(frames.series, frames.times_s, int(n_pd), case_id="session")
    figures = _figures(result)
    labels = result.mask.T  # [RO, E1] -> image [y, x]
    meta: dict[str, Any] = {
        "DataRole": "Quantitative",
        "SeriesDescription": ["INLINECMR", "AIF_LV_RV"],
        "ImageComment": ["LV=1", "RV=2"],
        "ImageType": "LABELS",
        "ImageProcessingHistory": ["INLINECMR", "AIF"],
        "WindowCenter": 1,
        "WindowWidth": 2,
        "Keep_image_geometry": 1,
        **roi_meta("LV", labels == LABEL_LV, _ROI_STYLE["LV"]),
        **roi_meta("RV", labels == LABEL_RV, _ROI_STYLE["RV"]),
        "InlineCMR_AIF": figures["aif"],
        "InlineCMR_AIF_times_s": figures["aif_times_s"],
        "InlineCMR_AIF_unit": figures["aif_unit"],
        **{f"InlineCMR_{k}": v for k, v in figures["features"].items()},
        "InlineCMR_n_pd_frames": int(n_pd),
        "InlineCMR_time_source": frames.time_source,
        "InlineCMR_model_sha256": models.aif_sha256,
        "InlineCMR_backend": models.aif_backend,
    }
    label_image = derived_image(
        frames.images[0], labels.astype(np.uint16), int(series_out), 0, meta
    )
    document = {
        "config": AIF_CONFIG,
        "status": "ok",
        "n_frames": len(frames.images),
        "n_pd_frames": int(n_pd),
        "time_source": frames.time_source,
        "input_series_index": series_in,
        "output_series_index": int(series_out),
        **figures,
        "model_sha256": models.aif_sha256,
        "backend": models.aif_backend,
        "processing_ms": round(1e3 * (time.perf_counter() - start), 1),
    }
    summary = {
        "frames": len(frames.images),
        "lv_pixels": figures["lv_pixels"],
        "peak_s": round(figures["features"]["peak_s"], 2),
    }
    return Reply(images=[label_image], texts=[json.dumps(document)], summary=summary)
