"""``--dicom-out DIR --dicom-source SRC`` of ``python -m exports aif`` and ``mapping``: results
back as DICOM (objects built by :mod:`formats.dicom.results`).

The runtime reads HDF5, so the DICOM objects are tied to their source images through what the
import stored (:mod:`formats.dicom.importer`): the SOP Instance UIDs of every frame / image of a
case or slice. ``SRC`` is the folder the import read (or any folder holding those files); its
headers are scanned and matched by SOP Instance UID. Written into ``DIR``, each atomically:

- AIF: ``<case>_lv_rv_seg.dcm``: LV (and RV) blood pool as a Segmentation of the frame at peak
  LV enhancement, the other frames of the series listed as further sources;
- mapping: ``<case>_<slice>_<quantity>.dcm`` (T1 / T2 in ms, ECV in %) as a Parametric Map and
  ``<case>_<slice>_<quantity>_myocardium_seg.dcm``: the analysed myocardium (the map's pixels) as a
  Segmentation, on the plane of the slice's images (post-contrast for ECV; the native images
  are further sources);
- perfusion: ``<case>_slice<k>_<quantity>.dcm`` (MBF and PS in ml/min/g, Vb and Visf in ml/g) as
  Parametric Maps on the plane of the slice's first frame, its other frames as further sources.
  The case's image dataset (``perfusion`` or ``perfusion_gd``) carries the attr
  ``sop_instance_uids``: one per image, slice by slice, frames in stored order ([S * T]).

Outputs of one source series share one output series (number = source series number + 1000 for
Segmentations, + 2000 for Parametric Maps). A case or slice whose sources cannot be found (not
imported from DICOM, files missing from ``SRC``) is reported and skipped; the other outputs are
still written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from exports.aif_pipeline import AIFResult
from formats.atomic_file import atomic_write
from formats.contract_errors import plain

if TYPE_CHECKING:  # pydicom and highdicom are imported only when --dicom-out is used
    from pydicom.dataset import Dataset

    from formats.dicom.files import DicomFile
    from formats.dicom.results import Provenance

__all__ = [
    "DicomOutputError",
    "add_dicom_output_arguments",
    "dicom_output_arguments_error",
    "write_aif_dicom",
    "write_mapping_dicom",
    "write_perfusion_dicom",
]

SEG_SERIES_OFFSET = 1000
MAP_SERIES_OFFSET = 2000


class DicomOutputError(ValueError):
    """A result cannot be written as DICOM; the message names the case and the reason."""


def add_dicom_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dicom-out`` and ``--dicom-source`` to a runtime subcommand."""
    parser.add_argument("--dicom-out", type=Path,
                        help="also write the results as DICOM (Segmentation, Parametric Map) into "
                        "this folder; needs --dicom-source")  # fmt: skip
    parser.add_argument("--dicom-source", type=Path,
                        help="folder of the DICOM files the input was imported from "
                        "(python -m exports dicom-import)")  # fmt: skip


def dicom_output_arguments_error(args: argparse.Namespace) -> str | None:
    """The problem with the two flags, or None."""
    if args.dicom_out is not None and args.dicom_source is None:
        return "--dicom-out needs --dicom-source (the folder the input was imported from)"
    if args.dicom_source is not None and not args.dicom_source.exists():
        return f"--dicom-source {args.dicom_source}: no such folder"
    return None


@dataclass
class _Writer:
    """Source lookup, output series and the written files of one run."""

    source: Path
    out_dir: Path
    algorithm: str
    version: str
    files: dict[str, DicomFile] = field(default_factory=dict)
    series: dict[tuple[str, str], tuple[str, int, int]] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from formats.dicom.files import DicomImportError, scan_dicom_folder

        try:
            self.files = scan_dicom_folder(self.source).by_sop_instance_uid()
        except DicomImportError as exc:
            raise DicomOutputError(str(exc)) from exc

    def headers(self, uids: Sequence[str], where: str) -> list[Dataset]:
        missing = [u for u in uids if u not in self.files]
        if missing:
            raise DicomOutputError(
                f"{where}: {len(missing)} of {len(uids)} source images not found under "
                f"{self.source} (e.g. SOP Instance UID {missing[0]})"
            )
        return [self.files[u].header for u in uids]

    def provenance(self, source: Dataset, kind: str) -> Provenance:
        from pydicom.uid import generate_uid

        from formats.dicom.results import Provenance

        key = (str(source.SeriesInstanceUID), kind)
        number = int(source.get("SeriesNumber") or 0)
        offset = SEG_SERIES_OFFSET if kind == "seg" else MAP_SERIES_OFFSET
        uid, series_number, count = self.series.get(key, (generate_uid(), number + offset, 0))
        self.series[key] = (uid, series_number, count + 1)
        return Provenance(self.algorithm, self.version, uid, series_number, count + 1)

    def save(self, dataset: Dataset, name: str) -> None:
        path = self.out_dir / name
        with atomic_write(path) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
        self.written.append(path)

    def report(self, label: str) -> int:
        for problem in self.problems:
            print(f"dicom-out: FAILED: {problem}")
        print(f"dicom-out: wrote {len(self.written)} {label} file(s) into {self.out_dir}")
        return 1 if self.problems else 0


def _uids(attrs: Any, where: str) -> list[str]:
    uids = plain(attrs.get("sop_instance_uids")) if "sop_instance_uids" in attrs else None
    if not uids:
        raise DicomOutputError(
            f"{where}: no sop_instance_uids attr (the input was not imported from DICOM)"
        )
    return [str(u) for u in uids]


def _algorithm(args: argparse.Namespace, fallback: str) -> str:
    """The model's name (its artifact's file stem), or ``fallback`` without a model."""
    model = getattr(args, "model", None)
    return Path(model).stem if model else fallback


def write_aif_dicom(
    args: argparse.Namespace, outcomes: Sequence[Any], weights_sha256: str = ""
) -> int:
    """LV/RV Segmentations of the successful AIF cases (module docstring); returns 0 when every
    case was written, else 1 (problems printed)."""
    from formats.dicom.results import segmentation

    try:
        writer = _Writer(args.dicom_source, args.dicom_out, _algorithm(args, "inline-cmr aif"),
                         weights_sha256[:16])  # fmt: skip
    except DicomOutputError as exc:
        print(f"dicom-out: FAILED: {exc}", file=sys.stderr)
        return 1
    with h5py.File(args.input, "r") as h5:
        for outcome in outcomes:
            if not isinstance(outcome, AIFResult):
                continue
            try:
                case = h5[outcome.case_id]
                where = f"{args.input}: case {outcome.case_id!r}"
                headers = writer.headers(_uids(case.attrs, where), where)
                times = np.asarray(case["times_s"][()], dtype=np.float64)
                n_pd = int(case.attrs["n_pd_frames"])
                peak_s = times[n_pd] + float(outcome.grid_s[outcome.peak_lv_frame])
                peak = n_pd + int(np.argmin(np.abs(times[n_pd:] - peak_s)))
                mask = outcome.mask.T if bool(case.attrs.get("transposed", False)) else outcome.mask
                seg = segmentation(
                    headers[peak], mask, writer.provenance(headers[peak], "seg"),
                    further_sources=headers[:peak] + headers[peak + 1 :],
                    description="AIF LV/RV blood pool",
                )  # fmt: skip
                writer.save(seg, f"{outcome.case_id}_lv_rv_seg.dcm")
            except (DicomOutputError, ValueError, KeyError) as exc:
                writer.problems.append(f"{outcome.case_id}: {exc}")
    return writer.report("Segmentation")


def _slice_sources(writer: _Writer, path: Path, case_id: str, slice_id: str) -> list[Dataset]:
    where = f"{path}: case {case_id!r}, slice {slice_id!r}"
    with h5py.File(path, "r") as h5:
        group = h5.get(f"{case_id}/{slice_id}")
        if group is None:
            raise DicomOutputError(f"{where}: no such slice")
        return writer.headers(_uids(group.attrs, where), where)


def write_mapping_dicom(
    args: argparse.Namespace, outcomes: Sequence[Any], weights_sha256: str = ""
) -> int:
    """Parametric Maps and myocardium Segmentations of the successful slices (module
    docstring); returns 0 when every such slice was written, else 1 (problems printed)."""
    from formats.dicom.results import QUANTITIES, parametric_map, segmentation

    try:
        writer = _Writer(args.dicom_source, args.dicom_out,
                         _algorithm(args, "inline-cmr mapping (stored masks)"),
                         weights_sha256[:16])  # fmt: skip
    except DicomOutputError as exc:
        print(f"dicom-out: FAILED: {exc}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        for result in getattr(outcome, "slices", []):
            if not result.success or not np.isfinite(result.values).any():
                continue
            name = f"{result.case_id}_{result.slice_id}"
            try:
                if result.quantity not in QUANTITIES:
                    raise DicomOutputError(f"no DICOM encoding for {result.quantity!r}")
                if result.quantity == "ecv_percent":
                    headers = _slice_sources(writer, args.post, result.case_id, result.slice_id)
                    extra = _slice_sources(writer, args.native, result.case_id, result.slice_id)
                else:
                    path = args.t1 if result.quantity == "t1_ms" else args.input
                    headers = _slice_sources(writer, path, result.case_id, result.slice_id)
                    extra = []
                further = headers[1:] + extra
                pm = parametric_map(
                    headers[0], result.values, result.quantity,
                    writer.provenance(headers[0], "map"), further_sources=further,
                    description=f"{QUANTITIES[result.quantity].label} map",
                )  # fmt: skip
                writer.save(pm, f"{name}_{result.quantity}.dcm")
                myocardium = np.where(np.isfinite(result.values), 3, 0).astype(np.uint8)
                seg = segmentation(
                    headers[0], myocardium, writer.provenance(headers[0], "seg"),
                    further_sources=further, description="analysed myocardium",
                )  # fmt: skip
                writer.save(seg, f"{name}_{result.quantity}_myocardium_seg.dcm")
            except (DicomOutputError, ValueError) as exc:
                writer.problems.append(f"{name}: {exc}")
    return writer.report("Parametric Map / Segmentation")


PERFUSION_MAPS = ("mbf_ml_min_g", "ps_ml_min_g", "vb_ml_g", "visf_ml_g")
"""The perfusion maps written as Parametric Maps (those present and with a finite value)."""


def _perfusion_sources(writer: _Writer, h5: h5py.File, path: Path, case_id: str
                       ) -> tuple[list[list[Dataset]], bool]:  # fmt: skip
    """Source headers of each slice of a perfusion case ([S][T]) and whether the frames are
    stored transposed."""
    group = h5.get(case_id)
    key = next((k for k in ("perfusion", "perfusion_gd") if group is not None and k in group), None)
    where = f"{path}: case {case_id!r}, key {key!r}"
    if key is None:
        raise DicomOutputError(f"{path}: case {case_id!r}: no perfusion or perfusion_gd dataset")
    images = group[key]
    n_slices, n_frames = (1, images.shape[0]) if images.ndim == 3 else images.shape[:2]
    uids = _uids(images.attrs, where)
    if len(uids) != n_slices * n_frames:
        raise DicomOutputError(f"{where}: expected {n_slices * n_frames} sop_instance_uids (one "
                               f"per image, [S * T]); found {len(uids)}")  # fmt: skip
    headers = writer.headers(uids, where)
    slices = [headers[s * n_frames : (s + 1) * n_frames] for s in range(n_slices)]
    return slices, bool(images.attrs.get("transposed", False))


def write_perfusion_dicom(args: argparse.Namespace, results: dict[str, Any]) -> int:
    """Parametric Maps of every slice of the mapped perfusion cases (module docstring); returns 0
    when every case was written, else 1 (problems printed)."""
    from formats.dicom.results import QUANTITIES, parametric_map

    try:
        writer = _Writer(args.dicom_source, args.dicom_out,
                         f"inline-cmr perfusion {args.model}", "")  # fmt: skip
    except DicomOutputError as exc:
        print(f"dicom-out: FAILED: {exc}", file=sys.stderr)
        return 1
    with h5py.File(args.input, "r") as h5:
        for case_id, result in results.items():
            if result.error is not None:
                continue
            try:
                slices, transposed = _perfusion_sources(writer, h5, args.input, case_id)
            except DicomOutputError as exc:
                writer.problems.append(f"{case_id}: {exc}")
                continue
            for name in PERFUSION_MAPS:
                maps = result.maps.get(name)
                if maps is None:
                    continue
                maps = maps.reshape((len(slices),) + maps.shape[-2:])
                for k, (headers, values) in enumerate(zip(slices, maps, strict=True)):
                    if not np.isfinite(values).any():
                        continue
                    try:
                        pm = parametric_map(
                            headers[0], values.T if transposed else values, name,
                            writer.provenance(headers[0], "map"), further_sources=headers[1:],
                            description=f"{QUANTITIES[name].label} map ({args.model})",
                        )  # fmt: skip
                        writer.save(pm, f"{case_id}_slice{k}_{name}.dcm")
                    except ValueError as exc:
                        writer.problems.append(f"{case_id} slice {k} {name}: {exc}")
    return writer.report("Parametric Map")
