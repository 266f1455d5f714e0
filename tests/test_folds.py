"""Patient-level k-fold cross-validation: ``data.n_folds=5 data.fold=k``."""

from __future__ import annotations

import json

import h5py
import hydra
import pytest

from datamodules.aif_datamodule import AIFDataModule
from datamodules.patient_split import kfold_split_by_patient, patient_folds, read_split
from datamodules.synthetic.aif_phantom import write_aif_phantoms
from tests.conftest import compose_train_config


@pytest.fixture(scope="module")
def three_scan_phantoms(tmp_path_factory):
    """12 phantom patients with 3 scans each (stress, rest, rest2): 36 cases."""
    path = tmp_path_factory.mktemp("folds") / "aif_p12_s3.h5"
    write_aif_phantoms(path, n_patients=12, seed=3, scans_per_patient=3)
    with h5py.File(path, "r") as h5:
        case_patients = {case: str(h5[case].attrs["patient_id"]) for case in h5}
    return path, case_patients


def test_folds_partition_the_patients(three_scan_phantoms):
    _, case_patients = three_scan_phantoms
    folds = patient_folds(case_patients, n_folds=5, seed=0)

    patients_in = [{case_patients[c] for c in fold} for fold in folds]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not patients_in[i] & patients_in[j], f"a patient is in folds {i} and {j}"
    assert sorted(c for fold in folds for c in fold) == sorted(case_patients)  # union = all
    assert sorted(len(p) for p in patients_in) == [2, 2, 2, 3, 3]  # 12 patients, 5 folds
    for fold in folds:  # every scan of a patient lands in its patient's fold
        for case in fold:
            siblings = [c for c, p in case_patients.items() if p == case_patients[case]]
            assert set(siblings) <= set(fold)


def test_each_patient_is_tested_exactly_once_across_the_folds(three_scan_phantoms):
    _, case_patients = three_scan_phantoms
    tested = []
    for fold in range(4):
        split = kfold_split_by_patient(case_patients, 4, fold, val_fraction=0.1, seed=7)
        patients = {name: {case_patients[c] for c in cases} for name, cases in split.items()}
        assert patients["val"] and patients["train"]
        assert not patients["train"] & patients["val"]
        assert not patients["train"] & patients["test"]
        assert not patients["val"] & patients["test"]
        assert sorted(sum(split.values(), [])) == sorted(case_patients)
        tested += sorted(patients["test"])
    assert sorted(tested) == sorted(set(case_patients.values()))


def test_folds_are_reproducible_and_depend_on_the_seed(three_scan_phantoms):
    _, case_patients = three_scan_phantoms
    assert patient_folds(case_patients, 3, seed=1) == patient_folds(case_patients, 3, seed=1)
    assert patient_folds(case_patients, 3, seed=1) != patient_folds(case_patients, 3, seed=2)


@pytest.mark.parametrize(
    "n_folds, fold, match",
    [(1, 0, "n_folds=1"), (13, 0, "n_folds=13"), (5, 5, "fold=5"), (5, -1, "fold=-1")],
)
def test_impossible_folds_are_refused(three_scan_phantoms, n_folds, fold, match):
    _, case_patients = three_scan_phantoms
    with pytest.raises(ValueError, match=match):
        kfold_split_by_patient(case_patients, n_folds, fold, val_fraction=0.1, seed=0)


def test_datamodule_writes_the_fold_split_and_reuses_it(three_scan_phantoms, tmp_path):
    path, case_patients = three_scan_phantoms
    first = AIFDataModule(path=str(path), n_folds=5, fold=2, split_out=str(tmp_path / "split.json"))
    first.setup("fit")
    assert json.loads((tmp_path / "split.json").read_text()) == first.split
    assert first.split["test"] == patient_folds(case_patients, 5, seed=0)[2]
    assert len(first.datasets["test"]) == len(first.split["test"])

    again = AIFDataModule(
        path=str(path),
        split_file=str(tmp_path / "split.json"),
        split_out=str(tmp_path / "reused" / "split.json"),
    )
    again.setup("fit")
    assert again.split == first.split
    assert read_split(tmp_path / "reused" / "split.json", set(case_patients)) == first.split


def test_datamodule_refuses_a_bad_fold_before_touching_data(tmp_path):
    with pytest.raises(ValueError, match=r"data.n_folds=5, data.fold=7"):
        AIFDataModule(path=str(tmp_path / "never_read.h5"), n_folds=5, fold=7)


def test_fold_overrides_reach_the_datamodule(three_scan_phantoms, tmp_path):
    path, case_patients = three_scan_phantoms
    overrides = [f"data.path={path}", "data.n_folds=5", "data.fold=3"]
    datamodule = hydra.utils.instantiate(compose_train_config(overrides, output_dir=tmp_path).data)
    datamodule.setup("fit")
    assert datamodule.split["test"] == patient_folds(case_patients, 5, seed=0)[3]
    assert json.loads((tmp_path / "split.json").read_text()) == datamodule.split
