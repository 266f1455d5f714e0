"""Patient-level train/val/test splits, saved as JSON next to the run outputs and reusable.

Splits are by patient, never by scan: the stress and rest scans of a patient always land in the
same subset, so no patient's anatomy leaks from training into evaluation. Two ways to draw one:
:func:`split_by_patient` (random shares of patients) and :func:`kfold_split_by_patient`
(patient-level k-fold cross-validation: fold k is the test set, ``data.n_folds=5 data.fold=k``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from formats.atomic_file import atomic_write

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


def patient_folds(case_patients: Mapping[str, str], n_folds: int, seed: int) -> list[list[str]]:
    """Partition the cases into ``n_folds`` folds of whole patients (seeded).

    Patients are shuffled with ``seed`` and dealt round-robin, so fold sizes differ by at most
    one patient, every patient is in exactly one fold and all scans of a patient share it.

    Args:
        case_patients: case id → patient id.
        n_folds: number of folds, 2 <= n_folds <= number of patients.
        seed: seed of the shuffle (same seed and cases → same folds).

    Returns:
        ``n_folds`` sorted lists of case ids.
    """
    patients = np.array(sorted(set(case_patients.values())))
    if not 2 <= n_folds <= len(patients):
        raise ValueError(
            f"n_folds={n_folds} must be between 2 and the number of patients ({len(patients)})"
        )
    np.random.default_rng(seed).shuffle(patients)
    fold_of = {patient: i % n_folds for i, patient in enumerate(patients)}
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for case_id, patient in sorted(case_patients.items()):
        folds[fold_of[patient]].append(case_id)
    return folds


def kfold_split_by_patient(
    case_patients: Mapping[str, str], n_folds: int, fold: int, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Train/val/test split of patient-level k-fold cross-validation.

    The test set is fold ``fold`` of :func:`patient_folds`; the validation (Dev) set is a seeded
    ``val_fraction`` of all patients drawn from the other folds (at least one patient when
    positive), used for checkpoint selection; the rest is training. Running ``fold = 0 ..
    n_folds - 1`` tests every patient exactly once.

    Args:
        case_patients: case id → patient id.
        n_folds: number of folds (>= 2).
        fold: the held-out fold, ``0 <= fold < n_folds``.
        val_fraction: share of *all* patients in the validation split, ``0 <= v < 1``.
        seed: seed of the folds and of the validation draw.

    Returns:
        ``{"train": [case ids], "val": [...], "test": [...]}``, each sorted.
    """
    if not (isinstance(fold, int) and 0 <= fold < n_folds):
        raise ValueError(f"fold={fold!r} must be an int in [0, n_folds={n_folds})")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    folds = patient_folds(case_patients, n_folds, seed)
    test = set(folds[fold])
    rest = sorted({p for c, p in case_patients.items() if c not in test})
    n_val = int(round(val_fraction * len(set(case_patients.values())))) or int(val_fraction > 0)
    if n_val >= len(rest):
        raise ValueError(
            f"{len(rest)} patients outside fold {fold} are too few for {n_val} validation patients"
        )
    # a different stream from the fold shuffle, so val is not the next fold in disguise
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(fold,)))
    val_patients = set(rng.choice(np.array(rest), size=n_val, replace=False).tolist())
    split: dict[str, list[str]] = {name: [] for name in SUBSETS}
    for case_id, patient in sorted(case_patients.items()):
        name = "test" if case_id in test else "val" if patient in val_patients else "train"
        split[name].append(case_id)
    return split


def write_split(path: str | Path, split: Mapping[str, list[str]]) -> Path:
    """Write the split as JSON atomically (temporary file, then rename).

    Only the three subsets are stored; how they were drawn (seed, ``n_folds``, ``fold``) is in
    the run's config (``<run dir>/.hydra/config.yaml``).
    """
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
    seen: dict[str, str] = {}
    for name in SUBSETS:
        for case_id in split[name]:
            if case_id in seen:
                raise ValueError(
                    f"{path}: case id {case_id!r} is in both {seen[case_id]!r} and {name!r}; "
                    "expected each case in one subset"
                )
            seen[case_id] = name
    return {name: split[name] for name in SUBSETS}
