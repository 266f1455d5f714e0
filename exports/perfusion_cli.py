"""``python -m exports perfusion``: MBF, PS, Vb and Visf maps for every case of a file.

``python -m exports perfusion --input cases.h5 --output maps.h5 [--figures DIR]
[--hematocrit 0.42] [--model bte|2cxm|fermi] [--dicom-out DIR --dicom-source SRC]``

Reads every case of a perfusion file (gadolinium units or the dual-sequence acquisition, layout
in :mod:`formats.perfusion_contract`), maps it (:mod:`exports.perfusion_pipeline`) and writes
``maps.h5`` atomically (and, with ``--dicom-out``, the maps as DICOM Parametric Maps:
:func:`exports.dicom_output.write_perfusion_dicom`). A case that breaks the contract or lacks a
sequence attribute is written as failed with its reason (the others are still mapped). Exit
status: 0 all cases mapped, 1 at least one failed (outputs written, or a DICOM output not
written), 2 an unreadable input file or bad flags.

Phantoms to try it on: ``python -m datamodules.synthetic.perfusion_phantom --output
phantoms.h5``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from exports.dicom_output import (
    add_dicom_output_arguments,
    dicom_output_arguments_error,
    write_perfusion_dicom,
)
from quantification.perfusion_models import MODELS

__all__ = ["add_perfusion_parser", "run_perfusion"]


def run_perfusion(args: argparse.Namespace) -> int:
    """The ``perfusion`` subcommand; returns the exit status."""
    import h5py

    from exports.perfusion_pipeline import PerfusionSettings, map_case
    from formats.perfusion_contract import (
        PerfusionContractError,
        PerfusionResult,
        read_perfusion_case,
        write_perfusion_results,
    )
    from quantification.saturation_recovery import MissingSequenceAttribute

    if (problem := dicom_output_arguments_error(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.hematocrit is not None and not 0.0 <= args.hematocrit < 1.0:
        print(f"error: --hematocrit must be a fraction in [0, 1); got {args.hematocrit}",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = PerfusionSettings(
        model=args.model,
        hematocrit=args.hematocrit,
        tissue_density_g_per_ml=args.tissue_density,
        delay_range_s=(0.0, args.max_delay_s),
        min_enhancement_fraction=args.min_enhancement,
    )
    try:
        h5 = h5py.File(args.input, "r")
    except OSError as exc:
        print(f"error: {args.input}: expected a readable HDF5 file; found {exc}", file=sys.stderr)
        return 2
    results: dict[str, PerfusionResult] = {}
    start = time.perf_counter()
    with h5:
        for case_id in h5:
            where = f"{args.input}: case {case_id!r}"
            tic = time.perf_counter()
            try:
                case = read_perfusion_case(h5, case_id, args.input)
                result, fit, images = map_case(case, settings, where)
            except (PerfusionContractError, MissingSequenceAttribute, ValueError) as exc:
                results[case_id] = PerfusionResult(error=f"{type(exc).__name__}: {exc}")
                print(f"{case_id}: FAILED: {exc}")
                continue
            results[case_id] = result
            fitted = fit.failure == 0
            where = "all" if case.mask is None else "myocardial"
            shown = fitted if case.mask is None else fitted & (case.mask > 0)
            median = np.median(fit.mbf_ml_min_g[shown]) if shown.any() else float("nan")
            print(f"{case_id}: {fitted.sum()} of {fit.failure.size} pixels fitted, median MBF "
                  f"of the {where} pixels {median:.2f} ml/min/g, "
                  f"{time.perf_counter() - tic:.2f} s")  # fmt: skip
            if args.figures is not None:
                from exports.perfusion_figures import plot_perfusion_case

                plot_perfusion_case(case_id, result.times_s, result.aif_gd, images, fit,
                                    case.mask, args.figures)  # fmt: skip
    path = write_perfusion_results(args.output, results)
    failed = [c for c, r in results.items() if r.error is not None]
    print(f"{len(results) - len(failed)} of {len(results)} cases mapped in "
          f"{time.perf_counter() - start:.2f} s; wrote {path}"
          + (f"; {len(failed)} failed" if failed else ""))  # fmt: skip
    status = 1 if failed or not results else 0
    if args.dicom_out is not None:
        status = max(status, write_perfusion_dicom(args, results))
    return status


def add_perfusion_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``perfusion`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "perfusion", help="myocardial blood flow (MBF), PS, Vb, Visf maps from the AIF"
    )
    p.add_argument("--input", type=Path, required=True, help="perfusion HDF5 (contract: "
                   "formats/perfusion_contract.py)")  # fmt: skip
    p.add_argument("--output", type=Path, required=True, help="maps HDF5 to write")
    p.add_argument("--figures", type=Path, help="folder for one PNG per case")
    p.add_argument("--model", choices=MODELS, default="bte",
                   help="bte: blood-tissue exchange (AATH, default); 2cxm: two-compartment "
                   "exchange; fermi: Fermi-constrained deconvolution (MBF only)")  # fmt: skip
    p.add_argument("--hematocrit", type=float,
                   help="fraction 0-1; default: the case's attr, else 0.42")  # fmt: skip
    p.add_argument("--tissue-density", type=float, default=1.05,
                   help="myocardial density, g/ml, for per-gram values (%(default)s)")  # fmt: skip
    p.add_argument("--max-delay-s", type=float, default=6.0,
                   help="largest delay of the tissue after the AIF, s (%(default)s)")  # fmt: skip
    p.add_argument("--min-enhancement", type=float, default=0.02,
                   help="pixels peaking below this fraction of the AIF peak are not fitted "
                   "(%(default)s)")  # fmt: skip
    add_dicom_output_arguments(p)
    p.set_defaults(handler=run_perfusion)
    return p
