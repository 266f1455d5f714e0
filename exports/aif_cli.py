"""The ``aif`` subcommand: LV mask, AIF curve and features for every case of an AIF file.

``python -m exports aif --model aif_monai_basic_unet3cs --input cases.h5 --output results.h5
[--figures DIR] [--threads N] [--dicom-out DIR --dicom-source SRC]`` (``--model``: an artifact
file, or a deployed name such as the default ``aif_monai_basic_unet3cs``, ``NAME@VERSION`` for
one version; ``inline-cmr list | promote | rollback``: which model is deployed,
:mod:`deployment.cli`).

Reads every case of an AIF contract file (docs/data_contracts.md), runs the AIF pipeline with
the artifact loaded once, and writes ``results.h5`` and ``results.json`` (layout in
``exports.results``) and, with ``--figures``, one PNG per case. A case that cannot be read or
processed is written as failed, with its reason, and the others are still processed. Exit
status: 0 all cases succeeded, 1 at least one failed (outputs written), 2 bad arguments or an
unusable model/input file.
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
from exports.aif_pipeline import AIFCase, AIFPipeline, AIFResult, CaseFailure
from exports.dicom_output import (
    add_dicom_output_arguments,
    dicom_output_arguments_error,
    write_aif_dicom,
)


def read_cases(path: Path) -> Iterator[AIFCase | CaseFailure]:
    """Cases of an AIF contract file, one at a time; a case breaking the contract -> failure."""
    import h5py

    from formats.aif_contract import AIFContractError, read_aif_case

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise AIFContractError(f"{path}: expected a readable HDF5 file; found {exc}") from exc
    with h5:
        for case_id in h5:
            try:
                case = read_aif_case(h5, case_id, path)
            except AIFContractError as exc:
                yield CaseFailure(case_id, f"{type(exc).__name__}: {exc}")
                continue
            yield AIFCase(case_id, case.series, case.times_s, case.n_pd_frames)


def run_aif(args: argparse.Namespace) -> int:
    """The ``aif`` subcommand; returns the exit status."""
    from exports.results import write_results
    from formats.aif_contract import AIFContractError

    if (problem := dicom_output_arguments_error(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        artifact = load_artifact(args.model, expected_task="aif_lv_detection")
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pipeline = AIFPipeline(artifact, tta=args.tta, fallback=args.fallback)
    outcomes: list[AIFResult | CaseFailure] = []
    start = time.perf_counter()
    try:
        for case in read_cases(args.input):
            outcome = next(pipeline.run_many([case]))
            outcomes.append(outcome)
            if isinstance(outcome, AIFResult) and isinstance(case, AIFCase) and args.figures:
                from exports.figures import plot_case

                signal, _ = pipeline.signal_on_grid(case.series, case.times_s, case.n_pd_frames)
                plot_case(outcome, signal, args.figures)
            if isinstance(outcome, AIFResult):
                status = "ok" if outcome.mask_source == "model" else "ok (legacy fallback mask)"
            else:
                status = f"FAILED: {outcome.error}"
            print(f"{outcome.case_id}: {status}")
    except AIFContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    model = {"model": str(artifact.path), "weights_sha256": artifact.metadata["weights_sha256"]}
    h5_path, json_path = write_results(args.output, outcomes, model)
    failed = [o for o in outcomes if isinstance(o, CaseFailure)]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} cases ok in {elapsed:.2f} s; "
        f"wrote {h5_path} and {json_path}" + (f"; {len(failed)} failed" if failed else "")
    )
    status = 1 if failed else 0
    if args.dicom_out is not None:
        status = max(status, write_aif_dicom(args, outcomes, model["weights_sha256"]))
    return status


def add_aif_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``aif`` subcommand."""
    aif = subparsers.add_parser("aif", help="LV mask, AIF curve and features for every case")
    aif.add_argument("--model", type=Path, help="exported artifact (.ts) or deployed name "
                     "(aif_monai_basic_unet3cs, NAME@2); not with --legacy")  # fmt: skip
    aif.add_argument(
        "--legacy",
        action="store_true",
        help="label with the legacy detector instead (no model): --output = input + masks",
    )
    aif.add_argument("--input", type=Path, required=True, help="HDF5 file in the AIF contract")
    aif.add_argument("--output", type=Path, required=True, help="results HDF5 (+ .json beside)")
    aif.add_argument("--figures", type=Path, help="folder for one PNG per case")
    aif.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    aif.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the series and its flips (4 passes)",
    )
    aif.add_argument("--fallback", choices=("legacy",),
                     help="when the model finds no LV, use the legacy detector's mask "
                     "(flagged mask_source=legacy in the outputs)")  # fmt: skip
    add_dicom_output_arguments(aif)
    aif.set_defaults(handler=_run_aif_or_legacy)
    return aif


def _run_aif_or_legacy(args: argparse.Namespace) -> int:
    if args.legacy:
        from exports.legacy_labeller import run_legacy_labeller

        return run_legacy_labeller(args)
    if args.model is None:
        print("error: aif: --model is required (or --legacy to label with the legacy "
              "detector)", file=sys.stderr)  # fmt: skip
        return 2
    return run_aif(args)
