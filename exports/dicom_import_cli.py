"""``python -m exports dicom-import SRC --output OUT.h5``: a scanner's DICOM folder into the HDF5
contracts (the work is done by :mod:`formats.dicom.importer`; rules in the README, "Your own data
(DICOM)").

Prints one line per series (imported, with where it went, or skipped, with the reason), one per
DICOM file left out, and a total. Exit status: 0 every image series imported (objects that are
not images, such as reports, are listed but are no failure); 1 some series skipped, a damaged
DICOM file, or nothing imported (the imported ones are written); 2 bad arguments, a missing or
empty folder, or an unusable ``--labels`` file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "LABEL_CONVENTION_CHOICES",
    "TASK_CHOICES",
    "add_dicom_import_parser",
    "run_dicom_import",
]

# the values of formats.dicom.series_plan.TASKS and formats.dicom.labels.LABEL_CONVENTIONS,
# spelled out so that registering the subcommand does not import pydicom (tested equal)
TASK_CHOICES = ("auto", "aif", "perfusion", "t1", "t2")
LABEL_CONVENTION_CHOICES = ("acdc", "inline")


def run_dicom_import(args: argparse.Namespace) -> int:
    """The ``dicom-import`` subcommand; returns the exit status."""
    from formats.dicom.files import DicomImportError
    from formats.dicom.importer import ImportOptions, import_dicom

    options = ImportOptions(
        task=args.task,
        keep_identifiers=args.keep_identifiers,
        salt=args.salt,
        labels=tuple(args.labels),
        label_convention=args.label_convention,
    )
    try:
        report = import_dicom(args.source, args.output, options)
    except DicomImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    if not report.outputs:
        print("error: no series could be imported", file=sys.stderr)
        return 1
    damaged = any(f.unreadable for f in report.skipped_files)
    return 1 if report.n_skipped or damaged else 0


def add_dicom_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``dicom-import`` subcommand."""
    p = subparsers.add_parser(
        "dicom-import",
        help="DICOM folder (perfusion, T1/T2 mapping) -> AIF / perfusion / mapping HDF5 files",
    )
    p.add_argument("source", type=Path, help="folder tree of DICOM files (any nesting and names)")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="HDF5 file; with several kinds found, <stem>_<kind>.h5 beside it",
    )
    p.add_argument(
        "--task",
        choices=TASK_CHOICES,
        default="auto",
        help="import only this kind of series (default: tell from names and times; "
        "perfusion: the imaging and AIF series of dual-sequence perfusion)",
    )
    p.add_argument(
        "--keep-identifiers",
        action="store_true",
        help="keep PatientID, study date, study id and accession number (default: a salted "
        "hash of PatientID only; names and birth dates are never kept)",
    )
    p.add_argument(
        "--salt",
        help="salt of the patient pseudonyms (default: a random per-user salt kept in "
        "$XDG_CONFIG_HOME/inline-cmr/dicom_id_salt)",
    )
    p.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        default=[],
        help="label files: NIfTI (.nii, .nii.gz), NumPy (.npy, .npz keyed by SOP Instance UID), "
        "DICOM SEG or RTSTRUCT (those inside SOURCE are used anyway)",
    )
    p.add_argument(
        "--label-convention",
        choices=LABEL_CONVENTION_CHOICES,
        default="inline",
        help="values of NIfTI / NumPy labels: inline = 1 LV, 2 RV, 3 myocardium (default); "
        "acdc = 1 RV, 2 myocardium, 3 LV",
    )
    p.set_defaults(handler=run_dicom_import)
    return p
