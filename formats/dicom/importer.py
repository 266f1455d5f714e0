"""DICOM folder -> the AIF, perfusion and mapping HDF5 contracts (``python -m exports
dicom-import``).

Steps (each in its own module): find and group files (:mod:`formats.dicom.files`), plan every
series (:mod:`formats.dicom.series_plan`: task, slices, order, vendor timing rules of
:mod:`formats.dicom.timing`), name cases and slices (:mod:`formats.dicom.layout`), read pixels
in real-world units (:mod:`formats.dicom.pixels`), attach labels (:mod:`formats.dicom.labels`),
pseudonymise (:mod:`formats.dicom.identifiers`) and write with the contracts' checked writers,
atomically. A series that cannot be imported is reported with its reason and the others are
still imported.

Mapping slices that repeat another series at the same location are kept in reserve
(:mod:`formats.dicom.layout`): when the kept series cannot be read, its repeat is written instead.

Output files: one per kind imported (``aif``, ``perfusion``, ``t1_native``, ``post_contrast``,
``t2``): the given path when only one kind was found, else ``<stem>_<kind>.h5`` beside it. A
perfusion imaging series (:func:`formats.dicom.series_kind.perfusion_role`) is written with the
AIF series of its study as one dual-sequence case
(:func:`formats.dicom.contract_writer.write_perfusion_series`); that AIF series is also an AIF
case of its own.

Attributes written besides the contracts' own (AIF on the case, mapping on the slice unless
said otherwise): ``image_position_patient``, ``image_orientation_patient``, ``pixel_spacing_mm``,
``slice_location_mm`` (position along the normal), ``manufacturer``, ``scanner`` (model),
``field_T`` (AIF) / ``field_strength_T`` (mapping), ``series_description``, ``series_number``,
``study_instance_uid`` (mapping: on the case), ``series_instance_uid``,
``frame_of_reference_uid``, ``sop_instance_uids`` (one per frame / image, in the stored order),
``times_source``, ``pixel_scaling``; AIF: ``pd_frames`` ("marked" or "none marked"),
``transposed`` (True when the DICOM frames are stored [columns, rows] here: the contract's
frames are [RO, E1] and ``InPlanePhaseEncodingDirection`` COL puts E1 along the DICOM rows);
mapping: ``sequence`` (when known), ``level_source``, ``reference_sop_instance_uid`` (the
scanner's map); ``label_source`` where a label was stored.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from formats.atomic_file import atomic_write
from formats.contract_errors import ContractError
from formats.dicom.contract_writer import (
    write_aif_series,
    write_mapping_slices,
    write_perfusion_series,
)
from formats.dicom.files import (
    DicomFolder,
    DicomImportError,
    SkippedFile,
    scan_dicom_folder,
    text_of,
)
from formats.dicom.geometry import GeometryError, geometry_of
from formats.dicom.identifiers import identifier_attrs, load_or_create_salt
from formats.dicom.labels import (
    ArrayLabels,
    LabelError,
    LabelSource,
    dicom_label_source,
    label_source_for_file,
)
from formats.dicom.layout import group_by_study, lay_out_mapping_slices
from formats.dicom.pixels import PixelError
from formats.dicom.series_kind import derived_map_kind
from formats.dicom.series_plan import PlannedSeries, PlannedSlice, SeriesSkipped, plan_series
from formats.dicom.timing import float_of

__all__ = ["ImportOptions", "ImportReport", "SeriesReport", "import_dicom", "output_paths"]

KINDS = ("aif", "perfusion", "t1_native", "post_contrast", "t2")
PERFUSION_KINDS = ("aif", "perfusion")


@dataclass
class SeriesReport:
    """What happened to one series."""

    uid: str
    number: str
    description: str
    n_files: int
    status: str = "skipped"
    reason: str = ""
    kind: str = ""
    destinations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line of the summary."""
        name = f"series {self.number or '?'} {self.description!r} ({self.n_files} files)"
        if self.status == "imported":
            text = f"imported  {name} as {self.kind} -> {', '.join(self.destinations)}"
        else:
            text = f"skipped   {name}: {self.reason}"
        return text + "".join(f"\n          note: {n}" for n in self.notes)


@dataclass
class ImportReport:
    """Everything the import did; :meth:`lines` is the printed summary."""

    root: Path
    series: list[SeriesReport]
    outputs: dict[str, Path]
    n_files: int
    n_non_dicom: int
    skipped_files: list[SkippedFile]
    label_notes: list[str]

    @property
    def n_imported(self) -> int:
        return sum(s.status == "imported" for s in self.series)

    @property
    def n_skipped(self) -> int:
        return len(self.series) - self.n_imported

    def lines(self) -> list[str]:
        def number(report: SeriesReport) -> float:
            try:
                return float(report.number)
            except ValueError:
                return float("inf")

        out = [s.line() for s in sorted(self.series, key=number)]
        out += [f"skipped   file {f.path}: {f.reason}" for f in self.skipped_files]
        out += [f"labels    {note}" for note in self.label_notes]
        written = ", ".join(f"{k}: {p}" for k, p in self.outputs.items()) or "nothing"
        out.append(
            f"{self.n_files} files under {self.root}: {self.n_non_dicom} not DICOM (skipped), "
            f"{len(self.skipped_files)} DICOM files left out, {len(self.series)} image series: "
            f"{self.n_imported} imported, {self.n_skipped} skipped; wrote {written}"
        )
        return out


@dataclass(frozen=True)
class ImportOptions:
    """Settings of :func:`import_dicom` (the command-line flags).

    Attributes:
        task: ``auto`` | ``aif`` | ``t1`` | ``t2``.
        keep_identifiers: keep PatientID and study identifiers (:mod:`formats.dicom.identifiers`).
        salt: salt of the patient pseudonyms (None: the per-user salt file).
        labels: extra label files (NIfTI, NumPy, DICOM SEG or RTSTRUCT).
        label_convention: value meaning of NIfTI / NumPy labels (``inline`` | ``acdc``).
    """

    task: str = "auto"
    keep_identifiers: bool = False
    salt: str | None = None
    labels: tuple[Path, ...] = ()
    label_convention: str = "inline"


class _NothingWritten(Exception):
    """Every series of an output file failed: the file is not created."""


def output_paths(output: Path, kinds: Iterable[str]) -> dict[str, Path]:
    """Output file per kind: ``output`` for a single kind, else ``<stem>_<kind><suffix>``.

    Example:
        >>> output_paths(Path("out/study.h5"), ["t2"])
        {'t2': PosixPath('out/study.h5')}
        >>> output_paths(Path("study.h5"), ["aif", "t2"])["t2"]
        PosixPath('study_t2.h5')
    """
    kinds = [k for k in KINDS if k in set(kinds)]
    if len(kinds) == 1:
        return {kinds[0]: output}
    return {k: output.with_name(f"{output.stem}_{k}{output.suffix}") for k in kinds}


def _series_report(uid: str, files: list) -> SeriesReport:
    header = files[0].header
    return SeriesReport(
        uid=uid,
        number=text_of(header, "SeriesNumber"),
        description=text_of(header, "SeriesDescription") or text_of(header, "ProtocolName"),
        n_files=len(files),
    )


def _label_sources(
    folder: DicomFolder, options: ImportOptions
) -> tuple[list[LabelSource], list[str]]:
    """``--labels`` files first (a bad one is an error), then SEG / RTSTRUCT found in the folder
    (a bad one is a note; our own ``--dicom-out`` Segmentations are not labels)."""
    sources: list[LabelSource] = []
    for path in options.labels:
        try:
            sources.append(label_source_for_file(Path(path), options.label_convention))
        except LabelError as exc:
            raise DicomImportError(str(exc)) from exc
    notes = []
    for f in folder.labels:
        if text_of(f.header, "Manufacturer") == "inline-cmr":
            notes.append(f"left out {f.path}: a result of this tool (--dicom-out), not a label")
            continue
        try:
            sources.append(dicom_label_source(f.path, f.header))
        except LabelError as exc:
            notes.append(f"left out {exc}")
    return sources, notes


def _attach_map_series(
    uid: str, files: list, planned: list[PlannedSeries], report: SeriesReport
) -> None:
    """A series holding only the scanner's maps (Siemens writes the T1 map as its own series):
    each map goes to the one imported slice of its kind at its position (same frame of
    reference, orientation, matrix and position within 0.1 mm)."""
    attached = []
    for f in files:
        kind = derived_map_kind(f.header)
        try:
            geometry = geometry_of(f.header)
        except GeometryError:
            continue
        frame = text_of(f.header, "FrameOfReferenceUID")
        matches = [
            (s, p)
            for s in planned
            if s.task == kind
            for p in s.slices
            if p.reference_map is None
            and text_of(p.files[0].header, "FrameOfReferenceUID") == frame
            and p.geometry.same_plane_orientation(geometry)
            and abs(p.geometry.distance_mm - geometry.distance_mm) < 0.1
        ]
        if len(matches) == 1:
            owner, target = matches[0]
            target.reference_map = f
            attached.append(f"series {text_of(owner.header, 'SeriesNumber')} {target.slice_id}")
    if attached:
        report.status, report.kind = "imported", "scanner map"
        report.destinations = [f"reference map of {', '.join(attached)}"]
    else:
        report.reason = (
            "only the scanner's derived maps, and no imported slice of their kind at their position"
        )


Reserves = dict[tuple[str, str, str], list[tuple[PlannedSeries, PlannedSlice]]]
"""Slices that repeat a kept one, by (kind, study, slice id): used when the kept one fails."""


def _plan_all(
    folder: DicomFolder, task: str, reports: dict[str, SeriesReport]
) -> tuple[list[PlannedSeries], Reserves]:
    """Plan every series; lay out the mapping slices of each study; attach map-only series."""
    planned, map_series = [], []
    for uid, files in folder.series.items():
        report = reports[uid]
        if uid in folder.damaged:
            bad = folder.damaged[uid]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            report.reason = f"{bad[0].path}: {bad[0].reason}{more}"
            continue
        if all(derived_map_kind(f.header) is not None for f in files):
            map_series.append((uid, files))
            continue
        try:
            series = plan_series(uid, files, task)
        except SeriesSkipped as exc:
            report.reason = str(exc)
            continue
        report.kind = series.kind
        report.notes.extend(series.notes)
        planned.append(series)
    reserves: Reserves = defaultdict(list)
    mapping = [s for s in planned if s.kind not in PERFUSION_KINDS]
    for study, study_series in group_by_study(mapping).items():
        for owner, dropped, reason in lay_out_mapping_slices(study_series):
            owner.slices.remove(dropped)
            reserves[(owner.kind, study, dropped.slice_id)].append((owner, dropped))
            reports[owner.uid].notes.append(
                f"slice at {dropped.geometry.distance_mm:.1f} mm {reason}"
            )
    kept = []
    for series in planned:
        if series.slices:
            kept.append(series)
        else:
            reports[series.uid].reason = "every slice repeats a later series at the same position"
    for uid, files in map_series:
        _attach_map_series(uid, files, kept, reports[uid])
    return kept, reserves


class _Writer:
    """Writes the planned series of one kind into an open contract file."""

    def __init__(self, h5: h5py.File, name: str, options: ImportOptions, salt: str,
                 sources: list[LabelSource], reports: dict[str, SeriesReport],
                 reserves: Reserves, planned: list[PlannedSeries]) -> None:  # fmt: skip
        self.h5, self.name, self.options, self.salt = h5, name, options, salt
        self.sources, self.reports, self.reserves = sources, reports, reserves
        self.planned = planned
        self.n_written = 0

    def aif_of(self, series: PlannedSeries) -> PlannedSeries | None:
        """The one-slice AIF series of the perfusion series' study, the last acquired before
        it (highest series number below its own), else any of its study."""
        study = str(series.header.get("StudyInstanceUID", ""))
        number = float_of(series.header, "SeriesNumber") or 0.0

        def before_it(s: PlannedSeries) -> tuple[bool, float]:
            other = float_of(s.header, "SeriesNumber") or 0.0
            return other < number, other

        candidates = sorted(
            (s for s in self.planned if s.kind == "aif" and len(s.slices) == 1
             and str(s.header.get("StudyInstanceUID", "")) == study),
            key=before_it,
        )  # fmt: skip
        return candidates[-1] if candidates else None

    def patient(self, series: PlannedSeries) -> dict:
        return identifier_attrs(series.header, self.options.keep_identifiers, self.salt)

    def series(self, series: PlannedSeries) -> None:
        report = self.reports[series.uid]
        try:
            if series.kind == "aif":
                written = write_aif_series(
                    self.h5, series, self.patient(series), self.sources, report.notes
                )
            elif series.kind == "perfusion":
                written = write_perfusion_series(
                    self.h5, series, self.aif_of(series), self.patient(series), self.sources,
                    report.notes,
                )  # fmt: skip
            else:
                written = write_mapping_slices(
                    self.h5, series, series.slices, self.patient(series), self.sources,
                    report.notes,
                )  # fmt: skip
        except (PixelError, ContractError) as exc:
            report.reason, report.destinations = str(exc), []
            if series.kind not in PERFUSION_KINDS:
                self.use_reserves(series)
            return
        report.status = "imported"
        report.destinations.extend(f"{self.name}:/{w}" for w in written)
        self.n_written += 1

    def use_reserves(self, failed: PlannedSeries) -> None:
        """The earlier repeats of the failed series' slices take their place."""
        study = str(failed.header.get("StudyInstanceUID", ""))
        for planned in failed.slices:
            for owner, slice_ in self.reserves.pop((failed.kind, study, planned.slice_id), []):
                report = self.reports[owner.uid]
                try:
                    written = write_mapping_slices(
                        self.h5, owner, [slice_], self.patient(owner), self.sources, report.notes
                    )
                except (PixelError, ContractError) as exc:
                    report.notes.append(f"{slice_.slice_id} could not stand in: {exc}")
                    continue
                report.status, report.reason = "imported", ""
                report.destinations.extend(f"{self.name}:/{w}" for w in written)
                report.notes.append(
                    f"{slice_.slice_id} stands in for series {failed.header.get('SeriesNumber')}"
                )
                self.n_written += 1
                break


def import_dicom(
    source: str | os.PathLike, output: str | os.PathLike, options: ImportOptions | None = None
) -> ImportReport:
    """Import every usable series under ``source`` into contract files beside ``output``.

    Args:
        source: folder tree (or one file) of DICOM files from a scanner or PACS.
        output: the HDF5 file to write (module docstring for several kinds).
        options: :class:`ImportOptions`.

    Returns:
        The :class:`ImportReport` (series imported and skipped with reasons, files written).

    Raises:
        DicomImportError: ``source`` missing or empty, or a ``--labels`` file unusable.
    """
    options = options or ImportOptions()
    folder = scan_dicom_folder(source)
    sources, label_notes = _label_sources(folder, options)
    reports = {uid: _series_report(uid, files) for uid, files in folder.series.items()}
    planned, reserves = _plan_all(folder, options.task, reports)
    single = [s for s in sources if isinstance(s, ArrayLabels) and s.single is not None]
    n_slices = sum(len(s.slices) for s in planned)
    if single and n_slices != 1:
        raise DicomImportError(
            f"{single[0].path}: a .npy label fits an import of exactly one slice; this import "
            f"has {n_slices}. Use a .npz keyed by SOP Instance UID"
        )
    salt = "" if options.keep_identifiers else (options.salt or load_or_create_salt())
    outputs = {}
    for kind, path in output_paths(Path(output), {s.kind for s in planned}).items():
        try:
            with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5:
                h5.attrs["source"] = "python -m exports dicom-import"
                h5.attrs["kind"] = kind
                writer = _Writer(h5, path.name, options, salt, sources, reports, reserves,
                                 planned)  # fmt: skip
                for series in planned:
                    if series.kind == kind:
                        writer.series(series)
                if not writer.n_written:
                    raise _NothingWritten
            outputs[kind] = path
        except _NothingWritten:
            continue
    return ImportReport(
        root=Path(source),
        series=list(reports.values()),
        outputs=outputs,
        n_files=folder.n_files,
        n_non_dicom=folder.n_non_dicom,
        skipped_files=folder.skipped,
        label_notes=label_notes,
    )
