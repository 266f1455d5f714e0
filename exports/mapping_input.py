"""Reading the mapping input files for the mapping runtime and the evaluations: every case of a
mapping contract file (:mod:`formats.mapping_contract`) as the pipeline's
:class:`~exports.mapping_slice.Acquisition` per slice (:func:`read_acquisitions`), or the reason
the case cannot be read (:class:`MappingInputError`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from exports.mapping_slice import Acquisition
from formats.mapping_contract import (
    MappingContractError,
    MappingSlice,
    open_mapping_file,
    read_mapping_slice,
)

__all__ = ["MappingInputError", "read_acquisitions"]


class MappingInputError(MappingContractError):
    """A mapping file or case breaks the contract (:mod:`formats.mapping_contract`) or cannot be
    mapped (no hematocrit, unpaired ECV cases); the message names the file, case and key."""


def _acquisition(sl: MappingSlice, insertion: str) -> Acquisition:
    """A checked contract slice as the pipeline's :class:`Acquisition`."""
    info = sl.info
    given = info.attrs.get("rv_insertion_deg") if insertion == "file" else None
    return Acquisition(
        case_id=info.case_id,
        slice_id=info.slice_id,
        images=sl.images,
        times_ms=info.times_ms,
        masks=sl.masks,
        level=info.level,
        rv_insertion_deg=float(given) if given is not None else None,
        sequence=info.attrs.get("sequence"),
    )


def read_acquisitions(
    path: Path, time_key: str, insertion: str = "file"
) -> Iterator[tuple[str, dict[str, Any], list[Acquisition] | MappingInputError]]:
    """Per case of a mapping file: (case_id, case attrs, its slices or the contract error).

    Reads with the data-contract reader :mod:`formats.mapping_contract` (every check of the
    contract: keys, dtypes, shapes, finite pixels, mask values, attrs ``patient_id``, ``level``,
    ``modality``); a slice whose time vector is not ``time_key`` (``te_ms`` for T2, ``ti_ms``
    for T1) breaks the case too. A case that breaks the contract is yielded with its error
    (the message names the file, case, slice and key) and the next case is read.

    Raises:
        MappingInputError: the file itself cannot be opened as HDF5.
    """
    try:
        h5 = open_mapping_file(path)
    except MappingContractError as exc:
        raise MappingInputError(str(exc)) from exc
    with h5:
        for case_id in h5:
            try:
                case = h5[case_id]
                if not isinstance(case, h5py.Group):
                    raise MappingInputError(
                        f"{path}: case {case_id!r}: expected a case group; found "
                        f"{type(case).__name__}"
                    )
                slice_ids = [k for k in case if isinstance(case.get(k), h5py.Group)]
                if not slice_ids:
                    raise MappingInputError(
                        f"{path}: case {case_id!r}: expected at least one slice group; found none"
                    )
                slices, case_attrs = [], {}
                for slice_id in slice_ids:
                    sl = read_mapping_slice(h5, case_id, slice_id, path)
                    if sl.info.time_key != time_key:
                        raise MappingInputError(
                            f"{path}: case {case_id!r}, slice {slice_id!r}, key "
                            f"{sl.info.time_key!r}: expected {time_key!r} (a "
                            f"{'T2' if time_key == 'te_ms' else 'T1'} mapping file); found "
                            f"modality {sl.info.modality!r}"
                        )
                    slices.append(_acquisition(sl, insertion))
                    case_attrs = sl.info.case_attrs
            except MappingContractError as exc:
                error = exc if isinstance(exc, MappingInputError) else MappingInputError(str(exc))
                yield case_id, {}, error
                continue
            except (OSError, KeyError, RuntimeError) as exc:
                yield case_id, {}, MappingInputError(f"{path}: case {case_id!r} unreadable ({exc})")
                continue
            yield case_id, case_attrs, slices
