"""Preprocessed AIF cases of one contract file (``formats.aif_contract``), for a DataLoader."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from datamodules.lazy_hdf5 import LazyHDF5Dataset
from formats.aif_contract import AIFContractError, open_aif_file, read_aif_case
from formats.contract_errors import located
from quantification.aif_preprocessing import (
    AIFPreprocessing,
    preprocess_aif_series,
    preprocess_mask,
)


class AIFHDF5Dataset(LazyHDF5Dataset):
    """Preprocessed AIF cases from one contract file, for a DataLoader.

    The HDF5 file is opened lazily on the first ``__getitem__`` in each process (reopened when the
    pid changes) and never in ``__init__``, so ``num_workers > 0`` works; the handle is dropped
    when pickled. Case ids are not checked here: call ``formats.aif_contract.scan_aif_file`` first.

    A sample is ``{"image": float32 [n_frames, ro_size, e1_size], "mask": int64 [ro_size,
    e1_size], "case_id": str}``; "mask" is present when ``require_mask`` (a case without one then
    raises :class:`AIFContractError`) or, with ``require_mask=False``, when the case has one.
    ``transform(sample) -> sample`` is applied last.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        case_ids: list[str],
        preprocessing: AIFPreprocessing = AIFPreprocessing(),  # noqa: B008 (frozen, immutable)
        transform: Any = None,
        require_mask: bool = True,
    ) -> None:
        super().__init__(path, open_aif_file)
        self.case_ids = list(case_ids)
        self.preprocessing = preprocessing
        self.transform = transform
        self.require_mask = require_mask

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        case_id = self.case_ids[index]
        case = read_aif_case(self.file(), case_id, self.path, require_mask=self.require_mask)
        try:
            pre = preprocess_aif_series(
                case.series, case.times_s, case.n_pd_frames, self.preprocessing
            )
        except ValueError as exc:
            where = located(self.path, case_id, key="series")
            raise AIFContractError(f"{where}: expected a usable series; found {exc}") from exc
        sample: dict[str, Any] = {"image": torch.from_numpy(pre.image), "case_id": case_id}
        if case.mask is not None:
            mask = preprocess_mask(case.mask, self.preprocessing).astype(np.int64)
            sample["mask"] = torch.from_numpy(mask)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample
