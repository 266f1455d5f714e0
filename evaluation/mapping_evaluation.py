"""Run the inline mapping pipeline twice per slice, with automated and with reference masks (B4).

For every case of the mapping files (T2: one file; ECV: native and post-contrast files):

* **reference**: ``exports.mapping_pipeline.MappingPipeline`` on the masks stored in the files
  (the expert masks of the paper's reference maps; on phantoms the exact masks);
* **automated**: the same pipeline on masks produced by a segmenter per modality (the network
  under test), which then go through the same shape QC, refinement, polar fits and pruning;
* **DSC** of every automated mask against the stored mask (before QC, as in method.md §B5 Table 2),
  and its boundary distances, HD95 and ASSD (``lightning_modules.boundary_metrics``, MONAI), in
  pixels of the native image and in mm where the slice gives ``pixel_spacing_mm``.

A segmenter is any ``Callable[[Acquisition], np.ndarray]`` returning bool masks [N, H, W]: in
``evaluate.py`` a ``MyocardiumSegmenter`` on the images of an exported model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from exports.mapping_input import MappingInputError, read_acquisitions
from exports.mapping_pipeline import Acquisition, MappingPipeline, SliceResult
from formats.mapping_contract import scan_mapping_file
from lightning_modules.boundary_metrics import (
    BoundaryDistances,
    boundary_distances,
    concatenate_distances,
)

Segmenter = Callable[[Acquisition], np.ndarray]
"""bool [N, H, W] myocardium masks of one acquisition's images."""

QUANTITIES = {"t2": ("t2",), "ecv": ("t1_native", "post_contrast")}
"""Modalities (mapping files) each quantity needs."""


class MappingReferenceError(ValueError):
    """A mapping file lacks what the evaluation compares against; names file, case, slice, key."""


@dataclass
class MappingCaseEvaluation:
    """One case: the automated and the reference slice results, and the per-image DSC.

    Attributes:
        case_id, patient_id: identifiers.
        automated, reference: one :class:`SliceResult` per slice, same order.
        dice: DSC of every automated mask vs the stored mask (all modalities), [n_images].
        boundary_px: HD95 / ASSD of the same masks, pixels, [n_images] (None: not measured).
        boundary_mm: the same in mm, None unless every image's slice gives its pixel size.
    """

    case_id: str
    patient_id: str
    automated: list[SliceResult]
    reference: list[SliceResult]
    dice: np.ndarray
    boundary_px: BoundaryDistances | None = None
    boundary_mm: BoundaryDistances | None = None


def mask_dice(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """DSC per image of bool masks [N, H, W] (two empty masks score 1), float64 [N]."""
    p, r = np.asarray(predicted, bool), np.asarray(reference, bool)
    if p.shape != r.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {r.shape}")
    overlap = (p & r).reshape(len(p), -1).sum(1)
    total = p.reshape(len(p), -1).sum(1) + r.reshape(len(r), -1).sum(1)
    return np.where(total > 0, 2.0 * overlap / np.maximum(total, 1), 1.0)


def pixel_spacings(path: str | os.PathLike) -> dict[tuple[str, str], np.ndarray | None]:
    """(case_id, slice_id) -> the slice's ``pixel_spacing_mm`` (row, column), None if absent."""
    spacings = {}
    for info in scan_mapping_file(path):
        value = info.attrs.get("pixel_spacing_mm")
        spacings[info.case_id, info.slice_id] = None if value is None else np.asarray(value, float)
    return spacings


def _read(path: Path, time_key: str, insertion: str) -> dict[str, tuple[dict, list[Acquisition]]]:
    cases = {}
    for case_id, attrs, slices in read_acquisitions(path, time_key, insertion):
        if isinstance(slices, Exception):
            raise slices
        for acq in slices:
            if acq.masks is None:
                raise MappingReferenceError(
                    f"{path}: case {case_id!r}, slice {acq.slice_id!r}, key 'masks': expected "
                    "reference myocardium masks [N, H, W] to compare against; found none"
                )
        cases[case_id] = (attrs, slices)
    if not cases:
        raise MappingReferenceError(f"{path}: expected at least one case; found none")
    return cases


@dataclass
class _ImageScores:
    """DSC and boundary distances of the automated masks of the images of one case."""

    dice: list[np.ndarray]
    px: list[BoundaryDistances]
    mm: list[BoundaryDistances | None]

    def add(self, masks: np.ndarray, acq: Acquisition, spacing_mm: np.ndarray | None) -> None:
        reference = np.asarray(acq.masks, bool)
        self.dice.append(mask_dice(masks, reference))
        self.px.append(boundary_distances(masks, reference))
        mm = None if spacing_mm is None else boundary_distances(masks, reference, spacing_mm)
        self.mm.append(mm)


def _automated(
    acq: Acquisition, segment: Segmenter, scores: _ImageScores, spacing_mm: np.ndarray | None
) -> Acquisition:
    """The acquisition with the segmenter's masks; their scores are added to ``scores``."""
    masks = np.asarray(segment(acq), dtype=bool)
    if masks.shape != acq.images.shape:
        raise ValueError(
            f"{acq.case_id}/{acq.slice_id}: the segmenter returned masks {masks.shape} for "
            f"images {acq.images.shape}"
        )
    scores.add(masks, acq, spacing_mm)
    return replace(acq, masks=masks.astype(np.uint8))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def evaluate_mapping_cases(
    paths: Mapping[str, str | os.PathLike],
    quantity: str,
    segmenters: Mapping[str, Segmenter],
    pipeline: MappingPipeline | None = None,
    insertion: str = "file",
    max_cases: int | None = None,
) -> list[MappingCaseEvaluation]:
    """Automated vs reference maps for every case (module docstring).

    Args:
        paths: mapping contract file per modality (``t2``; or ``t1_native`` and
            ``post_contrast``).
        quantity: ``"t2"`` or ``"ecv"``.
        segmenters: segmenter per modality of the quantity.
        pipeline: pipeline without segmenter (its settings are used for both runs).
        insertion: RV insertion point: ``"file"`` (slice attr) or ``"auto"``.
        max_cases: evaluate only the first N cases.

    Raises:
        MappingReferenceError: a slice without stored masks, a missing modality file, cases or
            slices that do not pair up between native and post-contrast files.
        MappingInputError: a file breaks the mapping contract (named file, case and key).
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity={quantity!r}: expected one of {sorted(QUANTITIES)}")
    modalities = QUANTITIES[quantity]
    for modality in modalities:
        if modality not in paths or not Path(paths[modality]).is_file():
            raise MappingReferenceError(
                f"{quantity}: expected the {modality} mapping file; found "
                f"{paths.get(modality)!r} (no such file)"
            )
    for modality in modalities:
        if modality not in segmenters:
            raise ValueError(f"{quantity}: no segmenter for the {modality} images")
    pipeline = pipeline or MappingPipeline()
    if pipeline.segmenter is not None:
        raise ValueError("pass a pipeline without segmenter: masks are given per run")
    time_key = "te_ms" if quantity == "t2" else "ti_ms"
    files = {m: _read(Path(paths[m]), time_key, insertion) for m in modalities}
    spacing = {m: pixel_spacings(paths[m]) for m in modalities}
    main = files[modalities[-1]]
    results = []
    for case_id, (attrs, slices) in list(main.items())[:max_cases]:
        scores = _ImageScores([], [], [])
        automated, reference = [], []
        if quantity == "t2":
            for acq in slices:
                auto_acq = _automated(
                    acq, segmenters["t2"], scores, spacing["t2"][case_id, acq.slice_id]
                )
                reference.append(pipeline.t2_slice(acq))
                automated.append(pipeline.t2_slice(auto_acq))
        else:
            native_path = paths["t1_native"]
            if case_id not in files["t1_native"]:
                raise MappingReferenceError(f"{native_path}: no case {case_id!r} (in post file)")
            native_attrs, native_slices = files["t1_native"][case_id]
            by_id = {acq.slice_id: acq for acq in native_slices}
            hematocrit = attrs.get("hematocrit", native_attrs.get("hematocrit"))
            if hematocrit is None:
                raise MappingReferenceError(
                    f"{paths['post_contrast']}: case {case_id!r}, key 'hematocrit': expected a "
                    "case attr (fraction 0-1) for ECV; found none"
                )
            for post in slices:
                if post.slice_id not in by_id:
                    raise MappingReferenceError(
                        f"{native_path}: case {case_id!r}, slice {post.slice_id!r}: expected "
                        "the native slice of the post-contrast one; found none"
                    )
                native = by_id[post.slice_id]
                native_spacing = spacing["t1_native"][case_id, native.slice_id]
                post_spacing = spacing["post_contrast"][case_id, post.slice_id]
                auto_native = _automated(native, segmenters["t1_native"], scores, native_spacing)
                auto_post = _automated(post, segmenters["post_contrast"], scores, post_spacing)
                reference.append(pipeline.ecv_slice(native, post, float(hematocrit)))
                automated.append(pipeline.ecv_slice(auto_native, auto_post, float(hematocrit)))
        results.append(
            MappingCaseEvaluation(
                case_id=case_id,
                patient_id=_text(attrs.get("patient_id", case_id)),
                automated=automated,
                reference=reference,
                dice=np.concatenate(scores.dice) if scores.dice else np.zeros(0),
                boundary_px=concatenate_distances(scores.px),
                boundary_mm=(
                    concatenate_distances(scores.mm)  # type: ignore[arg-type]
                    if all(mm is not None for mm in scores.mm)
                    else None
                ),
            )
        )
    return results


__all__ = [
    "QUANTITIES",
    "MappingCaseEvaluation",
    "MappingInputError",
    "MappingReferenceError",
    "Segmenter",
    "evaluate_mapping_cases",
    "mask_dice",
    "pixel_spacings",
]
