"""Reader for the AIF perfusion HDF5 data contract (docs/data_contracts.md).

One file per data set; every top-level group is a case::

    /<case_id>/series     float32 [T, RO, E1]  motion-corrected frames, PD frames first
    /<case_id>/times_s    float32 [T]          frame times in seconds, finite, strictly increasing
    /<case_id>/mask       uint8   [RO, E1]     optional: 0 background, 1 LV, 2 RV
    attrs on /<case_id>:  patient_id (str), n_pd_frames (int, 0 <= n < T - 1),
                          optional site (str), scanner (str), field_T (number > 0), stress (bool)
    optional, from DICOM: sop_instance_uids (str [T], the source image of each frame, in frame
                          order), study_instance_uid, series_instance_uid,
                          frame_of_reference_uid, series_description, series_number,
                          manufacturer (str); image_position_patient (3), image_orientation_patient
                          (6), pixel_spacing_mm (2), slice_location_mm (numbers, DICOM plane of
                          the source frames); transposed (bool: frames stored [columns, rows] of
                          the DICOM images, so that RO comes first); times_source, pd_frames,
                          pixel_scaling, identifiers, label_source (str); see
                          :mod:`formats.dicom.importer`

Extra datasets and attrs are allowed and ignored (phantoms add ``truth_*`` datasets).
``times_s`` may also be float64 (more precision is harmless); ``series`` must be float32 and
``mask`` uint8 with at least one LV pixel. At least 2 saturation-recovery frames are required
(``n_pd_frames <= T - 2``), since preprocessing interpolates in time. Any violation raises
:class:`AIFContractError` whose message names the file, the case, the key, what was expected and
what was found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from formats.contract_errors import ContractError, is_int, is_real, located, plain

__all__ = [
    "AIFCase",
    "AIFCaseInfo",
    "AIFContractError",
    "open_aif_file",
    "read_aif_case",
    "scan_aif_file",
    "write_aif_case",
]

MASK_VALUES = (0, 1, 2)


class AIFContractError(ContractError):
    """An AIF file breaks the data contract; the message names file, case, key, expected, found."""


def _error(
    path: Any, case_id: str | None, key: str | None, expected: str, found: str
) -> AIFContractError:
    where = located(path, case_id, key=key)
    return AIFContractError(f"{where}: expected {expected}; found {found}")


@dataclass(frozen=True)
class AIFCaseInfo:
    """Structure of one case, checked without reading pixel data.

    Attributes:
        case_id: group name.
        patient_id: patient identifier (splits are by patient).
        n_frames: T, number of frames including PD frames.
        shape: (RO, E1) frame shape in pixels.
        has_mask: whether a ``mask`` dataset is present.
        attrs: all attrs of the case group as plain Python values (incl. n_pd_frames).
    """

    case_id: str
    patient_id: str
    n_frames: int
    shape: tuple[int, int]
    has_mask: bool
    attrs: dict


@dataclass(frozen=True)
class AIFCase:
    """One case read into memory.

    Attributes:
        case_id: group name.
        patient_id: patient identifier.
        series: float32 [T, RO, E1], finite.
        times_s: float64 [T] seconds, finite, strictly increasing.
        n_pd_frames: leading proton-density frames, 0 <= n <= T - 2.
        mask: uint8 [RO, E1] with values in {0, 1, 2}, or None.
        attrs: all attrs of the case group as plain Python values.
    """

    case_id: str
    patient_id: str
    series: np.ndarray
    times_s: np.ndarray
    n_pd_frames: int
    mask: np.ndarray | None
    attrs: dict


def _dataset(
    group: h5py.Group, path: Any, case_id: str, key: str, required: bool
) -> h5py.Dataset | None:
    obj = group.get(key)
    if obj is None:
        if required:
            raise _error(path, case_id, key, "a dataset", "nothing (missing)")
        return None
    if not isinstance(obj, h5py.Dataset):
        raise _error(path, case_id, key, "a dataset", type(obj).__name__)
    return obj


def _check_case(
    group: h5py.Group, path: Any, case_id: str, require_mask: bool
) -> tuple[AIFCaseInfo, np.ndarray]:
    """Check one case group's structure; returns its info and times_s (float64 [T])."""
    series = _dataset(group, path, case_id, "series", required=True)
    if series.ndim != 3 or 0 in series.shape:
        raise _error(path, case_id, "series", "non-empty [T, RO, E1]", f"shape {series.shape}")
    if not (series.dtype.kind == "f" and series.dtype.itemsize == 4):
        raise _error(path, case_id, "series", "dtype float32", f"dtype {series.dtype}")
    n_t, ro, e1 = series.shape

    times = _dataset(group, path, case_id, "times_s", required=True)
    if times.shape != (n_t,):
        raise _error(path, case_id, "times_s", f"shape ({n_t},) (one per frame)", f"{times.shape}")
    if not (times.dtype.kind == "f" and times.dtype.itemsize >= 4):
        raise _error(path, case_id, "times_s", "dtype float32 (or float64)", f"dtype {times.dtype}")
    times_s = np.asarray(times[()], dtype=np.float64)
    if not np.isfinite(times_s).all():
        raise _error(path, case_id, "times_s", "finite values", "NaN or Inf")
    steps = np.diff(times_s)
    if not (steps > 0).all():
        i = int(np.argmin(steps > 0))
        raise _error(
            path,
            case_id,
            "times_s",
            "strictly increasing times",
            f"times_s[{i}]={times_s[i]:g} then times_s[{i + 1}]={times_s[i + 1]:g}",
        )

    mask = _dataset(group, path, case_id, "mask", required=require_mask)
    if mask is not None:
        if mask.shape != (ro, e1):
            raise _error(path, case_id, "mask", f"shape {(ro, e1)} (frame shape)", f"{mask.shape}")
        if mask.dtype != np.uint8:
            raise _error(path, case_id, "mask", "dtype uint8", f"dtype {mask.dtype}")

    raw = dict(group.attrs)
    patient_id = raw.get("patient_id")
    if patient_id is None:
        raise _error(path, case_id, "patient_id", "attr patient_id (str)", "nothing (missing)")
    if not isinstance(patient_id, str | bytes) or not plain(patient_id).strip():
        raise _error(path, case_id, "patient_id", "a non-empty str", repr(plain(patient_id)))
    n_pd = raw.get("n_pd_frames")
    if n_pd is None:
        raise _error(path, case_id, "n_pd_frames", "attr n_pd_frames (int)", "nothing (missing)")
    if not is_int(n_pd) or not 0 <= int(n_pd) <= n_t - 2:
        raise _error(
            path,
            case_id,
            "n_pd_frames",
            f"an int in [0, T-2={n_t - 2}] (at least 2 SR frames)",
            f"{plain(n_pd)!r} ({type(n_pd).__name__})",
        )
    for key in ("site", "scanner"):
        if key in raw and not isinstance(raw[key], str | bytes):
            raise _error(path, case_id, key, "a str", f"{plain(raw[key])!r}")
    if "field_T" in raw and not (is_real(raw["field_T"]) and float(raw["field_T"]) > 0):
        raise _error(path, case_id, "field_T", "a number > 0 (tesla)", f"{plain(raw['field_T'])!r}")
    if "sop_instance_uids" in raw:
        uids = plain(raw["sop_instance_uids"])
        if not isinstance(uids, list) or len(uids) != n_t:
            found = f"{len(uids)} UIDs" if isinstance(uids, list) else repr(uids)[:80]
            raise _error(path, case_id, "sop_instance_uids", f"{n_t} UIDs (one per frame)", found)
    if "stress" in raw:
        stress = raw["stress"]
        if not (isinstance(stress, bool | np.bool_) or (is_int(stress) and int(stress) in (0, 1))):
            raise _error(path, case_id, "stress", "a bool", f"{plain(stress)!r}")
    attrs = {k: plain(v) for k, v in raw.items()}
    if "stress" in attrs:
        attrs["stress"] = bool(attrs["stress"])
    info = AIFCaseInfo(
        case_id=case_id,
        patient_id=str(attrs["patient_id"]),
        n_frames=n_t,
        shape=(ro, e1),
        has_mask=mask is not None,
        attrs=attrs,
    )
    return info, times_s


def open_aif_file(path: str | os.PathLike) -> h5py.File:
    """Open an AIF file read-only; a missing or unreadable file is a contract error."""
    if not Path(path).is_file():
        raise _error(path, None, None, "an existing HDF5 file", "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise _error(path, None, None, "a readable HDF5 file", f"{exc}") from exc


def scan_aif_file(path: str | os.PathLike, require_mask: bool = False) -> list[AIFCaseInfo]:
    """Check the structure of every case in an AIF file, reading no pixel data.

    Checks keys, ranks, dtypes, shapes and attrs, and reads ``times_s`` (small) to check that it is
    finite and strictly increasing. NaN/Inf in ``series`` and mask values are checked by
    :func:`read_aif_case`.

    Args:
        path: HDF5 file.
        require_mask: every case must have a ``mask``.

    Returns:
        One :class:`AIFCaseInfo` per case, in file order.

    Raises:
        AIFContractError: missing, unreadable or truncated file, no cases, or any violation.
    """
    with open_aif_file(path) as h5:
        infos = []
        case_id = None
        try:
            for case_id in h5:
                group = h5.get(case_id)
                if not isinstance(group, h5py.Group):
                    raise _error(path, case_id, None, "a case group", type(group).__name__)
                infos.append(_check_case(group, path, case_id, require_mask)[0])
        except OSError as exc:
            raise _error(path, case_id, None, "a readable HDF5 file", f"{exc}") from exc
    if not infos:
        raise _error(path, None, None, "at least one case group", "none")
    return infos


def read_aif_case(
    h5: h5py.File, case_id: str, path_for_errors: Any, require_mask: bool = False
) -> AIFCase:
    """Read and check one case: structure, NaN/Inf in ``series``, mask values in {0, 1, 2}
    with at least one LV pixel.

    Args:
        h5: open file.
        case_id: group name.
        path_for_errors: file name used in error messages.
        require_mask: the case must have a ``mask``.

    Raises:
        AIFContractError: any violation, or an unreadable (e.g. truncated) dataset.
    """
    group = h5.get(case_id)
    if not isinstance(group, h5py.Group):
        found = "nothing (missing)" if group is None else type(group).__name__
        raise _error(path_for_errors, case_id, None, "a case group", found)
    key = "series"
    try:
        info, times_s = _check_case(group, path_for_errors, case_id, require_mask)
        series = np.asarray(group["series"][()], dtype=np.float32)
        key = "mask"
        mask = np.asarray(group["mask"][()]) if info.has_mask else None
    except OSError as exc:
        raise _error(path_for_errors, case_id, key, "readable data", f"{exc}") from exc
    if not np.isfinite(series).all():
        n_bad = int(series.size - np.count_nonzero(np.isfinite(series)))
        raise _error(path_for_errors, case_id, "series", "finite values", f"{n_bad} NaN/Inf")
    if mask is not None and mask.max(initial=0) > max(MASK_VALUES):
        found = sorted(set(np.unique(mask).tolist()) - set(MASK_VALUES))
        raise _error(path_for_errors, case_id, "mask", f"values in {set(MASK_VALUES)}", f"{found}")
    if mask is not None and not (mask == 1).any():  # every labelled scan shows an LV blood pool
        raise _error(path_for_errors, case_id, "mask", "at least one LV pixel (label 1)", "none")
    return AIFCase(
        case_id=case_id,
        patient_id=info.patient_id,
        series=series,
        times_s=times_s,
        n_pd_frames=int(info.attrs["n_pd_frames"]),
        mask=mask,
        attrs=info.attrs,
    )


def write_aif_case(
    h5: h5py.File,
    case_id: str,
    series: np.ndarray,
    times_s: np.ndarray,
    n_pd_frames: int,
    patient_id: str,
    mask: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> AIFCaseInfo:
    """Write one case in the contract's dtypes and check it as a reader would.

    Args:
        h5: file open for writing (inside ``formats.atomic_file.atomic_write``).
        case_id: new group name.
        series: [T, RO, E1] frames, PD frames first (stored float32).
        times_s: [T] frame times, seconds (stored float64).
        n_pd_frames: leading proton-density frames.
        patient_id: patient identifier (already de-identified where required).
        mask: optional [RO, E1] labels 0/1/2 (stored uint8).
        attrs: further case attrs (site, scanner, field_T, stress, provenance); ``None`` values
            are skipped.

    Returns:
        The written case's :class:`AIFCaseInfo`.

    Raises:
        AIFContractError: the written case breaks the contract (named by ``h5.filename``).
    """
    group = h5.create_group(case_id)
    group.create_dataset("series", data=np.asarray(series, dtype=np.float32))
    group.create_dataset("times_s", data=np.asarray(times_s, dtype=np.float64))
    if mask is not None:
        group.create_dataset("mask", data=np.asarray(mask, dtype=np.uint8))
    group.attrs["patient_id"] = str(patient_id)
    group.attrs["n_pd_frames"] = int(n_pd_frames)
    for key, value in (attrs or {}).items():
        if value is not None:
            group.attrs[key] = value
    return _check_case(group, h5.filename, case_id, require_mask=False)[0]
