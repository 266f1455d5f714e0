"""LightningDataModule for AIF perfusion series (``data=aif``).

With ``path`` set it reads that HDF5 file (the AIF contract of data_contracts.md). With ``path:
null`` it
generates the synthetic phantom set once (seeded) and caches it under ``data_dir``; the file
name carries the generator settings, so a changed setting makes a new file instead of reusing
a stale one. Splits are by patient; the split used is written to ``split_out``. With ``n_folds``
set, the split is fold ``fold`` of a patient-level k-fold (test = that fold); see
:func:`datamodules.patient_split.kfold_split_by_patient`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datamodules.aif_augmentation import AIFAugmentation, AIFTrainingTransform
from datamodules.aif_dataset import AIFHDF5Dataset
from datamodules.loaders import SplitDataModule
from datamodules.patient_split import (
    kfold_split_by_patient,
    read_split,
    split_by_patient,
    write_split,
)
from datamodules.synthetic.aif_phantom import (
    GENERATOR_VERSION,
    phantom_family,
    write_aif_phantoms,
)
from formats.aif_contract import scan_aif_file
from quantification.aif_preprocessing import AIFPreprocessing

log = logging.getLogger(__name__)


class AIFDataModule(SplitDataModule):
    """Train/val/test loaders of preprocessed AIF series ``[64, 64, 48]`` and masks ``[64, 48]``.

    Args:
        path: HDF5 file in the AIF contract, or ``None`` for the synthetic phantoms.
        data_dir: where the synthetic phantom file is cached.
        n_patients, scans_per_patient, phantom_seed: synthetic set size and seed.
        val_fraction, test_fraction: shares of patients in val and test (``test_fraction`` is
            unused with ``n_folds``: the test set is then one fold).
        split_seed: seed of the patient split (and of the folds).
        n_folds: ``None`` for one random split, or k >= 2 for patient-level k-fold.
        fold: the held-out (test) fold with ``n_folds``, ``0 <= fold < n_folds``.
        split_file: reuse this split (JSON from an earlier run) instead of drawing one.
        split_out: where the split actually used is written (the run dir).
        batch_size: training batch size (evaluation uses the same).
        num_workers: DataLoader worker processes (each opens the HDF5 file itself).
        augmentation: keyword arguments of :class:`AIFAugmentation` (training only), or
            ``None`` for no augmentation at all.
        phantom_ranges: overrides of ``AIFPhantomRanges`` fields for the synthetic set (or the
            name of an evaluation family in ``OUT_OF_DISTRIBUTION``, e.g. ``low_snr``).
        preprocessing: keyword arguments of :class:`AIFPreprocessing`.
    """

    def __init__(
        self,
        path: str | None = None,
        data_dir: str = "data",
        n_patients: int = 300,
        scans_per_patient: int = 2,
        phantom_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        n_folds: int | None = None,
        fold: int = 0,
        split_file: str | None = None,
        split_out: str | None = "split.json",
        batch_size: int = 16,
        num_workers: int = 0,
        augmentation: dict | None = None,
        phantom_ranges: dict | str | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        super().__init__()
        folds_ok = isinstance(n_folds, int) and n_folds >= 2 and isinstance(fold, int)
        if n_folds is not None and not (folds_ok and 0 <= fold < n_folds):
            raise ValueError(
                f"data.n_folds={n_folds!r}, data.fold={fold!r}: expected n_folds >= 2 and "
                "0 <= fold < n_folds (or n_folds=null for a single random split)"
            )
        self.save_hyperparameters(logger=False)
        self.preprocessing = AIFPreprocessing(**(preprocessing or {}))
        self.datasets: dict[str, AIFHDF5Dataset] = {}
        self.split: dict[str, list[str]] = {}

    @property
    def file(self) -> Path:
        """The HDF5 file read: the configured ``path`` or the cached phantom file."""
        hp = self.hparams
        if hp.path is not None:
            return Path(hp.path)
        family = phantom_family(hp.phantom_ranges)[0]
        name = (
            f"aif_phantoms_v{GENERATOR_VERSION}_{family}_p{hp.n_patients}_"
            f"s{hp.scans_per_patient}_seed{hp.phantom_seed}.h5"
        )
        return Path(hp.data_dir) / name

    def prepare_data(self) -> None:
        if self.hparams.path is None and not self.file.exists():
            log.info("Writing synthetic AIF phantoms to %s", self.file)
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_aif_phantoms(
                self.file,
                n_patients=self.hparams.n_patients,
                seed=self.hparams.phantom_seed,
                scans_per_patient=self.hparams.scans_per_patient,
                ranges=phantom_family(self.hparams.phantom_ranges)[1],
            )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        cases = scan_aif_file(self.file, require_mask=True)
        patients = {c.case_id: c.patient_id for c in cases}
        if hp.split_file:
            self.split = read_split(hp.split_file, set(patients))
        elif hp.n_folds is not None:
            self.split = kfold_split_by_patient(
                patients, hp.n_folds, hp.fold, hp.val_fraction, hp.split_seed
            )
        else:
            self.split = split_by_patient(
                patients, hp.val_fraction, hp.test_fraction, hp.split_seed
            )
        if hp.split_out:
            write_split(hp.split_out, self.split)
        augment = None
        if hp.augmentation is not None:
            augment = AIFTrainingTransform(AIFAugmentation(**hp.augmentation))
        self.datasets = {
            name: AIFHDF5Dataset(
                self.file, ids, self.preprocessing, transform=augment if name == "train" else None
            )
            for name, ids in self.split.items()
        }
        log.info("AIF data %s: %s", self.file, {k: len(v) for k, v in self.split.items()})
