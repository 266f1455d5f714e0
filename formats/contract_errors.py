"""What every data-contract reader shares: the error type, its message, and plain attr values.

A contract error names where the problem is (file, case, slice, key), what was expected and what
was found, e.g. ``aif.h5: case 'P0003_rest', key 'times_s': expected strictly increasing times;
found times_s[3]=4.5 then times_s[4]=4.5``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ContractError(ValueError):
    """A file breaks a data contract; the message names file, case, key, expected and found."""


def located(path: Any, case_id: str | None = None, slice_id: str | None = None,
            key: str | None = None) -> str:  # fmt: skip
    """``"<path>: case 'c', slice 's', key 'k'"`` with the parts that are known."""
    where = f"{path}"
    if case_id is not None:
        where += f": case {case_id!r}"
    if slice_id is not None:
        where += f", slice {slice_id!r}"
    if key is not None:
        where += f", key {key!r}"
    return where


def plain(value: Any) -> Any:
    """HDF5 attr value -> plain Python (bytes decoded, NumPy scalars and arrays unwrapped).

    Example:
        >>> plain(b"mid"), plain(np.float32(1.5)), plain(np.array([1, 2]))
        ('mid', 1.5, [1, 2])
    """
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    return value


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    """A real number (Python or NumPy int or float), not a bool."""
    return is_int(value) or isinstance(value, float | np.floating)
