"""MRD image files -> our HDF5 contracts, so that data acquired inline can train models.

AIF (``modality="aif"``): every image series of every group is one case of the AIF contract
(``<group>_<series>``), frames and times as the server reads them
(:func:`formats.mrd.images.aif_frames`). If the group also holds exactly one label series of our
server (``SeriesDescription`` ``INLINECMR``/``AIF_LV_RV``, one image of the frames' size) and
exactly one frame series, the labels become the case's ``mask`` (the model's labels: check them
before training on them). ``n_pd_frames`` comes from the argument, else the group's JSON
parameters (``configAdditional``), else 0.

Mapping (``t1_native``, ``t2``, ``post_contrast``): every group is one case; every series and
slice one slice group (``series<k>_slice<s>``), images sorted by the meta ``InversionTime`` /
``T2PrepDuration`` (or ``times_ms``) as the server does; ``level`` from ``levels`` in slice order
(default: basal, mid, apical when a series has 3 slices); hematocrit and ``sequence`` from the
arguments or the JSON parameters; geometry attrs from the image header. Our own result series
(``SeriesDescription`` ``INLINECMR``) are skipped.

The patient id is the header's ``patientID`` hashed (SHA-256, 16 hex digits) unless
``keep_identifiers``, else the group name. The output is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from formats.aif_contract import write_aif_case
from formats.atomic_file import atomic_write
from formats.contract_errors import ContractError
from formats.mapping_contract import LEVELS, SEQUENCES, write_mapping_case, write_mapping_slice
from formats.mrd.file import MRDGroup, read_mrd_image_file
from formats.mrd.header import MRDHeaderFacts, header_facts
from formats.mrd.images import aif_frames, dicom_geometry, image_pixels, mapping_slices
from formats.mrd.meta import MetaError, parse_meta
from formats.mrd.stream import ImageMessage

__all__ = ["IMPORT_MODALITIES", "MRDImportError", "import_mrd_file", "modality_of_config"]

IMPORT_MODALITIES = ("aif", "t1_native", "t2", "post_contrast")
_CONFIG_MODALITY = {"inlinecmr_aif": "aif", "inlinecmr_t1": "t1_native", "inlinecmr_t2": "t2"}
_TIME_META = {
    "t1_native": "InversionTime",
    "post_contrast": "InversionTime",
    "t2": "T2PrepDuration",
}


class MRDImportError(ValueError):
    """An MRD file that cannot become a contract file; the message names the file and group."""


def modality_of_config(config: str) -> str | None:
    """The modality a session config implies (``inlinecmr_aif`` -> ``aif``...), else None."""
    return _CONFIG_MODALITY.get(config.strip())


def _parameters(group: MRDGroup) -> dict[str, Any]:
    try:
        document = json.loads(group.parameters) if group.parameters.strip() else {}
    except json.JSONDecodeError:
        return {}
    if not isinstance(document, dict):
        return {}
    nested = document.get("parameters")
    return {**document, **(nested if isinstance(nested, dict) else {})}


def _is_result(images: list[ImageMessage]) -> bool:
    try:
        meta = parse_meta(images[0].attributes)
    except MetaError:
        return False
    return "INLINECMR" in meta.get("SeriesDescription", [])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "group"


def _patient_id(facts: MRDHeaderFacts, group: MRDGroup, keep_identifiers: bool) -> str:
    if facts.patient_id is None:
        return _safe(group.name)
    if keep_identifiers:
        return facts.patient_id
    return hashlib.sha256(facts.patient_id.encode("utf-8")).hexdigest()[:16]


def _label_mask(
    results: list[list[ImageMessage]], frame_shape: tuple[int, ...]
) -> np.ndarray | None:
    labels = [
        s
        for s in results
        if "AIF_LV_RV" in parse_meta(s[0].attributes).get("SeriesDescription", [])
    ]
    if len(labels) != 1 or len(labels[0]) != 1:
        return None
    mask = image_pixels(labels[0][0]).T  # [y, x] -> [RO, E1]
    return mask.astype(np.uint8) if mask.shape == frame_shape else None


def _import_aif(
    h5: h5py.File,
    path: Path,
    group: MRDGroup,
    facts: MRDHeaderFacts,
    patient_id: str,
    n_pd_frames: int | None,
    time_source: str,
) -> list[str]:
    params = _parameters(group)
    inputs = {k: v for k, v in group.series.items() if not _is_result(v)}
    results = [v for v in group.series.values() if _is_result(v)]
    written = []
    for key, images in inputs.items():
        where = f"{path}: /{group.name}/{key}"
        try:
            frames = aif_frames(images, time_source)
            n_pd = int(n_pd_frames if n_pd_frames is not None else params.get("n_pd_frames", 0))
        except ValueError as exc:
            raise MRDImportError(f"{where}: {exc}") from exc
        mask = _label_mask(results, frames.series.shape[1:]) if len(inputs) == 1 else None
        case_id = f"{_safe(group.name)}_{key}"
        write_aif_case(
            h5,
            case_id,
            frames.series,
            frames.times_s,
            n_pd,
            patient_id,
            mask,
            {
                "scanner": facts.scanner,
                "field_T": facts.field_strength_T,
                "source": f"{path.name}:/{group.name}/{key}",
                "time_source": frames.time_source,
            },
        )
        written.append(case_id)
    return written


def _import_mapping(
    h5: h5py.File,
    path: Path,
    group: MRDGroup,
    facts: MRDHeaderFacts,
    patient_id: str,
    modality: str,
    levels: Sequence[str] | None,
    hematocrit: float | None,
    times_ms: Sequence[float] | None,
) -> list[str]:
    params = _parameters(group)
    hct = hematocrit if hematocrit is not None else params.get("hematocrit")
    sequence = str(params.get("sequence", "")).lower()
    inputs = {k: v for k, v in group.series.items() if not _is_result(v)}
    if not inputs:
        return []
    case = write_mapping_case(
        h5, _safe(group.name), patient_id, float(hct) if hct is not None else None
    )
    for key, images in inputs.items():
        where = f"{path}: /{group.name}/{key}"
        try:
            slices = mapping_slices(images, _TIME_META[modality], times_ms)
        except ValueError as exc:
            raise MRDImportError(f"{where}: {exc}") from exc
        slice_levels = (
            list(levels) if levels else (["basal", "mid", "apical"] if len(slices) == 3 else [])
        )
        if len(slice_levels) != len(slices) or not set(slice_levels) <= set(LEVELS):
            raise MRDImportError(
                f"{where}: {len(slices)} slices; give their levels (basal, mid, "
                f"apical) in slice order; found levels {slice_levels}"
            )
        for s, level in zip(slices, slice_levels, strict=True):
            attrs = {
                **dicom_geometry(s.sources[0]),
                "field_strength_T": facts.field_strength_T,
                "manufacturer": facts.vendor,
                "sequence": sequence if sequence in SEQUENCES else None,
            }
            write_mapping_slice(
                case,
                f"{key.replace('image_', 'series')}_slice{s.slice_index}",
                s.images,
                s.times_ms,
                modality,
                level,
                attrs=attrs,
            )
    return [case.name.strip("/")]


def import_mrd_file(
    path: str | os.PathLike,
    output: str | os.PathLike,
    modality: str | None = None,
    *,
    n_pd_frames: int | None = None,
    time_source: str = "auto",
    levels: Sequence[str] | None = None,
    hematocrit: float | None = None,
    times_ms: Sequence[float] | None = None,
    keep_identifiers: bool = False,
) -> list[str]:
    """Convert an MRD image file into one contract file (module docstring).

    Args:
        path: the MRD file.
        output: the contract file to write (replaced atomically).
        modality: one of :data:`IMPORT_MODALITIES`; None: from the file's config
            (``inlinecmr_aif`` -> aif, ``inlinecmr_t1`` -> t1_native, ``inlinecmr_t2`` -> t2).
        n_pd_frames, time_source: AIF frames (module docstring).
        levels, hematocrit, times_ms: mapping slices (module docstring).
        keep_identifiers: keep the header's patient id instead of its hash.

    Returns:
        The case ids written.

    Raises:
        MRDFileError, MRDImportError: unreadable input, unknown modality, images that break
            the contract (the message names the file, group and series).
    """
    path = Path(path)
    groups = read_mrd_image_file(path)
    if modality is None:
        found = {modality_of_config(g.config) for g in groups} - {None}
        if len(found) != 1:
            raise MRDImportError(
                f"{path}: cannot tell the modality from the configs "
                f"{sorted({g.config for g in groups})}; give one of "
                f"{IMPORT_MODALITIES}"
            )
        modality = found.pop()
    if modality not in IMPORT_MODALITIES:
        raise MRDImportError(f"modality {modality!r}; expected one of {IMPORT_MODALITIES}")
    written: list[str] = []
    with atomic_write(output) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["source"] = str(path)
        for group in groups:
            facts = header_facts(group.xml)
            patient_id = _patient_id(facts, group, keep_identifiers)
            try:
                if modality == "aif":
                    written += _import_aif(
                        h5, path, group, facts, patient_id, n_pd_frames, time_source
                    )
                else:
                    written += _import_mapping(
                        h5, path, group, facts, patient_id, modality, levels, hematocrit, times_ms
                    )
            except ContractError as exc:  # names the temporary file: name the source instead
                detail = str(exc).split(": ", 1)[-1]
                raise MRDImportError(f"{path}: /{group.name}: {detail}") from exc
    return written
