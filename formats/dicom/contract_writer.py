"""Writing one planned DICOM series into a contract file: pixels in real-world units, labels,
geometry and provenance attrs, with the contracts' checked writers (:func:`write_aif_case`,
:func:`write_mapping_slice`); a perfusion imaging series with the AIF series of its study as a
dual-sequence case of :mod:`formats.perfusion_contract`. Attributes written besides the
contracts' own are listed in :mod:`formats.dicom.importer`.
"""

from __future__ import annotations

import h5py
import numpy as np

from formats.aif_contract import write_aif_case
from formats.contract_errors import ContractError
from formats.dicom.files import text_of
from formats.dicom.labels import LV, MYOCARDIUM, RV, LabelError, LabelSource, LabelTarget
from formats.dicom.layout import aif_case_ids, study_tag
from formats.dicom.pixels import read_pixels, scaling_of
from formats.dicom.series_plan import PlannedSeries, PlannedSlice
from formats.dicom.timing import float_of
from formats.mapping_contract import write_mapping_case, write_mapping_slice
from formats.perfusion_contract import PerfusionContractError

__all__ = [
    "mapping_case_id",
    "read_slice",
    "write_aif_series",
    "write_mapping_slices",
    "write_perfusion_series",
]


def _slice_labels(
    sources: list[LabelSource], target: LabelTarget, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(labels [N, H, W], covered [N], the sources used): each image takes its label from the
    first source that covers it (e.g. one DICOM SEG per image)."""
    labels = covered = None
    used = []
    for source in sources:
        try:
            found = source.labels_for(target)
        except LabelError as exc:
            notes.append(str(exc))
            continue
        if found is None:
            continue
        if labels is None:
            labels, covered = found[0].copy(), found[1].copy()
        else:
            new = found[1] & ~covered
            labels[new], covered = found[0][new], covered | found[1]
            if not new.any():
                continue
        used.append(str(source.path))
    if labels is None:
        return None
    return (
        labels,
        covered,
        ", ".join(used) if len(used) <= 2 else f"{used[0]} and {len(used) - 1} more",
    )


def _geometry_attrs(planned: PlannedSlice) -> dict:
    g = planned.geometry
    return {
        "image_position_patient": g.position.astype(np.float64),
        "image_orientation_patient": g.orientation.astype(np.float64),
        "pixel_spacing_mm": g.spacing_mm.astype(np.float64),
        "slice_location_mm": float(g.distance_mm),
    }


def _provenance_attrs(series: PlannedSeries, planned: PlannedSlice) -> dict:
    header = series.header
    frame = text_of(planned.files[0].header, "FrameOfReferenceUID")
    return {
        "manufacturer": text_of(header, "Manufacturer") or None,
        "scanner": text_of(header, "ManufacturerModelName") or None,
        "series_description": text_of(header, "SeriesDescription") or None,
        "series_number": text_of(header, "SeriesNumber") or None,
        "series_instance_uid": series.uid,
        "frame_of_reference_uid": frame or None,
        "sop_instance_uids": np.array(planned.sop_instance_uids, dtype=h5py.string_dtype()),
        "times_source": planned.time_source,
        "pixel_scaling": scaling_of(planned.files[0].header, series.vendor, is_map=False).rule,
    }


def read_slice(
    series: PlannedSeries, planned: PlannedSlice
) -> tuple[np.ndarray, np.ndarray | None]:
    """(images float32 [N, H, W], the scanner's map [H, W] or None) of one planned slice.

    Raises:
        PixelError: an image that cannot be read (the message names the file).
    """
    images = np.stack(
        [read_pixels(f.path, f.header, series.vendor, is_map=False) for f in planned.files]
    )
    reference = None
    if planned.reference_map is not None:
        m = planned.reference_map
        reference = read_pixels(m.path, m.header, series.vendor, is_map=True)
    return images, reference


def _transposed(series: PlannedSeries) -> bool:
    """Whether AIF frames are stored transposed, [columns, rows]: the contract's frames are
    [RO, E1] and ``InPlanePhaseEncodingDirection`` COL puts the phase encoding (E1) along the
    rows."""
    return text_of(series.header, "InPlanePhaseEncodingDirection").upper() == "COL"


def _aif_mask(labels: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """uint8 [H, W] 0/1/2: per pixel the label most of the labelled frames give."""
    frames = labels[covered]
    counts = np.stack([(frames == v).sum(0) for v in (0, LV, RV)])
    return np.array([0, 1, 2], np.uint8)[np.argmax(counts, axis=0)]


def _target(series: PlannedSeries, planned: PlannedSlice) -> LabelTarget:
    return LabelTarget(
        sop_instance_uids=tuple(planned.sop_instance_uids),
        geometry=planned.geometry,
        frame_of_reference_uid=text_of(planned.files[0].header, "FrameOfReferenceUID"),
        name=f"series {text_of(series.header, 'SeriesNumber')} at "
        f"{planned.geometry.distance_mm:.1f} mm",
    )


def _lv_rv_mask(sources: list[LabelSource], series: PlannedSeries, planned: PlannedSlice,
                case_id: str, attrs: dict, notes: list[str]) -> np.ndarray | None:  # fmt: skip
    """The AIF case's mask [RO, E1] from the label sources (``label_source`` put in ``attrs``),
    or None."""
    found = _slice_labels(sources, _target(series, planned), notes)
    if found is None:
        return None
    labels, covered, source = found
    mask = _aif_mask(labels, covered)
    if not (mask == LV).any():
        notes.append(f"{source}: no LV pixel in the labels of {case_id}; not stored")
        return None
    attrs["label_source"] = source
    return mask.T if _transposed(series) else mask


def _aif_attrs(series: PlannedSeries, planned: PlannedSlice, patient: dict) -> dict:
    return {
        **{k: v for k, v in patient.items() if k != "patient_id"},
        **_geometry_attrs(planned),
        **_provenance_attrs(series, planned),
        "study_instance_uid": text_of(series.header, "StudyInstanceUID") or None,
        "field_T": float_of(series.header, "MagneticFieldStrength"),
        "pd_frames": "marked" if planned.n_pd_frames else "none marked",
        "transposed": _transposed(series),
    }


def write_aif_series(
    h5: h5py.File, series: PlannedSeries, patient: dict, sources: list[LabelSource],
    notes: list[str],
) -> list[str]:  # fmt: skip
    """Write every slice of a perfusion series as an AIF case; returns the case ids.

    Args:
        h5: the open output file.
        series: the planned series.
        patient: identifier attrs (:func:`formats.dicom.identifiers.identifier_attrs`).
        sources: label sources; notes: remarks for the summary are appended here.

    Raises:
        PixelError: an unreadable image (nothing of the series is written).
        ContractError: a case breaks the contract (its group is removed).
    """
    case_ids = aif_case_ids(series, patient["patient_id"])
    transposed = _transposed(series)
    loaded = [read_slice(series, planned)[0] for planned in series.slices]
    written = []
    for case_id, planned, frames in zip(case_ids, series.slices, loaded, strict=True):
        attrs = _aif_attrs(series, planned, patient)
        mask = _lv_rv_mask(sources, series, planned, case_id, attrs, notes)
        try:
            write_aif_case(
                h5, case_id, np.swapaxes(frames, 1, 2) if transposed else frames, planned.times,
                planned.n_pd_frames, patient["patient_id"], mask=mask, attrs=attrs,
            )  # fmt: skip
        except ContractError:
            for done in [*written, case_id]:
                if done in h5:
                    del h5[done]
            raise
        written.append(case_id)
    return written


def mapping_case_id(series: PlannedSeries, patient: dict) -> str:
    """``<patient>_<study>``: the case of a mapping series in every modality's file."""
    return f"{patient['patient_id']}_{study_tag(text_of(series.header, 'StudyInstanceUID'))}"


def _mapping_masks(
    sources: list[LabelSource], series: PlannedSeries, planned: PlannedSlice, notes: list[str]
) -> tuple[np.ndarray | None, str]:
    """(masks uint8 [N, H, W] 1 = myocardium, or None; the label sources used)."""
    found = _slice_labels(sources, _target(series, planned), notes)
    if found is None:
        return None, ""
    labels, covered, source = found
    if not covered.all():
        notes.append(
            f"{source}: labels {int(covered.sum())} of {covered.size} images of "
            f"{planned.slice_id}; masks need every image (or one label for the slice "
            "position); not stored"
        )
        return None, ""
    if not (labels == MYOCARDIUM).any():
        notes.append(f"{source}: no myocardium in the labels of {planned.slice_id}; not stored")
        return None, ""
    return (labels == MYOCARDIUM).astype(np.uint8), source


def write_mapping_slices(
    h5: h5py.File, series: PlannedSeries, slices: list[PlannedSlice], patient: dict,
    sources: list[LabelSource], notes: list[str],
) -> list[str]:  # fmt: skip
    """Write slices of a mapping series into their study's case (created on first use);
    returns ``<case>/<slice>`` of each.

    Raises:
        PixelError: an unreadable image (nothing of these slices is written).
        ContractError: a slice breaks the contract (the slices written here are removed).
    """
    case_id = mapping_case_id(series, patient)
    loaded = [read_slice(series, planned) for planned in slices]
    case = h5.get(case_id)
    created = case is None
    if created:
        case_attrs = {k: v for k, v in patient.items() if k != "patient_id"}
        study = text_of(series.header, "StudyInstanceUID") or None
        case = write_mapping_case(h5, case_id, patient["patient_id"],
                                  attrs={**case_attrs, "study_instance_uid": study})  # fmt: skip
    written = []
    try:
        for planned, (images, reference) in zip(slices, loaded, strict=True):
            attrs = {
                **_geometry_attrs(planned),
                **_provenance_attrs(series, planned),
                "field_strength_T": float_of(series.header, "MagneticFieldStrength"),
                "sequence": planned.sequence,
                "level_source": planned.level_source,
            }
            if planned.reference_map is not None:
                attrs["reference_sop_instance_uid"] = planned.reference_map.sop_instance_uid
                if reference.shape != images.shape[1:]:
                    notes.append(
                        f"scanner map {planned.reference_map.path}: other matrix; left out"
                    )
                    reference = None
            masks, source = _mapping_masks(sources, series, planned, notes)
            if masks is not None:
                attrs["label_source"] = source
            write_mapping_slice(
                case, planned.slice_id, images, planned.times, series.kind, planned.level,
                masks=masks, reference_ms=reference, attrs=attrs,
            )  # fmt: skip
            written.append(planned.slice_id)
    except ContractError:
        for slice_id in [*written, slices[len(written)].slice_id]:
            if slice_id in case:
                del case[slice_id]
        if created and not len(case):
            del h5[case_id]
        raise
    return [f"{case_id}/{slice_id}" for slice_id in written]


def write_perfusion_series(
    h5: h5py.File, series: PlannedSeries, aif: PlannedSeries | None, patient: dict,
    sources: list[LabelSource], notes: list[str],
) -> list[str]:  # fmt: skip
    """Write a perfusion imaging series and the AIF series of its study as one dual-sequence
    case ``<patient>_<study>_s<series number>``; returns its id.

    The case holds the AIF case (``series``, ``times_s``, ``n_pd_frames``, ``mask`` when the
    labels give the LV, attrs as :func:`write_aif_series`) and ``perfusion`` [S, T, H, W] (rows,
    columns) with attrs ``sop_instance_uids`` [S * T], ``series_instance_uid``,
    ``series_number``, ``series_description``, ``image_position_patient`` [S, 3],
    ``image_orientation_patient``, ``pixel_spacing_mm``, ``times_source``, ``n_pd_frames``. The
    saturation-recovery timing is not in the standard DICOM attributes: it is not written, and
    ``python -m exports perfusion`` names what is missing.

    Raises:
        PixelError: an unreadable image (nothing is written).
        PerfusionContractError: no AIF series beside it, or frame counts that differ.
    """
    number = text_of(series.header, "SeriesNumber")
    if aif is None:
        raise PerfusionContractError(
            f"perfusion series {number}: no AIF series of its study was imported; the "
            "dual-sequence contract needs both (import them together)"
        )
    counts = sorted({len(p.files) for p in series.slices})
    aif_slice = aif.slices[0]
    if counts != [len(aif_slice.files)]:
        raise PerfusionContractError(
            f"perfusion series {number}: {counts} frames per slice, AIF series "
            f"{text_of(aif.header, 'SeriesNumber')}: {len(aif_slice.files)}; expected the same"
        )
    frames = np.stack([read_slice(series, planned)[0] for planned in series.slices])
    aif_frames = read_slice(aif, aif_slice)[0]
    case_id = f"{mapping_case_id(series, patient)}_s{number or 0}"
    attrs = _aif_attrs(aif, aif_slice, patient)
    mask = _lv_rv_mask(sources, aif, aif_slice, case_id, attrs, notes)
    if mask is None:
        notes.append(f"{case_id}: no LV label for the AIF series; add its mask before mapping")
    transposed = _transposed(aif)
    write_aif_case(
        h5, case_id, np.swapaxes(aif_frames, 1, 2) if transposed else aif_frames,
        aif_slice.times, aif_slice.n_pd_frames, patient["patient_id"], mask=mask, attrs=attrs,
    )  # fmt: skip
    images = h5[case_id].create_dataset(
        "perfusion", data=frames.astype(np.float32), compression="gzip", compression_opts=1
    )
    first = series.slices[0]
    uids = [uid for planned in series.slices for uid in planned.sop_instance_uids]
    images.attrs.update({
        "sop_instance_uids": np.array(uids, dtype=h5py.string_dtype()),
        "series_instance_uid": series.uid,
        "series_number": number,
        "series_description": text_of(series.header, "SeriesDescription"),
        "image_position_patient": np.stack([p.geometry.position for p in series.slices]),
        "image_orientation_patient": first.geometry.orientation.astype(np.float64),
        "pixel_spacing_mm": first.geometry.spacing_mm.astype(np.float64),
        "times_source": first.time_source,
        "n_pd_frames": first.n_pd_frames,
    })  # fmt: skip
    return [case_id]
