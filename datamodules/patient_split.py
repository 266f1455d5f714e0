"""Patient-level train/val/test splits, saved as JSON next to the run outputs and reusable.

Splits are by patient, never by scan: the stress and rest scans of a patient always land in the
same subset, so no patient's anatomy leaks from training into evaluation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from exports.atomic_file import atomic_write

SUBSETS = ("train", "val", "test")


def split_by_patient(
    case_patients: Mapping[str, str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Assign whole patients to train/val/test at random (seeded).

    Args:
        case_patients: case id → patient id.
        val_fraction, test_fraction: shares of *patients* (not scans) in val and test; at least
            one patient each when the fraction is positive.
        seed: seed of the shuffle.

    Returns:
        ``{"train": [case ids], "val": [...], "test": [...]}``, each sorted.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 "
            "and sum to less than 1"
        )
    patients = np.array(sorted(set(case_patients.values())))
    np.random.default_rng(seed).shuffle(patients)
    n_val = int(round(val_fraction * len(patients))) or int(val_fraction > 0)
    n_test = int(round(test_fraction * len(patients))) or int(test_fraction > 0)
    if n_val + n_test >= len(patients):
        raise ValueError(f"{len(patients)} patients are too few for val/test splits")
    subset_of = {p: "val" for p in patients[:n_val]}
    subset_of |= {p: "test" for p in patients[n_val : n_val + n_test]}
    split: dict[str, list[str]] = {name: [] for name in SUBSETS}
    for case_id, patient in sorted(case_patients.items()):
        split[subset_of.get(patient, "train")].append(case_id)
    return split


def write_split(path: str | Path, split: Mapping[str, list[str]]) -> Path:
    """Write the split as JSON atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({name: list(split[name]) for name in SUBSETS}, indent=1))
    return path


def read_split(path: str | Path, known_cases: set[str]) -> dict[str, list[str]]:
    """Read a split written by :func:`write_split`, checking every case exists in the data."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the split file ({err})") from err
    missing = [name for name in SUBSETS if not isinstance(split.get(name), list)]
    if missing:
        raise ValueError(f"{path}: key(s) {missing} missing; expected lists of case ids")
    unknown = sorted({c for name in SUBSETS for c in split[name]} - known_cases)
    if unknown:
        raise ValueError(f"{path}: case ids {unknown[:5]} are not in the data file")
    return {name: split[name] for name in SUBSETS}
