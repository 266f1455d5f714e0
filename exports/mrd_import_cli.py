"""``python -m exports mrd-import IN.h5 --output cases.h5``: MRD image files -> our contracts.

::

    python -m exports mrd-import session.h5 --output cases.h5 [--modality aif] [--n-pd-frames 2]
    python -m exports mrd-import t2.h5 --output t2_cases.h5 --modality t2 --levels basal mid apical

Reads an MRD image file (as the scanner streams it and a server's "save data" stores it, or as
python-ismrmrd-server's ``client.py`` reads and writes them) and writes the AIF or mapping
contract (:mod:`formats.mrd.importer`). The modality comes from ``--modality`` or the config
stored in the file. Exit status: 0 written, 2 unreadable input or data that breaks the contract.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from formats.mapping_contract import LEVELS
from formats.mrd.file import MRDFileError
from formats.mrd.images import TIME_SOURCES
from formats.mrd.importer import IMPORT_MODALITIES, MRDImportError, import_mrd_file

__all__ = ["add_mrd_import_parser", "run_mrd_import"]


def run_mrd_import(args: argparse.Namespace) -> int:
    """The ``mrd-import`` subcommand; returns the exit status."""
    try:
        cases = import_mrd_file(
            args.input,
            args.output,
            args.modality,
            n_pd_frames=args.n_pd_frames,
            time_source=args.time_source,
            levels=args.levels,
            hematocrit=args.hematocrit,
            times_ms=args.times_ms,
            keep_identifiers=args.keep_identifiers,
        )
    except (MRDFileError, MRDImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(cases)} case(s) to {args.output}: {', '.join(cases)}")
    return 0


def add_mrd_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``mrd-import`` subcommand."""
    parser = subparsers.add_parser("mrd-import", help="MRD image file -> AIF or mapping contract")
    parser.add_argument("input", type=Path, help="MRD image file (HDF5)")
    parser.add_argument("--output", type=Path, required=True, help="contract HDF5 to write")
    parser.add_argument(
        "--modality", choices=IMPORT_MODALITIES, help="default: from the config stored in the file"
    )
    parser.add_argument(
        "--n-pd-frames",
        type=int,
        help="AIF: leading PD frames (default: the file's parameters, else 0)",
    )
    parser.add_argument(
        "--time-source", choices=TIME_SOURCES, default="auto", help="AIF: frame time stamp to use"
    )
    parser.add_argument(
        "--levels",
        nargs="+",
        choices=LEVELS,
        help="mapping: slice levels in slice order (default for 3 slices: basal mid apical)",
    )
    parser.add_argument("--hematocrit", type=float, help="mapping: case hematocrit (0-1)")
    parser.add_argument(
        "--times-ms",
        type=float,
        nargs="+",
        help="mapping: TI or T2-prep times per slice in image_index order "
        "(default: image meta InversionTime / T2PrepDuration)",
    )
    parser.add_argument(
        "--keep-identifiers",
        action="store_true",
        help="keep the header's patient id (default: its SHA-256 hash)",
    )
    parser.set_defaults(handler=run_mrd_import)
    return parser
