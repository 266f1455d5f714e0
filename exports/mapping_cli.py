"""``python -m exports mapping``: inline T1, T2 or ECV mapping of every slice of mapping files.

T1 (native or post-contrast; the model of the slice attr ``sequence``, or ``--t1-sequence``)::

    python -m exports mapping [--model ...] --t1 t1.h5 --output maps.h5
        [--t1-sequence auto|stone|molli|shmolli|sasha]

T2::

    python -m exports mapping [--model artifacts/myo_unet.ts] --input t2.h5 --output maps.h5

ECV (the native and post-contrast files hold the same cases and slices)::

    python -m exports mapping [--model ...] --native native.h5 --post post.h5 --output maps.h5

Without ``--model`` the masks stored in the files are used (to test the science alone); with
neither (T1 and T2), every pixel of every slice is fitted in its native geometry: whole-slice
maps, no segments (:mod:`exports.whole_slice_maps`). ``--segment-fit roi`` fits the mean signal
of each AHA segment (and of the whole analysed myocardium for the slice mean) instead of
averaging the pixel map.
``--figures DIR`` writes one PNG per slice (the map over the anatomy). Thresholds are flags with
the docs/method.md §B2/B4 defaults (``--help``).
The results: :mod:`exports.mapping_output`; the input reader: :mod:`exports.mapping_input`.

A case that cannot be read (a slice breaking the contract, no hematocrit for ECV...) is written
as failed with its reason and the other cases are processed. Exit status: 0 all cases read, 1 at
least one case failed (outputs written), 2 bad arguments or an unusable model/input file.

Files are read with the data-contract reader :mod:`formats.mapping_contract` (h5py + NumPy);
h5py (and matplotlib, for figures) are imported here, not by the pipeline.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from deployment.artifact import ArtifactError, load_artifact
from exports.dicom_output import (
    add_dicom_output_arguments,
    dicom_output_arguments_error,
    write_mapping_dicom,
)
from exports.mapping_input import MappingInputError, read_acquisitions
from exports.mapping_output import CaseOutcome, write_mapping_results
from exports.mapping_pipeline import (
    MYOCARDIUM_TASK,
    MappingError,
    MappingPipeline,
    MappingSettings,
    MyocardiumSegmenter,
)
from quantification.t1_sequences import T1_SEQUENCES

__all__ = ["add_mapping_parser", "run_ecv", "run_mapping", "run_single"]


# ------------------------------------------------------------------------------------ running


def _hematocrit(attrs: list[dict[str, Any]], fallback: float | None, where: str) -> float:
    for a in attrs:
        if "hematocrit" in a:
            value = float(a["hematocrit"])
            if not 0.0 < value < 1.0:
                raise MappingInputError(
                    f"{where}: attr hematocrit={value}; expected a fraction 0-1"
                )
            return value
    if fallback is None:
        raise MappingInputError(f"{where}: no hematocrit attribute on the case; pass --hematocrit")
    return fallback


def _patient_id(attrs: dict[str, Any]) -> str:
    value = attrs.get("patient_id", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def run_single(
    pipeline: MappingPipeline, path: Path, insertion: str, quantity: str = "t2"
) -> Iterator[CaseOutcome]:
    """One outcome per case of a T2 (``quantity="t2"``) or T1 (``"t1"``) file."""
    time_key = "te_ms" if quantity == "t2" else "ti_ms"
    for case_id, attrs, slices in read_acquisitions(path, time_key, insertion):
        if isinstance(slices, Exception):
            yield CaseOutcome(case_id, [], f"{type(slices).__name__}: {slices}")
            continue
        try:
            if quantity == "t2":
                results = pipeline.t2_case(slices)
            else:
                results = [pipeline.t1_slice(acq) for acq in slices]
        except (MappingError, ValueError) as exc:
            yield CaseOutcome(case_id, [], f"{type(exc).__name__}: {exc}")
            continue
        yield CaseOutcome(case_id, results, patient_id=_patient_id(attrs))


def run_ecv(
    pipeline: MappingPipeline,
    native_path: Path,
    post_path: Path,
    insertion: str,
    hematocrit: float | None,
) -> Iterator[CaseOutcome]:
    """One outcome per case of the post-contrast file (paired with the native file's case)."""
    native_cases = {
        case_id: (attrs, slices)
        for case_id, attrs, slices in read_acquisitions(native_path, "ti_ms", insertion)
    }
    seen = set()
    for case_id, attrs, post_slices in read_acquisitions(post_path, "ti_ms", insertion):
        seen.add(case_id)
        try:
            if isinstance(post_slices, Exception):
                raise post_slices
            if case_id not in native_cases:
                raise MappingInputError(
                    f"{native_path}: no case {case_id} (present in {post_path})"
                )
            native_attrs, native_slices = native_cases[case_id]
            if isinstance(native_slices, Exception):
                raise native_slices
            by_id = {acq.slice_id: acq for acq in native_slices}
            missing = [acq.slice_id for acq in post_slices if acq.slice_id not in by_id]
            if missing:
                raise MappingInputError(f"{native_path}: /{case_id} lacks slices {missing}")
            hct = _hematocrit([attrs, native_attrs], hematocrit, f"{post_path}: /{case_id}")
            results = [pipeline.ecv_slice(by_id[p.slice_id], p, hct) for p in post_slices]
        except (MappingError, ValueError) as exc:
            yield CaseOutcome(case_id, [], f"{type(exc).__name__}: {exc}")
            continue
        yield CaseOutcome(case_id, results, patient_id=_patient_id(attrs))
    for case_id in native_cases:
        if case_id not in seen:
            yield CaseOutcome(
                case_id, [], f"MappingInputError: {post_path}: no case {case_id} (in {native_path})"
            )


def _fallback_note(outcome: CaseOutcome) -> str:
    """A line for a case whose T1 slices had no ``sequence`` attr ("" if none)."""
    n = sum(
        s.details.get(key, {}).get("sequence_source") == "fallback"
        for s in outcome.slices
        for key in ("t1", "native", "post")
    )
    if not n:
        return ""
    return (f"{outcome.case_id}: no slice attr 'sequence' on {n} T1 acquisition(s): fitted with "
            "the STONE model (docs/method.md §B2); choose with --t1-sequence")  # fmt: skip


def run_mapping(args: argparse.Namespace) -> int:
    """The ``mapping`` subcommand; returns the exit status."""
    modes = [args.input is not None, args.t1 is not None,
             args.native is not None or args.post is not None]  # fmt: skip
    if sum(modes) != 1:
        print("error: give one of --input (T2), --t1 (T1) or both --native and --post (ECV)",
              file=sys.stderr)  # fmt: skip
        return 2
    mode = ("t2", "t1", "ecv")[modes.index(True)]
    if mode == "ecv" and (args.native is None or args.post is None):
        print("error: ECV needs both --native and --post", file=sys.stderr)
        return 2
    if (problem := dicom_output_arguments_error(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = MappingSettings(
        max_eccentricity=args.max_eccentricity,
        n_angles=args.n_angles,
        n_depth=args.n_depth,
        prune_px=args.prune_px,
        min_analysed_fraction=args.min_analysed_fraction,
        t2_range_ms=tuple(args.t2_range_ms),
        ecv_range_percent=tuple(args.ecv_range_percent),
        t1_range_ms=tuple(args.t1_range_ms),
        blood_radius_px=args.blood_radius_px,
        blood_margin_px=args.blood_margin_px,
        blood_statistic=args.blood_statistic,
        coil_correction=not args.no_coil_correction,
        noise_floor_correction=not args.no_noise_floor_correction,
        t1_sequence=args.t1_sequence,
        t1_model=args.t1_model,
        t2_model=args.t2_model,
        t2_offset_scope=args.t2_offset_scope,
        segment_fit=args.segment_fit,
        min_valid_t2=args.min_valid_t2,
        min_valid_t1=args.min_valid_t1,
        mask_threshold=args.mask_threshold,
        fuse_slice=args.fuse_slice,
        mask_cleanup=args.mask_cleanup,
    )
    segmenter = None
    model_info: dict[str, Any] = {"model": "", "weights_sha256": ""}
    if args.model is not None:
        try:
            artifact = load_artifact(args.model, expected_task=MYOCARDIUM_TASK)
            segmenter = MyocardiumSegmenter(
                artifact, threshold=settings.mask_threshold, fuse_slice=settings.fuse_slice
            )
        except ArtifactError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        model_info = {
            "model": str(artifact.path),
            "weights_sha256": artifact.metadata["weights_sha256"],
        }
    pipeline = MappingPipeline(settings, segmenter)
    if mode != "ecv":
        inputs = str(args.input if mode == "t2" else args.t1)
        cases = run_single(pipeline, Path(inputs), args.insertion, mode)
    else:
        inputs = f"{args.native} {args.post}"
        cases = run_ecv(pipeline, args.native, args.post, args.insertion, args.hematocrit)
    outcomes: list[CaseOutcome] = []
    start = time.perf_counter()
    try:
        for outcome in cases:
            outcomes.append(outcome)
            if not outcome.ok:
                print(f"{outcome.case_id}: FAILED: {outcome.error}")
                continue
            ok = sum(s.success for s in outcome.slices)
            print(f"{outcome.case_id}: {ok} of {len(outcome.slices)} slices ok")
            if note := _fallback_note(outcome):
                print(note)
            if args.figures:
                from exports.mapping_figures import plot_slice

                for result in outcome.slices:
                    plot_slice(result, args.figures)
    except MappingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    header = {"mode": mode, "inputs": inputs, **model_info}
    h5_path, json_path = write_mapping_results(args.output, outcomes, header)
    failed = [o for o in outcomes if not o.ok]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} cases mapped in {elapsed:.2f} s; "
        f"wrote {h5_path} and {json_path}" + (f"; {len(failed)} failed" if failed else "")
    )
    status = 1 if failed else 0
    if args.dicom_out is not None:
        status = max(status, write_mapping_dicom(args, outcomes, model_info["weights_sha256"]))
    return status


def add_mapping_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``mapping`` subcommand on an ``argparse`` subparsers object."""
    d = MappingSettings()
    p = subparsers.add_parser(
        "mapping", help="T1, T2 or ECV maps, AHA segments and slice success for every case"
    )
    p.add_argument("--model", type=Path, help="myocardium segmentation artifact (.ts) or "
                   "deployed name (myo_unet_ft_t2); default: the masks stored in the input "
                   "files")  # fmt: skip
    p.add_argument("--input", type=Path, help="T2 mapping file (T2 mode)")
    p.add_argument("--t1", type=Path, help="native or post-contrast T1 mapping file (T1 mode)")
    p.add_argument("--native", type=Path, help="native T1 mapping file (ECV mode)")
    p.add_argument("--post", type=Path, help="post-contrast T1 mapping file (ECV mode)")
    p.add_argument("--output", type=Path, required=True, help="results HDF5 (+ .json beside)")
    p.add_argument("--figures", type=Path, help="folder for one PNG per slice")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--hematocrit", type=float, help="fraction 0-1 for cases without the attr")
    p.add_argument("--insertion", choices=("file", "auto"), default="file",
                   help="RV insertion point: the slice attr rv_insertion_deg when present "
                   "(file, default) or always estimated from the RV (auto)")  # fmt: skip
    p.add_argument("--max-eccentricity", type=float, default=d.max_eccentricity,
                   help="QC: valid masks have eccentricity below this (%(default)s)")  # fmt: skip
    p.add_argument("--n-angles", type=int, default=d.n_angles, help="polar angle bins")
    p.add_argument("--n-depth", type=int, default=d.n_depth, help="polar transmural samples")
    p.add_argument("--prune-px", type=int, default=d.prune_px,
                   help="boundary pixels eroded from endo- and epicardium")  # fmt: skip
    p.add_argument("--min-analysed-fraction", type=float, default=d.min_analysed_fraction,
                   help="prune less where --prune-px would leave less than this fraction of "
                   "the myocardium mask (%(default)s)")  # fmt: skip
    p.add_argument("--t2-range-ms", type=float, nargs=2, default=d.t2_range_ms,
                   help="valid T2 range, ms")  # fmt: skip
    p.add_argument("--ecv-range-percent", type=float, nargs=2, default=d.ecv_range_percent,
                   help="valid ECV range, %%")  # fmt: skip
    p.add_argument("--t1-range-ms", type=float, nargs=2, default=d.t1_range_ms,
                   help="valid myocardial T1 range, ms")  # fmt: skip
    p.add_argument("--blood-radius-px", type=float, default=d.blood_radius_px,
                   help="blood-pool disc radius at the myocardial centroid, input px")  # fmt: skip
    p.add_argument("--blood-margin-px", type=float, default=d.blood_margin_px,
                   help="blood-pool pixels lie more than this from the myocardium, input px "
                   "(%(default)s)")  # fmt: skip
    p.add_argument("--blood-statistic", choices=("pixel_median", "median", "mean"),
                   default=d.blood_statistic,
                   help="blood T1: median of per-pixel fits of the cavity pixels of the disc "
                   "(default) or one fit of the disc signal's median / mean")  # fmt: skip
    p.add_argument("--no-coil-correction", action="store_true",
                   help="do not divide out the motion-induced receive-coil gains")  # fmt: skip
    p.add_argument(
        "--no-noise-floor-correction",
        action="store_true",
        help="fit the magnitude samples as they are (no Rician floor removal)",
    )
    p.add_argument("--t1-sequence", choices=("auto", *T1_SEQUENCES), default=d.t1_sequence,
                   help="T1 model (T1 and ECV): the slice attr 'sequence' (auto, default; STONE "
                   "when absent) or stone | molli | shmolli | sasha for every slice")  # fmt: skip
    p.add_argument("--t1-model", choices=("t1_2p", "t1_3p"), default=d.t1_model,
                   help="STONE's model: 2-parameter (default, method.md §B2) or "
                   "3-parameter")  # fmt: skip
    p.add_argument("--t2-model", choices=("t2_shared_offset", "t2_3p"), default=d.t2_model,
                   help="T2 model: offset B / A shared by the slice (default; efficient) or B "
                   "free per pixel (3-parameter, docs/method.md §B2)")  # fmt: skip
    p.add_argument("--t2-offset-scope", choices=("slice", "case"), default=d.t2_offset_scope,
                   help="T2 shared offset B / A: one per slice or one per patient (all its "
                   "slices)")  # fmt: skip
    p.add_argument("--segment-fit", choices=("pixel", "roi"), default=d.segment_fit,
                   help="T1 and T2 segment and slice values: means of the pixel map (pixel, "
                   "default) or a fit of each segment's mean signal (roi)")  # fmt: skip
    p.add_argument("--min-valid-t2", type=int, default=d.min_valid_t2,
                   help="slice success: valid T2-weighted images needed")  # fmt: skip
    p.add_argument("--min-valid-t1", type=int, default=d.min_valid_t1,
                   help="slice success: valid native and post images needed (each)")  # fmt: skip
    p.add_argument("--mask-threshold", type=float, default=d.mask_threshold,
                   help="probability threshold of the segmentation model")  # fmt: skip
    p.add_argument("--fuse-slice", action="store_true",
                   help="with --model: one segmentation per slice from the mean probability of "
                   "its images (motion-corrected series)")  # fmt: skip
    p.add_argument("--mask-cleanup", action="store_true",
                   help="before the shape QC: fill holes other than the cavity, close gaps of "
                   "up to 2 px in an open ring")  # fmt: skip
    add_dicom_output_arguments(p)
    p.set_defaults(handler=run_mapping)
    return p
