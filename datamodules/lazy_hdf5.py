"""Base of the HDF5-backed datasets: one file handle per process, opened on first access.

h5py handles must not cross a fork, so a dataset never opens its file in ``__init__``: the
first ``__getitem__`` in each process (the main one, or a DataLoader worker) opens it, a changed
pid reopens it, and pickling drops it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
from torch.utils.data import Dataset


class LazyHDF5Dataset(Dataset):
    """A dataset reading ``path`` through ``opener`` (the contract's checked ``h5py.File`` open).

    Subclasses implement ``__len__`` and ``__getitem__`` and read through :meth:`file`.
    """

    def __init__(self, path: str | os.PathLike, opener: Callable[[Path], h5py.File]) -> None:
        self.path = Path(path)
        self._opener = opener
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def file(self) -> h5py.File:
        """This process's open handle of ``path``."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = self._opener(self.path)
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state
