"""From the headers of one DICOM series to a plan of what to import: its task, its slices (images
split by position along the slice normal), the order of the images in each slice, their times,
and the scanner's maps beside them. Pixel data are not read here.

A series that cannot be imported raises :class:`SeriesSkipped` with the reason; the caller
reports it and goes on with the other series.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from formats.dicom.files import DicomFile
from formats.dicom.geometry import GeometryError, SliceGeometry, geometry_of, group_by_position
from formats.dicom.series_kind import (
    derived_map_kind,
    is_post_contrast,
    perfusion_role,
    sequence_from_inversion_pattern,
    sequence_from_name,
    series_text,
    task_from_name,
)
from formats.dicom.timing import (
    TimingError,
    count_pd_frames,
    float_of,
    frame_times_s,
    inversion_times_ms,
    t2_prep_times_ms,
    vendor_of,
)

__all__ = ["PlannedSeries", "PlannedSlice", "SeriesSkipped", "TASKS", "plan_series"]

TASKS = ("auto", "aif", "perfusion", "t1", "t2")
MIN_AIF_FRAMES = 3
MIN_MAPPING_IMAGES = 2


class SeriesSkipped(ValueError):
    """A series is not imported; the message is the reason."""


@dataclass
class PlannedSlice:
    """One slice of a series, ready to be read.

    Attributes:
        files: the weighted images in the contract's order (AIF: time; mapping: preparation
            time).
        times: float64 [N]: seconds from the first frame (AIF) or ms (mapping), increasing.
        time_source: the attribute the times came from.
        geometry: the slice plane.
        n_pd_frames: leading proton-density frames (AIF).
        sequence: T1/T2 preparation (mapping), None when unknown.
        reference_map: the scanner's map at this position (mapping), if any.
        slice_id, level, level_source: set when the import lays out the slices of a study.
    """

    files: list[DicomFile]
    times: np.ndarray
    time_source: str
    geometry: SliceGeometry
    n_pd_frames: int = 0
    sequence: str | None = None
    reference_map: DicomFile | None = None
    slice_id: str = ""
    level: str = ""
    level_source: str = ""

    @property
    def sop_instance_uids(self) -> list[str]:
        return [f.sop_instance_uid for f in self.files]


@dataclass
class PlannedSeries:
    """What will be imported from one series.

    Attributes:
        uid: SeriesInstanceUID.
        header: the header of its first image (series-level attributes).
        vendor: :func:`formats.dicom.timing.vendor_of`.
        kind: ``aif`` | ``perfusion`` (the imaging series of a dual-sequence perfusion
            acquisition) | ``t1_native`` | ``post_contrast`` | ``t2``.
        slices: its slices ordered along the normal.
        notes: remarks for the summary (images left out and why).
    """

    uid: str
    header: Dataset
    vendor: str
    kind: str
    slices: list[PlannedSlice]
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return {"t1_native": "t1", "post_contrast": "t1"}.get(self.kind, self.kind)


def _acquisition_order(headers: list[Dataset]) -> np.ndarray:
    """Image indices in acquisition order: by ``AcquisitionTime`` when it tells every image
    apart, else by ``InstanceNumber``."""
    try:
        times = frame_times_s(headers, "other").times_s
        return np.argsort(times, kind="stable")
    except TimingError:
        numbers = [float_of(h, "InstanceNumber") for h in headers]
        return np.argsort([np.inf if n is None else n for n in numbers], kind="stable")


def _task(header: Dataset, forced: str, one_slice: list[Dataset], vendor: str) -> str:
    """The series' task: ``--task`` when given, else its names, else the times of one slice."""
    named = task_from_name(series_text(header))
    if forced != "auto":
        if named is not None and named != forced and {named, forced} != {"aif", "perfusion"}:
            raise SeriesSkipped(f"named as a {named} series, not {forced} (--task {forced})")
        return forced
    if named is not None:
        return named
    try:
        inversion_times_ms(one_slice, vendor)
        return "t1"
    except TimingError:
        pass
    try:
        if t2_prep_times_ms(one_slice).source.startswith("ImageComments"):
            return "t2"
    except TimingError:
        pass
    raise SeriesSkipped(
        f"cannot tell from its names ({series_text(header).strip()!r}) or times whether this is "
        "a perfusion AIF, T1 or T2 mapping series; pass --task"
    )


def _split_maps(files: list[DicomFile], task: str) -> tuple[list[DicomFile], list[DicomFile], str]:
    """(weighted images, the scanner's maps of this task's kind, note on images left out)."""
    weighted, maps, other = [], [], Counter()
    for f in files:
        kind = derived_map_kind(f.header)
        if kind is None:
            weighted.append(f)
        elif kind == task:
            maps.append(f)
        else:
            other[kind if kind != "other" else "derived"] += 1
    note = ""
    if other:
        note = "left out the scanner's " + ", ".join(
            f"{n} {k} map image(s)" for k, n in other.items()
        )
    return weighted, maps, note


def _geometries(files: list[DicomFile]) -> list[SliceGeometry]:
    geometries = []
    for f in files:
        try:
            geometries.append(geometry_of(f.header))
        except GeometryError as exc:
            raise SeriesSkipped(f"image {f.path}: {exc}") from exc
    shapes = Counter(g.shape for g in geometries)
    if len(shapes) > 1:
        sizes = ", ".join(f"{r}x{c} ({n} images)" for (r, c), n in shapes.most_common())
        raise SeriesSkipped(f"mixed matrix sizes: {sizes}")
    first = geometries[0]
    odd = [
        f.path
        for f, g in zip(files, geometries, strict=True)
        if not g.same_plane_orientation(first)
    ]
    if odd:
        raise SeriesSkipped(
            f"mixed orientations or pixel spacings ({len(odd)} of {len(files)} images differ "
            f"from the first, e.g. {odd[0]})"
        )
    return geometries


def _aif_slice(files: list[DicomFile], geometry: SliceGeometry, vendor: str) -> PlannedSlice:
    headers = [f.header for f in files]
    times = frame_times_s(headers, vendor)
    order = np.argsort(times.times_s, kind="stable")
    ordered = [files[i] for i in order]
    n_pd = count_pd_frames([f.header for f in ordered])
    if len(files) - n_pd < 2 or len(files) < MIN_AIF_FRAMES:
        raise SeriesSkipped(f"{len(files)} frames ({n_pd} PD): too few for an AIF series")
    return PlannedSlice(
        files=ordered,
        times=times.times_s[order],
        time_source=times.source,
        geometry=geometry,
        n_pd_frames=n_pd,
    )


def _mapping_slice(
    files: list[DicomFile], geometry: SliceGeometry, vendor: str, task: str, header: Dataset
) -> PlannedSlice:
    if len(files) < MIN_MAPPING_IMAGES:
        raise SeriesSkipped(f"a slice with {len(files)} image: a fit needs at least 2")
    headers = [f.header for f in files]
    named = sequence_from_name(series_text(header))
    if task == "t1":
        prepared = inversion_times_ms(headers, vendor, look_locker=named == "look_locker")
        acquired = _acquisition_order(headers)
        sequence = named if named != "t2prep" else None
        sequence = sequence or sequence_from_inversion_pattern(prepared.times_ms[acquired])
    else:
        prepared = t2_prep_times_ms(headers)
        from_prep = named == "t2prep" or prepared.source.startswith("ImageComments")
        sequence = "t2prep" if from_prep else None
    order = np.argsort(prepared.times_ms, kind="stable")
    return PlannedSlice(
        files=[files[i] for i in order],
        times=prepared.times_ms[order],
        time_source=prepared.source,
        geometry=geometry,
        sequence=sequence,
    )


def _attach_maps(slices: list[PlannedSlice], maps: list[DicomFile], notes: list[str]) -> None:
    """Each slice gets the scanner's map at its position (the first by InstanceNumber)."""
    unused = 0
    for f in sorted(maps, key=lambda m: float_of(m.header, "InstanceNumber") or 0.0):
        try:
            geometry = geometry_of(f.header)
        except GeometryError:
            unused += 1
            continue
        target = next(
            (
                s
                for s in slices
                if s.reference_map is None
                and geometry.shape == s.geometry.shape
                and abs(geometry.distance_mm - s.geometry.distance_mm) < 0.1
            ),
            None,
        )
        if target is None:
            unused += 1
        else:
            target.reference_map = f
    if unused:
        notes.append(f"{unused} scanner map image(s) with no slice of their own left out")


def plan_series(uid: str, files: list[DicomFile], task: str = "auto") -> PlannedSeries:
    """The import plan of one series (module docstring).

    Args:
        uid: its SeriesInstanceUID.
        files: its image files (any order).
        task: one of :data:`TASKS`.

    Raises:
        SeriesSkipped: why the series is not imported (no weighted images, no times, mixed
            matrix sizes or orientations, unknown task, ...).
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r}; expected one of {TASKS}")
    header = files[0].header
    vendor = vendor_of(header)
    candidates = [f for f in files if derived_map_kind(f.header) is None]
    if not candidates:
        raise SeriesSkipped("only the scanner's derived maps, no weighted images")
    positions = group_by_position(_geometries(candidates))
    chosen = _task(header, task, [candidates[i].header for i in positions[0]], vendor)
    if chosen in ("aif", "perfusion") and task in ("auto", "perfusion"):
        shape = geometry_of(candidates[0].header).shape
        chosen = perfusion_role(series_text(header), len(positions), shape)
    weighted, maps, note = _split_maps(files, chosen)
    notes = [note] if note else []
    geometries = _geometries(weighted)
    slices = []
    for group in group_by_position(geometries):
        members = [weighted[i] for i in group]
        try:
            if chosen in ("aif", "perfusion"):
                planned = _aif_slice(members, geometries[group[0]], vendor)
            else:
                planned = _mapping_slice(members, geometries[group[0]], vendor, chosen, header)
        except TimingError as exc:
            where = (
                ""
                if len(geometries) == 1
                else f" (slice at {geometries[group[0]].distance_mm:.1f} mm)"
            )
            raise SeriesSkipped(f"{exc}{where}") from exc
        slices.append(planned)
    if maps:
        _attach_maps(slices, maps, notes)
    if chosen == "t1":
        kind = "post_contrast" if is_post_contrast(header) else "t1_native"
    else:
        kind = chosen
    return PlannedSeries(
        uid=uid, header=header, vendor=vendor, kind=kind, slices=slices, notes=notes
    )
