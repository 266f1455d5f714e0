"""Run every AIF method on the same labelled cases and score each case (docs/method.md §A7).

For each case of an AIF contract file (with a reference ``mask``): every network goes through the
runtime's steps (preprocessing with its own parameters, probabilities, method.md §A6 threshold rule,
geometry restored to the input pixels), the legacy detector runs on the raw series, and each LV
mask is scored against the reference (Dice, failure reason, and the boundary distances HD95 and
ASSD of the LV and, for methods that label it, the RV: ``lightning_modules.boundary_metrics``,
in pixels, as the AIF contract carries no pixel size). AIF curves are measured from the
predicted and from the reference LV mask on the same signal (coil-corrected SR frames of the whole
acquisition on the 0.5 s grid, divided by the series maximum as in the network input, so values
are comparable with the paper's normalised AIF), and their first-pass features computed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from evaluation.detection_outcome import detection_outcome
from evaluation.predictors import AIFPredictor
from formats.aif_contract import AIFCase, AIFContractError, read_aif_case
from lightning_modules.boundary_metrics import BoundaryDistances, boundary_distances
from quantification.aif_curve import aif_curve, aif_features
from quantification.aif_preprocessing import (
    AIFPreprocessing,
    coil_sensitivity_map,
    preprocess_aif_series,
    resample_to_grid,
    restore_geometry,
)
from quantification.legacy_aif_detector import LegacyDetectorSettings, detect_lv_legacy
from quantification.lv_mask import LABEL_LV, LABEL_RV, masks_from_probabilities

LEGACY = "legacy"
"""Method name of the legacy detector in reports."""


@dataclass
class MethodCase:
    """One method on one case.

    Attributes:
        labels: uint8 [RO, E1] predicted labels in the input geometry.
        lv_dice: Dice of the LV against the reference.
        reason: failure reason ("" for success; see ``evaluation.detection_outcome``).
        aif: float32 [N] AIF from the predicted LV (normalised units), None when the LV is empty.
        features: first-pass features of ``aif`` (s, normalised units), None when empty.
        curve_cc: Pearson correlation of ``aif`` with the reference AIF (NaN when empty).
        boundary: structure (``"lv"``, and ``"rv"`` for methods that label the RV) -> its HD95
            and ASSD against the reference, in pixels (one case).
    """

    labels: np.ndarray
    lv_dice: float
    reason: str
    aif: np.ndarray | None
    features: dict[str, float] | None
    curve_cc: float
    boundary: dict[str, BoundaryDistances] = field(default_factory=dict)


@dataclass
class CaseEvaluation:
    """All methods on one case, plus the reference and what is needed to draw it.

    Attributes:
        case_id, patient_id: identifiers.
        reference: uint8 [RO, E1] reference labels.
        frame: float32 [RO, E1] coil-corrected frame at the reference LV's peak (for figures).
        grid_s: float32 [N] seconds from the first SR frame.
        reference_aif: float32 [N] AIF from the reference LV mask (normalised units).
        reference_features: its first-pass features.
        methods: method name -> :class:`MethodCase`.
    """

    case_id: str
    patient_id: str
    reference: np.ndarray
    frame: np.ndarray
    grid_s: np.ndarray
    reference_aif: np.ndarray
    reference_features: dict[str, float]
    methods: dict[str, MethodCase] = field(default_factory=dict)


def signal_on_grid(case: AIFCase, params: AIFPreprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Coil-corrected SR frames of the whole acquisition on the grid (as ``AIFPipeline``).

    Returns:
        (float32 [N, RO, E1] signal units, float32 [N] seconds from the first SR frame).
    """
    n_pd = case.n_pd_frames
    sr, grid = resample_to_grid(case.series[n_pd:], case.times_s[n_pd:], params.grid_step_s)
    if n_pd > 0:
        sr /= coil_sensitivity_map(case.series[:n_pd], params.coil_smoothing_px, params.coil_floor)
    return sr, (grid - grid[0]).astype(np.float32)


def _curve_and_features(
    signal: np.ndarray, lv: np.ndarray, scale: float, step_s: float
) -> tuple[np.ndarray, dict[str, float]]:
    curve = aif_curve(signal, lv) / np.float32(scale)
    features = aif_features(curve, step_s=step_s)
    return curve, {k: float(v) for k, v in vars(features).items()}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


STRUCTURES = {"lv": LABEL_LV, "rv": LABEL_RV}
"""Structures whose boundary distances are measured, by label."""


def _method_case(
    labels: np.ndarray,
    ev: CaseEvaluation,
    signal: np.ndarray,
    scale: float,
    step_s: float,
    labels_rv: bool,
) -> MethodCase:
    outcome = detection_outcome(labels, ev.reference)
    boundary = {
        name: boundary_distances(labels[None] == label, ev.reference[None] == label)
        for name, label in STRUCTURES.items()
        if name == "lv" or labels_rv
    }
    lv = labels == LABEL_LV
    if not lv.any():
        nan = float("nan")
        return MethodCase(labels, outcome.lv_dice, outcome.reason, None, None, nan, boundary)
    curve, features = _curve_and_features(signal, lv, scale, step_s)
    return MethodCase(
        labels,
        outcome.lv_dice,
        outcome.reason,
        curve,
        features,
        _correlation(curve, ev.reference_aif),
        boundary,
    )


def evaluate_aif_cases(
    path: str | os.PathLike,
    case_ids: Sequence[str],
    predictors: Sequence[AIFPredictor],
    legacy: LegacyDetectorSettings | None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[CaseEvaluation]:
    """Run all methods on ``case_ids`` of an AIF contract file and score them.

    Args:
        path: HDF5 file in the AIF contract; every evaluated case needs a ``mask`` with an LV.
        case_ids: cases to evaluate (e.g. the test split).
        predictors: networks (names must be unique and differ from ``"legacy"``).
        legacy: settings of the legacy detector, or None to leave it out.
        batch_size: series per network call.
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        One :class:`CaseEvaluation` per case, in ``case_ids`` order.

    Raises:
        AIFContractError: a case is missing, has no mask or no LV in it, or breaks the contract;
            the message names the file, the case and the key.
        ValueError: no method to evaluate, duplicate method names, or no case.
    """
    names = [p.name for p in predictors] + ([LEGACY] if legacy is not None else [])
    if not names:
        raise ValueError("nothing to evaluate: no model and the legacy detector is off")
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    if not case_ids:
        raise ValueError(f"{path}: no case to evaluate")
    results: list[CaseEvaluation] = []
    reference_params = predictors[0].preprocessing if predictors else AIFPreprocessing()
    with h5py.File(path, "r") as h5:
        for start in range(0, len(case_ids), batch_size):
            batch = [_read_labelled(h5, cid, path) for cid in case_ids[start : start + batch_size]]
            signals, evaluations = [], []
            for case in batch:
                signal, grid_s = signal_on_grid(case, reference_params)
                ref_lv = case.mask == LABEL_LV
                pre = preprocess_aif_series(
                    case.series, case.times_s, case.n_pd_frames, reference_params
                )
                curve, features = _curve_and_features(
                    signal, ref_lv, pre.scale, reference_params.grid_step_s
                )
                peak = int(np.argmax(signal[:, ref_lv].mean(axis=1)))
                evaluations.append(
                    CaseEvaluation(
                        case.case_id,
                        case.patient_id,
                        case.mask,
                        signal[peak],
                        grid_s,
                        curve,
                        features,
                    )
                )
                signals.append((signal, pre.scale))
            for predictor in predictors:
                pres = [
                    preprocess_aif_series(
                        c.series, c.times_s, c.n_pd_frames, predictor.preprocessing
                    )
                    for c in batch
                ]
                prob = predictor.probabilities(np.stack([p.image for p in pres]))
                for ev, pre, p, (signal, scale) in zip(
                    evaluations, pres, prob, signals, strict=True
                ):
                    labels = restore_geometry(
                        masks_from_probabilities(p, predictor.n_classes), pre
                    ).astype(np.uint8)
                    ev.methods[predictor.name] = _method_case(
                        labels,
                        ev,
                        signal,
                        scale,
                        reference_params.grid_step_s,
                        labels_rv=predictor.n_classes == 3,
                    )
            if legacy is not None:
                for case, ev, (signal, scale) in zip(batch, evaluations, signals, strict=True):
                    found = detect_lv_legacy(case.series, case.times_s, case.n_pd_frames, legacy)
                    ev.methods[LEGACY] = _method_case(
                        found.labels,
                        ev,
                        signal,
                        scale,
                        reference_params.grid_step_s,
                        labels_rv=True,
                    )
            results.extend(evaluations)
            if progress is not None:
                progress(len(results), len(case_ids))
    return results


def _read_labelled(h5: h5py.File, case_id: str, path: str | os.PathLike) -> AIFCase:
    """Read one case that must carry a reference mask with at least one LV pixel."""
    case = read_aif_case(h5, case_id, path, require_mask=True)
    if not (case.mask == LABEL_LV).any():
        raise AIFContractError(
            f"{path}: case {case_id!r}, key 'mask': expected a reference with at least one LV "
            f"pixel (label 1) to score against; found labels {sorted(np.unique(case.mask))}"
        )
    return case


def file_case_ids(path: str | os.PathLike) -> list[str]:
    """All case ids of an AIF file, in file order (for ``split=all``)."""
    if not Path(path).is_file():
        raise AIFContractError(f"{path}: expected an existing HDF5 file; found no such file")
    with h5py.File(path, "r") as h5:
        return list(h5)
