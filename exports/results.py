"""Write AIF pipeline results: one HDF5 file and a JSON summary with the same figures, atomically.

HDF5 layout (one group per input case, in input order)::

    /<case_id>/mask         uint8   [RO, E1]     0 background, 1 LV, 2 RV (input geometry)
    /<case_id>/probability  float32 [C, RO, E1]  model output (C = 1: P(LV); 3: bg/LV/RV)
    /<case_id>/aif          float32 [N]          AIF, coil-corrected signal units, 0.5 s grid
    /<case_id>/grid_s       float32 [N]          seconds from the first SR frame
    attrs on /<case_id>:    status "ok", the features (foot_s, peak_s, valley_s, first_pass_s,
                            peak_value, auc, auc_s, baseline), scale, peak_lv_frame, peak_rv_frame,
                            mask_source ("model", or "legacy" when the legacy detector's mask is
                            used because the model found no LV) and note (why it found none)
    a failed case:          an empty group with attrs status "failed" and error (the reason)
    attrs on /:             model (artifact path), weights_sha256, n_ok, n_failed

JSON (``<output>.json``, e.g. ``results.json`` for ``results.h5``): ``{"model": ...,
"weights_sha256": ..., "cases": {case_id: {"status": "ok", "features": {...}, ...} or
{"status": "failed", "error": ...}}}``.

h5py is imported here only (the command line path), not by the runtime itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exports.aif_pipeline import AIFResult, CaseFailure
from formats.atomic_file import atomic_write

__all__ = ["case_summary", "write_results"]


def case_summary(outcome: AIFResult | CaseFailure) -> dict[str, Any]:
    """The JSON-able figures of one case (what both the HDF5 attrs and the JSON hold)."""
    if isinstance(outcome, CaseFailure):
        return {"status": "failed", "error": outcome.error}
    return {
        "status": "ok",
        "features": asdict(outcome.features),
        "scale": outcome.scale,
        "peak_lv_frame": outcome.peak_lv_frame,
        "peak_rv_frame": outcome.peak_rv_frame,
        "lv_pixels": int((outcome.mask == 1).sum()),
        "n_grid_frames": len(outcome.aif),
        "mask_source": outcome.mask_source,
        "note": outcome.note,
    }


def write_results(
    path: str | os.PathLike, outcomes: list[AIFResult | CaseFailure], model: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``path`` (HDF5) and ``path`` with suffix ``.json``, each atomically.

    Args:
        path: output HDF5 file.
        outcomes: one result or failure per case, in input order.
        model: provenance written to the root attrs and the JSON (artifact path, sha256...).

    Returns:
        (HDF5 path, JSON path).
    """
    import h5py

    path = Path(path)
    summaries = {outcome.case_id: case_summary(outcome) for outcome in outcomes}
    n_failed = sum(s["status"] == "failed" for s in summaries.values())
    header = {**model, "n_ok": len(outcomes) - n_failed, "n_failed": n_failed}

    def write_h5(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({k: str(v) if v is None else v for k, v in header.items()})
            for outcome in outcomes:
                group = h5.create_group(outcome.case_id)
                summary = summaries[outcome.case_id]
                group.attrs["status"] = summary["status"]
                if isinstance(outcome, CaseFailure):
                    group.attrs["error"] = outcome.error
                    continue
                group.create_dataset("mask", data=outcome.mask)
                group.create_dataset("probability", data=outcome.probability)
                group.create_dataset("aif", data=outcome.aif)
                group.create_dataset("grid_s", data=outcome.grid_s)
                group.attrs.update(summary["features"])
                for key in ("scale", "peak_lv_frame", "lv_pixels", "mask_source", "note"):
                    group.attrs[key] = summary[key]
                group.attrs["peak_rv_frame"] = (
                    -1 if outcome.peak_rv_frame is None else outcome.peak_rv_frame
                )

    json_path = path.with_suffix(".json")
    with atomic_write(path) as tmp:
        write_h5(tmp)
    with atomic_write(json_path) as tmp:
        tmp.write_text(json.dumps({**header, "cases": summaries}, indent=2))
    return path, json_path
