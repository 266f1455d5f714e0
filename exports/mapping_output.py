"""Writing the mapping results: one HDF5 file and the same figures as JSON beside it
(:func:`write_mapping_results`), per case a :class:`CaseOutcome`.

Output HDF5 (written atomically; ``<output>.json``, e.g. ``results.json`` for ``results.h5``,
holds the same figures)::

    /<case_id>/<slice_id>/t1_ms | t2_ms | ecv_percent  float32 [H, W]  map in the input
                                     geometry (the reference image: image 0 unless excluded;
                                     post-contrast for ECV), NaN outside the analysed myocardium
                                     (whole-slice maps: where there is no signal or the fit
                                     failed) and on failed slices
    /<case_id>/<slice_id>/r_squared  float32 [H, W]  T1 and T2: R^2 of each pixel's fit
    /<case_id>/<slice_id>/segments   float64 [16]   mean per AHA segment 1-16, NaN where absent
                                                    (not written for whole-slice maps)
    attrs on the slice:  success (bool), refined_images (int), n_images, refinement_rate, reason,
                         level, mean, n_pixels, insertion_deg, insertion_source, whole_slice,
                         sequence (T1: the model used), segment_fit
    attrs on /<case_id>: status ("ok" | "failed"), error (failed), patient_success (method.md §B4),
                         patient_mean (mean of the myocardial pixels of the successful slices),
                         n_slices, n_successful_slices
    attrs on /:          mode ("t1" | "t2" | "ecv"), inputs, model, weights_sha256, n_cases_ok,
                         n_cases_failed, n_slices, n_successful_slices, refined_images, n_images,
                         refinement_rate
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from exports.mapping_slice import SliceResult
from formats.atomic_file import atomic_write
from quantification.aha_segments import patient_success

__all__ = ["CaseOutcome", "finite_or_none", "write_mapping_results"]


@dataclass
class CaseOutcome:
    """All slices of one case, or the reason the case failed (``slices`` empty)."""

    case_id: str
    slices: list[SliceResult]
    error: str = ""
    patient_id: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def summary(self) -> dict[str, Any]:
        """JSON-able figures of the case (the same as the HDF5 attrs)."""
        if not self.ok:
            return {"status": "failed", "error": self.error}
        good = [s for s in self.slices if s.success]
        pixels = np.concatenate([s.values[np.isfinite(s.values)] for s in good]) if good else []
        return {
            "status": "ok",
            "patient_id": self.patient_id,
            "patient_success": patient_success(s.level for s in good if s.level),
            "patient_mean": float(np.mean(pixels)) if len(pixels) else None,
            "n_slices": len(self.slices),
            "n_successful_slices": len(good),
            "slices": {s.slice_id: _slice_summary(s) for s in self.slices},
        }


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _slice_summary(result: SliceResult) -> dict[str, Any]:
    insertion = result.insertion
    return {
        "success": result.success,
        "reason": result.reason,
        "level": result.level,
        "quantity": result.quantity,
        "mean": result.mean if np.isfinite(result.mean) else None,
        "n_pixels": result.n_pixels,
        "refined_images": result.refined_images,
        "n_images": result.n_images,
        "refinement_rate": result.refinement_rate,
        "segments": dict(zip(range(1, 17), _nan_to_none(result.segments), strict=True)),
        "insertion_deg": insertion.anterior_deg if insertion else None,
        "insertion_source": insertion.source if insertion else None,
        "whole_slice": result.whole_slice,
        "details": result.details,
    }


def write_mapping_results(
    path: Path, outcomes: list[CaseOutcome], header: dict[str, Any]
) -> tuple[Path, Path]:
    """Write the HDF5 results and the JSON beside it (module docstring), each atomically."""
    slices = [s for o in outcomes for s in o.slices]
    refined = sum(s.refined_images for s in slices)
    n_images = sum(s.n_images for s in slices)
    totals = {
        **header,
        "n_cases_ok": sum(o.ok for o in outcomes),
        "n_cases_failed": sum(not o.ok for o in outcomes),
        "n_slices": len(slices),
        "n_successful_slices": sum(s.success for s in slices),
        "refined_images": refined,
        "n_images": n_images,
        "refinement_rate": refined / n_images if n_images else None,
    }
    summaries = {o.case_id: o.summary() for o in outcomes}

    def attr(value: Any) -> Any:
        return "" if value is None else value

    with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update({k: attr(v) for k, v in totals.items()})
        for outcome in outcomes:
            group = h5.create_group(outcome.case_id)
            summary = summaries[outcome.case_id]
            group.attrs["status"] = summary["status"]
            if not outcome.ok:
                group.attrs["error"] = outcome.error
                continue
            for key in ("patient_id", "patient_success", "n_slices", "n_successful_slices"):
                group.attrs[key] = summary[key]
            group.attrs["patient_mean"] = (
                np.nan if summary["patient_mean"] is None else summary["patient_mean"]
            )
            for result in outcome.slices:
                sub = group.create_group(result.slice_id)
                sub.create_dataset(result.quantity, data=result.values.astype(np.float32))
                if result.r_squared is not None:
                    sub.create_dataset("r_squared", data=result.r_squared.astype(np.float32))
                if not result.whole_slice:
                    sub.create_dataset("segments", data=result.segments.astype(np.float64))
                figures = summaries[outcome.case_id]["slices"][result.slice_id]
                sub.attrs["success"] = bool(result.success)
                sub.attrs["refined_images"] = int(result.refined_images)
                sub.attrs["n_images"] = int(result.n_images)
                sub.attrs["refinement_rate"] = float(result.refinement_rate)
                sub.attrs["reason"] = result.reason
                sub.attrs["level"] = attr(result.level)
                sub.attrs["mean"] = float(result.mean)
                sub.attrs["n_pixels"] = int(result.n_pixels)
                sub.attrs["insertion_deg"] = (
                    np.nan if figures["insertion_deg"] is None else figures["insertion_deg"]
                )
                sub.attrs["insertion_source"] = attr(figures["insertion_source"])
                sub.attrs["whole_slice"] = bool(result.whole_slice)
                sub.attrs["segment_fit"] = result.details.get("segment_fit", "pixel")
                sequence = result.details.get("t1", {}).get("sequence")
                if sequence is not None:
                    sub.attrs["sequence"] = sequence
    json_path = path.with_suffix(".json")
    with atomic_write(json_path) as tmp:
        document = finite_or_none({**totals, "cases": summaries})
        tmp.write_text(json.dumps(document, indent=2, default=_json_default, allow_nan=False))
    return path, json_path


def finite_or_none(value: Any) -> Any:
    """The same nested structure with NaN/inf floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-able: {type(value).__name__}")
