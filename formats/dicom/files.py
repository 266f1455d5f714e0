"""Finding DICOM files in a folder tree and sorting them into image series and label objects.

A scanner or PACS export is a folder tree of any depth with any file names (``IM_0001``,
``1.3.12.2.1107....dcm``, ``DICOMDIR``, ``README.txt``...). :func:`scan_dicom_folder` reads the
header of every file (pixel data stay on disk), keeps MR images grouped by ``SeriesInstanceUID``,
keeps DICOM Segmentation and RT Structure Set objects aside as labels, and lists every other file
with the reason it was left out: not DICOM (counted), unreadable or truncated header, or a DICOM
object that is not an image (structured report, presentation state, key object, ...).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

__all__ = [
    "DicomFile",
    "DicomFolder",
    "DicomImportError",
    "SkippedFile",
    "scan_dicom_folder",
    "sop_class_name",
    "text_of",
]

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
LABEL_CLASSES = (SEGMENTATION, RT_STRUCTURE_SET)
NOT_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report or key object",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.66": "raw data, registration or surface object",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
    "1.2.840.10008.5.1.4.1.1.30": "parametric map (a derived object, not an acquired image)",
}


class DicomImportError(ValueError):
    """The DICOM import cannot go on; the message names the file or series and the reason."""


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file: where it is and its header (read without pixel data)."""

    path: Path
    header: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.get("SOPInstanceUID", ""))


@dataclass(frozen=True)
class SkippedFile:
    """A DICOM file left out of the import and why; ``unreadable``: damaged, not merely an
    object the import does not use (report, presentation state, ...)."""

    path: Path
    reason: str
    unreadable: bool = False


@dataclass
class DicomFolder:
    """What :func:`scan_dicom_folder` found.

    Attributes:
        root: the folder scanned.
        series: MR image files by ``SeriesInstanceUID``, in the order found.
        labels: DICOM Segmentation and RT Structure Set files.
        skipped: DICOM files left out, with the reason (non-DICOM files are only counted).
        damaged: the damaged files whose header still names their series, by series UID (the
            import skips such a series rather than import it incomplete).
        n_files: all files seen.
        n_non_dicom: files that are not DICOM at all.
    """

    root: Path
    series: dict[str, list[DicomFile]] = field(default_factory=dict)
    labels: list[DicomFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    damaged: dict[str, list[SkippedFile]] = field(default_factory=dict)
    n_files: int = 0
    n_non_dicom: int = 0

    def by_sop_instance_uid(self) -> dict[str, DicomFile]:
        """Every image file of every series keyed by its SOP Instance UID."""
        return {f.sop_instance_uid: f for files in self.series.values() for f in files}


def text_of(header: Dataset, keyword: str) -> str:
    """An attribute as stripped text ("" when absent).

    Example:
        >>> ds = Dataset()
        >>> ds.SeriesDescription = " T2map_SAX "
        >>> text_of(ds, "SeriesDescription"), text_of(ds, "ProtocolName")
        ('T2map_SAX', '')
    """
    return str(header.get(keyword, "")).strip()


def sop_class_name(uid: str) -> str:
    """The registered name of a SOP Class UID (the UID itself when unknown).

    Example:
        >>> sop_class_name("1.2.840.10008.5.1.4.1.1.4")
        'MR Image Storage'
    """
    name = UID(uid).name
    return name if name and name != uid else uid


def _looks_like_dicom_without_preamble(path: Path) -> bool:
    """Old files start directly with a group 0x0002 or 0x0008 tag (little endian), no 'DICM'."""
    with path.open("rb") as stream:
        head = stream.read(4)
    return len(head) == 4 and head[1] == 0 and head[0] in (0x02, 0x08) and head[3] == 0


PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


def _read_header(path: Path) -> tuple[Dataset, str] | None:
    """The header of a DICOM file (pixel data left on disk and dropped from it) and what is
    wrong with its pixel data ("" when it is all there; "missing" when absent); None for a
    non-DICOM file.

    Raises:
        DicomImportError: a DICOM file whose header cannot be read (corrupt or truncated).
    """
    try:
        header = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        if not _looks_like_dicom_without_preamble(path):
            return None
        try:
            header = pydicom.dcmread(path, defer_size=1024, force=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure means an unreadable file
            raise DicomImportError(f"{path}: unreadable DICOM header ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise DicomImportError(f"{path}: corrupt or truncated DICOM file ({exc})") from exc
    if PIXEL_DATA not in header:
        return header, "missing"
    raw = header.get_item(PIXEL_DATA)
    del header[PIXEL_DATA]
    length = getattr(raw, "length", UNDEFINED_LENGTH)
    tell = getattr(raw, "value_tell", None)
    if length != UNDEFINED_LENGTH and tell is not None:
        size = path.stat().st_size
        if tell + length > size:
            return header, (
                f"truncated: its pixel data needs {length} bytes, the file holds "
                f"{max(size - tell, 0)}"
            )
    return header, ""


def _classify(header: Dataset, pixel_problem: str) -> tuple[str, str, bool]:
    """('image' | 'label' | 'skip', reason for a skip, whether the file is damaged)."""
    sop_class = str(header.get("SOPClassUID", ""))
    if not sop_class:
        return "skip", "no SOPClassUID: damaged or truncated header", True
    if sop_class in LABEL_CLASSES:
        return "label", "", False
    for prefix, what in NOT_IMAGE_PREFIXES.items():
        if sop_class.startswith(prefix) and sop_class != MR_IMAGE:
            return "skip", f"not an image: {what} ({sop_class_name(sop_class)})", False
    if sop_class == ENHANCED_MR_IMAGE:
        return "skip", (
            "Enhanced MR Image Storage (multi-frame) is not supported: export the series as "
            "classic single-frame MR images"
        ), False  # fmt: skip
    is_mr = sop_class == MR_IMAGE
    if "Rows" not in header or "Columns" not in header:
        if is_mr:
            return "skip", "an MR image without Rows / Columns: damaged or truncated header", True
        return "skip", f"not an image: {sop_class_name(sop_class)} has no pixel matrix", False
    modality = str(header.get("Modality", ""))
    if modality != "MR":
        return "skip", f"not an MR image (Modality {modality or 'missing'}, " \
            f"{sop_class_name(sop_class)})", False  # fmt: skip
    if not header.get("SeriesInstanceUID") or not header.get("SOPInstanceUID"):
        return "skip", "MR image without SeriesInstanceUID or SOPInstanceUID", True
    if pixel_problem == "missing":
        return "skip", "an MR image without pixel data: truncated file", True
    if pixel_problem:
        return "skip", pixel_problem, True
    return "image", "", False


def scan_dicom_folder(root: str | os.PathLike) -> DicomFolder:
    """Read the headers of every file under ``root`` and sort them (module docstring).

    Args:
        root: a folder (searched recursively, symbolic links not followed) or a single file.

    Returns:
        The :class:`DicomFolder`; files of a series are in path order (frames are ordered later).

    Raises:
        DicomImportError: ``root`` does not exist or holds no files at all.
    """
    root = Path(root)
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    else:
        raise DicomImportError(f"{root}: no such folder")
    if not paths:
        raise DicomImportError(f"{root}: the folder holds no files")
    found = DicomFolder(root=root, n_files=len(paths))
    series: dict[str, list[DicomFile]] = defaultdict(list)
    for path in paths:
        try:
            read = _read_header(path)
        except DicomImportError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            found.skipped.append(SkippedFile(path, reason, unreadable=True))
            continue
        if read is None:
            found.n_non_dicom += 1
            continue
        header, pixel_problem = read
        kind, reason, damaged = _classify(header, pixel_problem)
        if kind == "image":
            series[str(header.SeriesInstanceUID)].append(DicomFile(path, header))
        elif kind == "label":
            found.labels.append(DicomFile(path, header))
        elif path.name.upper() == "DICOMDIR":
            found.n_non_dicom += 1  # the media directory: an index, not data
        else:
            found.skipped.append(SkippedFile(path, reason, unreadable=damaged))
            uid = str(header.get("SeriesInstanceUID", ""))
            if damaged and uid:
                found.damaged.setdefault(uid, []).append(SkippedFile(path, reason, True))
    found.series = dict(series)
    return found
