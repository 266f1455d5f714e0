"""Reader for the myocardial mapping HDF5 data contract (docs/data_contracts.md).

One file per modality; top-level groups are cases, their sub-groups are slices::

    /<case_id>/<slice_id>/images   float32 [N, H, W]  weighted images of one slice, N >= 2, finite
    /<case_id>/<slice_id>/masks    uint8   [N, H, W]  optional label per image: 0 / 1 (myocardium)
    /<case_id>/<slice_id>/ti_ms    float   [N]        T1 modalities: inversion times, ms
    /<case_id>/<slice_id>/te_ms    float   [N]        T2: T2-prep echo times, ms
    attrs on /<case_id>:           patient_id (non-empty str), hematocrit (optional, 0 < Hct < 1)
    attrs on the slice:            level (basal | mid | apical),
                                   modality (t1_native | t2 | post_contrast)
    optional on the slice:         sequence attr (stone | molli | shmolli | sasha | look_locker |
                                   t2prep); reference_t1_ms | reference_t2_ms float [H, W] (the
                                   scanner's own map, never a weighted image); geometry and
                                   provenance attrs (:data:`GEOMETRY_ATTRS`), sop_instance_uids
                                   (str [N], the source image of each weighted image)

A slice holds exactly one of ``ti_ms`` (modalities ``t1_native``, ``post_contrast``) and ``te_ms``
(``t2``): float32 or float64, finite, >= 0 and strictly increasing. One exception: a slice with
``sequence = "sasha"`` may end with ``+inf``, the time of SASHA's non-saturated image (no
saturation pulse: fully relaxed, ``exp(-inf / T1) = 0``), stored last like any longest time.
``ti_ms`` holds saturation times for SASHA. Extra datasets, groups and
attrs are allowed and ignored by the checks (the phantoms add a ``truth`` group, see
:func:`read_mapping_truth`). Any violation raises :class:`MappingContractError` whose message
names the file, the case, the slice, the key, what was expected and what was found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from formats.contract_errors import ContractError, is_real, located, plain

__all__ = [
    "LEVELS",
    "MODALITIES",
    "GEOMETRY_ATTRS",
    "REFERENCE_KEYS",
    "SEQUENCES",
    "TIME_KEY",
    "MappingContractError",
    "MappingSlice",
    "MappingSliceInfo",
    "open_mapping_file",
    "read_mapping_image",
    "read_mapping_slice",
    "read_mapping_truth",
    "scan_mapping_file",
    "write_mapping_case",
    "write_mapping_slice",
]

MODALITIES = ("t1_native", "t2", "post_contrast")
LEVELS = ("basal", "mid", "apical")
TIME_KEY = {"t1_native": "ti_ms", "post_contrast": "ti_ms", "t2": "te_ms"}
MASK_VALUES = (0, 1)
MIN_IMAGES = 2
SEQUENCES = ("stone", "molli", "shmolli", "sasha", "look_locker", "t2prep")
"""Values of the optional slice attr ``sequence`` (how the weighted images were prepared)."""
REFERENCE_KEYS = {"t1_native": "reference_t1_ms", "post_contrast": "reference_t1_ms",
                  "t2": "reference_t2_ms"}  # fmt: skip
"""The optional dataset holding the scanner's own map of a slice, per modality."""
GEOMETRY_ATTRS = {
    "image_position_patient": 3,  # mm, DICOM patient coordinates of the first pixel's centre
    "image_orientation_patient": 6,  # row and column direction cosines
    "pixel_spacing_mm": 2,  # row spacing (between rows), column spacing, mm
    "slice_location_mm": 1,  # position along the slice normal, mm
    "field_strength_T": 1,
}
"""Optional numeric slice attrs (name: number of values) kept from DICOM or MRD."""


class MappingContractError(ContractError):
    """A mapping file breaks the data contract; the message names file, case, slice, key,
    expected and found."""


def _error(
    path: Any,
    case_id: str | None,
    slice_id: str | None,
    key: str | None,
    expected: str,
    found: str,
) -> MappingContractError:
    where = located(path, case_id, slice_id, key)
    return MappingContractError(f"{where}: expected {expected}; found {found}")


@dataclass(frozen=True)
class MappingSliceInfo:
    """Structure of one slice, checked without reading pixel data.

    Attributes:
        case_id, slice_id: group names.
        patient_id: patient identifier (splits are by patient).
        modality: ``t1_native`` | ``t2`` | ``post_contrast``.
        level: ``basal`` | ``mid`` | ``apical``.
        n_images: N weighted images.
        shape: (H, W) image shape in pixels.
        time_key: ``ti_ms`` or ``te_ms``.
        times_ms: float64 [N] inversion / echo times, ms.
        has_masks: whether a ``masks`` dataset is present.
        hematocrit: fraction in (0, 1), or None when the case has none.
        attrs: the slice's attrs as plain Python values.
        case_attrs: the case's attrs as plain Python values.
    """

    case_id: str
    slice_id: str
    patient_id: str
    modality: str
    level: str
    n_images: int
    shape: tuple[int, int]
    time_key: str
    times_ms: np.ndarray
    has_masks: bool
    hematocrit: float | None
    attrs: dict
    case_attrs: dict


@dataclass(frozen=True)
class MappingSlice:
    """One slice read into memory and checked.

    Attributes:
        info: its :class:`MappingSliceInfo`.
        images: float32 [N, H, W], finite.
        masks: uint8 [N, H, W] with values in {0, 1}, or None.
        reference_ms: float32 [H, W] the scanner's own T1 or T2 map (ms), or None.
    """

    info: MappingSliceInfo
    images: np.ndarray
    masks: np.ndarray | None
    reference_ms: np.ndarray | None = None

    @property
    def times_ms(self) -> np.ndarray:
        """float64 [N] inversion (T1) or T2-prep echo (T2) times, ms."""
        return self.info.times_ms


def _check_case_attrs(group: h5py.Group, path: Any, case_id: str) -> tuple[str, float | None, dict]:
    raw = dict(group.attrs)
    patient_id = raw.get("patient_id")
    if patient_id is None:
        raise _error(
            path, case_id, None, "patient_id", "attr patient_id (str)", "nothing (missing)"
        )
    if not isinstance(patient_id, str | bytes) or not str(plain(patient_id)).strip():
        raise _error(path, case_id, None, "patient_id", "a non-empty str", repr(plain(patient_id)))
    hct = raw.get("hematocrit")
    if hct is not None and not (is_real(hct) and 0 < float(hct) < 1):
        raise _error(
            path, case_id, None, "hematocrit", "a number in (0, 1) (fraction)", repr(plain(hct))
        )
    attrs = {k: plain(v) for k, v in raw.items()}
    return str(attrs["patient_id"]), (None if hct is None else float(hct)), attrs


def _dataset(
    group: h5py.Group, path: Any, case_id: str, slice_id: str, key: str, required: bool
) -> h5py.Dataset | None:
    obj = group.get(key)
    if obj is None:
        if required:
            raise _error(path, case_id, slice_id, key, "a dataset", "nothing (missing)")
        return None
    if not isinstance(obj, h5py.Dataset):
        raise _error(path, case_id, slice_id, key, "a dataset", type(obj).__name__)
    return obj


def _check_slice(
    group: h5py.Group,
    path: Any,
    case_id: str,
    slice_id: str,
    case: tuple[str, float | None, dict],
    modality: str | None,
    require_masks: bool,
) -> MappingSliceInfo:
    """Check one slice group's structure (reads only the small time vector)."""
    err = lambda key, expected, found: _error(path, case_id, slice_id, key, expected, found)  # noqa: E731
    images = _dataset(group, path, case_id, slice_id, "images", required=True)
    if images.ndim != 3 or 0 in images.shape:
        raise err("images", "non-empty [N, H, W]", f"shape {images.shape}")
    if not (images.dtype.kind == "f" and images.dtype.itemsize == 4):
        raise err("images", "dtype float32", f"dtype {images.dtype}")
    n, height, width = images.shape
    if n < MIN_IMAGES:
        raise err("images", f"at least {MIN_IMAGES} weighted images (N >= {MIN_IMAGES})", f"N={n}")

    masks = _dataset(group, path, case_id, slice_id, "masks", required=require_masks)
    if masks is not None:
        if masks.shape != images.shape:
            raise err("masks", f"shape {images.shape} (one mask per image)", f"{masks.shape}")
        if masks.dtype != np.uint8:
            raise err("masks", "dtype uint8", f"dtype {masks.dtype}")

    raw = dict(group.attrs)
    found_modality = plain(raw.get("modality"))
    if found_modality not in MODALITIES:
        found = "nothing (missing)" if found_modality is None else repr(found_modality)
        raise err("modality", f"attr modality, one of {MODALITIES}", found)
    if modality is not None and found_modality != modality:
        raise err("modality", f"modality {modality!r} (the data set read)", repr(found_modality))
    level = plain(raw.get("level"))
    if level not in LEVELS:
        found = "nothing (missing)" if level is None else repr(level)
        raise err("level", f"attr level, one of {LEVELS}", found)

    time_key = TIME_KEY[found_modality]
    other = "te_ms" if time_key == "ti_ms" else "ti_ms"
    if other in group:
        raise err(other, f"only {time_key!r} for modality {found_modality!r}", f"{other!r} present")
    times = _dataset(group, path, case_id, slice_id, time_key, required=True)
    if times.shape != (n,):
        raise err(time_key, f"shape ({n},) (one time per image)", f"{times.shape}")
    if not (times.dtype.kind == "f" and times.dtype.itemsize >= 4):
        raise err(time_key, "dtype float32 (or float64)", f"dtype {times.dtype}")
    times_ms = np.asarray(times[()], dtype=np.float64)
    finite = np.isfinite(times_ms)
    if plain(raw.get("sequence")) == "sasha" and n > 1:  # the non-saturated image: +inf, last
        finite[-1] |= times_ms[-1] == np.inf
    if not finite.all():
        expected = "finite values (ms)" + (
            "; +inf only as the last time of a sequence='sasha' slice"
            if np.isposinf(times_ms).any() else ""
        )  # fmt: skip
        raise err(time_key, expected, f"NaN or Inf in {times_ms.tolist()}")
    if times_ms.min() < 0:
        raise err(time_key, "times >= 0 ms", f"{times_ms.min():g}")
    steps = np.diff(times_ms)
    if not (steps > 0).all():
        i = int(np.argmin(steps > 0))
        raise err(
            time_key,
            "strictly increasing times",
            f"{time_key}[{i}]={times_ms[i]:g} then {time_key}[{i + 1}]={times_ms[i + 1]:g}",
        )
    _check_optional(group, raw, err, found_modality, images.shape)
    patient_id, hct, case_attrs = case
    return MappingSliceInfo(
        case_id=case_id,
        slice_id=slice_id,
        patient_id=patient_id,
        modality=str(found_modality),
        level=str(level),
        n_images=n,
        shape=(height, width),
        time_key=time_key,
        times_ms=times_ms,
        has_masks=masks is not None,
        hematocrit=hct,
        attrs={k: plain(v) for k, v in raw.items()},
        case_attrs=case_attrs,
    )


def _check_optional(
    group: h5py.Group, raw: dict, err: Any, modality: str, shape: tuple[int, int, int]
) -> None:
    """The optional slice attrs and the reference map, when present."""
    sequence = plain(raw.get("sequence"))
    if sequence is not None and sequence not in SEQUENCES:
        raise err("sequence", f"one of {SEQUENCES} (or no attr when unknown)", repr(sequence))
    for key, size in GEOMETRY_ATTRS.items():
        if key in raw:
            values = np.atleast_1d(np.asarray(raw[key]))
            if values.shape != (size,) or values.dtype.kind not in "iuf":
                raise err(key, f"{size} number(s)", repr(plain(raw[key])))
            if not np.isfinite(values).all() or (key.endswith(("_mm", "_T")) and
                                                   key != "slice_location_mm" and
                                                   (values <= 0).any()):  # fmt: skip
                raise err(key, "finite (and positive) values", repr(plain(raw[key])))
    if "sop_instance_uids" in raw:
        uids = plain(raw["sop_instance_uids"])
        if not isinstance(uids, list) or len(uids) != shape[0]:
            raise err("sop_instance_uids", f"{shape[0]} UIDs (one per image)", repr(uids)[:80])
    reference = REFERENCE_KEYS[modality]
    wrong = set(REFERENCE_KEYS.values()) - {reference}
    for key in wrong & set(group):
        raise err(key, f"only {reference!r} for modality {modality!r}", f"{key!r} present")
    if reference in group:
        ref = group[reference]
        if not isinstance(ref, h5py.Dataset) or ref.shape != shape[1:] or ref.dtype.kind != "f":
            found = f"{getattr(ref, 'shape', None)} {getattr(ref, 'dtype', type(ref).__name__)}"
            raise err(reference, f"float [{shape[1]}, {shape[2]}] (the scanner's map, ms)", found)


def open_mapping_file(path: str | os.PathLike) -> h5py.File:
    """Open a mapping file read-only; a missing or unreadable file is a contract error."""
    if not Path(path).is_file():
        raise _error(path, None, None, None, "an existing HDF5 file", "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise _error(path, None, None, None, "a readable HDF5 file", f"{exc}") from exc


def _slice_groups(h5: h5py.File, path: Any, case_id: str) -> tuple[h5py.Group, list[str]]:
    case = h5.get(case_id)
    if not isinstance(case, h5py.Group):
        found = "nothing (missing)" if case is None else type(case).__name__
        raise _error(path, case_id, None, None, "a case group", found)
    slice_ids = [k for k in case if isinstance(case.get(k), h5py.Group)]
    if not slice_ids:
        raise _error(path, case_id, None, None, "at least one slice group", "none")
    return case, slice_ids


def scan_mapping_file(
    path: str | os.PathLike, modality: str | None = None, require_masks: bool = False
) -> list[MappingSliceInfo]:
    """Check the structure of every slice of a mapping file, reading no pixel data.

    Checks keys, ranks, dtypes, shapes and attrs, and reads the time vectors (small) to check
    that they are finite, >= 0 and strictly increasing. NaN/Inf in ``images`` and mask values
    are checked when the pixels are read (:func:`read_mapping_slice`, :func:`read_mapping_image`).

    Args:
        path: HDF5 file.
        modality: every slice must have this modality attr (None: any of :data:`MODALITIES`).
        require_masks: every slice must have ``masks``.

    Returns:
        One :class:`MappingSliceInfo` per slice, in file order (cases, then their slices).

    Raises:
        MappingContractError: missing, unreadable or truncated file, no cases, or any violation.
    """
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    infos: list[MappingSliceInfo] = []
    with open_mapping_file(path) as h5:
        case_id = slice_id = None
        try:
            for case_id in h5:
                case, slice_ids = _slice_groups(h5, path, case_id)
                case_info = _check_case_attrs(case, path, case_id)
                for slice_id in slice_ids:
                    infos.append(
                        _check_slice(
                            case[slice_id],
                            path,
                            case_id,
                            slice_id,
                            case_info,
                            modality,
                            require_masks,
                        )  # fmt: skip
                    )
                slice_id = None
        except OSError as exc:
            raise _error(path, case_id, slice_id, None, "a readable HDF5 file", f"{exc}") from exc
    if not infos:
        raise _error(path, None, None, None, "at least one case group", "none")
    return infos


def _slice_info(
    h5: h5py.File, case_id: str, slice_id: str, path: Any, modality: str | None, require_masks: bool
) -> tuple[h5py.Group, MappingSliceInfo]:
    case = h5.get(case_id)
    if not isinstance(case, h5py.Group):
        found = "nothing (missing)" if case is None else type(case).__name__
        raise _error(path, case_id, None, None, "a case group", found)
    group = case.get(slice_id)
    if not isinstance(group, h5py.Group):
        found = "nothing (missing)" if group is None else type(group).__name__
        raise _error(path, case_id, slice_id, None, "a slice group", found)
    info = _check_slice(
        group, path, case_id, slice_id, _check_case_attrs(case, path, case_id), modality,
        require_masks,
    )  # fmt: skip
    return group, info


def _check_pixels(
    path: Any, info: MappingSliceInfo, images: np.ndarray, masks: np.ndarray | None, what: str
) -> None:
    if not np.isfinite(images).all():
        n_bad = int(images.size - np.count_nonzero(np.isfinite(images)))
        raise _error(
            path, info.case_id, info.slice_id, "images", "finite values", f"{n_bad} NaN/Inf{what}"
        )
    if masks is not None and masks.max(initial=0) > max(MASK_VALUES):
        found = sorted(set(np.unique(masks).tolist()) - set(MASK_VALUES))
        raise _error(
            path, info.case_id, info.slice_id, "masks", "values in {0, 1}", f"values {found}{what}"
        )


def read_mapping_slice(
    h5: h5py.File,
    case_id: str,
    slice_id: str,
    path_for_errors: Any,
    modality: str | None = None,
    require_masks: bool = False,
) -> MappingSlice:
    """Read and check one slice: structure, NaN/Inf in ``images``, mask values in {0, 1}.

    Args:
        h5: open file (:func:`open_mapping_file`).
        case_id, slice_id: group names.
        path_for_errors: file name used in error messages.
        modality: the slice must have this modality (None: any).
        require_masks: the slice must have ``masks``.

    Raises:
        MappingContractError: any violation, or an unreadable (e.g. truncated) dataset.
    """
    key = None
    try:
        group, info = _slice_info(h5, case_id, slice_id, path_for_errors, modality, require_masks)
        key = "images"
        images = np.asarray(group["images"][()], dtype=np.float32)
        key = "masks"
        masks = np.asarray(group["masks"][()]) if info.has_masks else None
        key = REFERENCE_KEYS[info.modality]
        reference = group.get(key)
        reference = None if reference is None else np.asarray(reference[()], dtype=np.float32)
    except OSError as exc:
        raise _error(path_for_errors, case_id, slice_id, key, "readable data", f"{exc}") from exc
    _check_pixels(path_for_errors, info, images, masks, "")
    return MappingSlice(info=info, images=images, masks=masks, reference_ms=reference)


def read_mapping_image(
    h5: h5py.File, info: MappingSliceInfo, index: int, path_for_errors: Any
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one weighted image of a slice already checked by :func:`scan_mapping_file`.

    Returns:
        image float32 [H, W] (finite) and its mask uint8 [H, W] in {0, 1} (None without masks).

    Raises:
        MappingContractError: NaN/Inf, bad mask values, an unreadable dataset or a slice that
        changed since the scan (missing group or other shape).
    """
    if not 0 <= index < info.n_images:
        raise IndexError(f"image {index} of {info.n_images} in {info.case_id}/{info.slice_id}")
    key = None
    try:
        group = h5.get(f"{info.case_id}/{info.slice_id}")
        if not isinstance(group, h5py.Group):
            raise _error(
                path_for_errors, info.case_id, info.slice_id, None, "a slice group", "none"
            )
        key = "images"
        images = group.get("images")
        if not isinstance(images, h5py.Dataset) or images.shape[1:] != info.shape:
            found = "nothing" if images is None else f"{getattr(images, 'shape', images)}"
            raise _error(
                path_for_errors, info.case_id, info.slice_id, "images",
                f"[N, {info.shape[0]}, {info.shape[1]}] as scanned", found,
            )  # fmt: skip
        image = np.asarray(images[index], dtype=np.float32)
        key = "masks"
        mask = np.asarray(group["masks"][index]) if info.has_masks else None
    except OSError as exc:
        raise _error(
            path_for_errors, info.case_id, info.slice_id, key, "readable data", f"{exc}"
        ) from exc
    _check_pixels(path_for_errors, info, image, mask, f" in image {index}")
    return image, mask


def read_mapping_truth(h5: h5py.File, case_id: str, slice_id: str) -> dict[str, np.ndarray]:
    """The phantoms' ground truth of a slice: ``{name: array}`` of its ``truth`` group
    (``labels``, ``t1_ms`` | ``t2_ms``, ``ecv_percent``, ``shift_px``, ``rotation_deg``; see
    :mod:`datamodules.synthetic.mapping_phantom`); empty when the slice has no truth."""
    group = h5.get(f"{case_id}/{slice_id}/truth")
    if not isinstance(group, h5py.Group):
        return {}
    return {k: np.asarray(v[()]) for k, v in group.items() if isinstance(v, h5py.Dataset)}


def write_mapping_case(
    h5: h5py.File, case_id: str, patient_id: str, hematocrit: float | None = None,
    attrs: dict[str, Any] | None = None,
) -> h5py.Group:  # fmt: skip
    """Create a case group with its attrs (``None`` values skipped); slices go in with
    :func:`write_mapping_slice`."""
    group = h5.create_group(case_id)
    group.attrs["patient_id"] = str(patient_id)
    for key, value in {"hematocrit": hematocrit, **(attrs or {})}.items():
        if value is not None:
            group.attrs[key] = value
    _check_case_attrs(group, h5.filename, case_id)
    return group


def write_mapping_slice(
    case: h5py.Group,
    slice_id: str,
    images: np.ndarray,
    times_ms: np.ndarray,
    modality: str,
    level: str,
    masks: np.ndarray | None = None,
    reference_ms: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> MappingSliceInfo:
    """Write one slice in the contract's dtypes and check it as a reader would.

    Args:
        case: the case group (:func:`write_mapping_case`).
        slice_id: new group name.
        images: [N, H, W] weighted images (stored float32), in the order of ``times_ms``.
        times_ms: [N] inversion / saturation times (T1 modalities; SASHA's non-saturated image:
            ``+inf``, last) or T2-prep times (T2), ms.
        modality: one of :data:`MODALITIES`; level: one of :data:`LEVELS`.
        masks: optional [N, H, W] myocardium labels 0/1 (stored uint8, lzf-compressed).
        reference_ms: optional [H, W] scanner map (stored as ``reference_t1_ms`` or
            ``reference_t2_ms``).
        attrs: further slice attrs (``sequence``, geometry, provenance); ``None`` values skipped.

    Raises:
        MappingContractError: the written slice breaks the contract.
    """
    group = case.create_group(slice_id)
    images = np.asarray(images, dtype=np.float32)
    group.create_dataset("images", data=images)
    group.create_dataset(TIME_KEY.get(modality, "ti_ms"), data=np.asarray(times_ms, np.float64))
    if masks is not None:
        group.create_dataset("masks", data=np.asarray(masks, dtype=np.uint8), compression="lzf")
    if reference_ms is not None and modality in REFERENCE_KEYS:
        group.create_dataset(REFERENCE_KEYS[modality], data=np.asarray(reference_ms, np.float32))
    for key, value in {"modality": modality, "level": level, **(attrs or {})}.items():
        if value is not None:
            group.attrs[key] = value
    path, case_id = case.file.filename, case.name.strip("/")
    return _check_slice(group, path, case_id, slice_id, _check_case_attrs(case, path, case_id),
                        None, False)  # fmt: skip
