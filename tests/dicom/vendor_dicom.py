"""DICOM series in each vendor's layout, written from the phantoms with pydicom, for the tests of
the DICOM import and export: what a scanner or PACS export of the phantoms would look like.

- Siemens MOLLI: TI in ``ImageComments`` (``TI 102.0``) and ``InversionTime``, acquisition order
  in three inversion runs, one scale for the series (no rescale tags).
- Philips MOLLI: ``InversionTime`` empty, TI in the private (2005,1572); each image with its own
  RescaleSlope and Philips scale slope (2005,100E); the scanner's T1 MAP in the same series.
- Siemens T2-prep: ``T2 prep. duration = 25 ms`` in ``ImageComments``, ``EchoTime`` the readout's.
- GE perfusion: cumulative ``TriggerTime``, one ``AcquisitionTime`` for all frames, phase
  encoding along the columns (frames stored [E1, RO]), PD frames marked ``PD``.
- Siemens perfusion: ``AcquisitionTime`` per frame.
Any of them JPEG-lossless (or JPEG-LS, JPEG 2000, RLE) encoded.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from tests.dicom.jpeg_lossless import encode_jpeg_lossless

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}


@dataclass
class Study:
    """One patient's study: identifiers (which the import must not copy) and UIDs."""

    patient_id: str = "PAT-001"
    patient_name: str = "Doe^Jane"
    birth_date: str = "19700101"
    study_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    date: str = "20240305"
    field_strength_t: float = 1.5


@dataclass(frozen=True)
class Plane:
    """An image plane: first pixel centre, row and column direction cosines, spacing (mm)."""

    position: np.ndarray
    row: np.ndarray
    col: np.ndarray
    spacing_mm: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.col)


def sax_plane(shape: tuple[int, int], spacing_mm: float, offset_mm: float = 0.0) -> Plane:
    """An oblique short-axis-like plane through the isocentre, moved ``offset_mm`` along the
    normal towards the apex."""
    a = np.deg2rad(30.0)
    row = np.array([np.cos(a), np.sin(a), 0.0])
    col = np.array([np.sin(a) * np.sin(a), -np.cos(a) * np.sin(a), -np.cos(a)])
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    apex = np.array([1.0, -1.0, -1.0])
    normal = normal if normal @ apex > 0 else -normal
    centre = offset_mm * normal
    rows, cols = shape
    position = centre - (cols - 1) / 2 * spacing_mm * row - (rows - 1) / 2 * spacing_mm * col
    return Plane(position, row, col, (spacing_mm, spacing_mm))


def mr_image(
    pixels: np.ndarray,
    study: Study,
    series_uid: str,
    series_number: int,
    description: str,
    instance: int,
    plane: Plane,
    manufacturer: str,
    **attrs,
) -> FileDataset:
    """A classic MR Image Storage dataset of uint16 ``pixels`` [rows, columns]."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_IMAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = (
        study.patient_id, study.patient_name, study.birth_date)  # fmt: skip
    ds.PatientSex = "F"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.study_uid, study.date, "101500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "42", "ACC42", ""
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.SeriesDescription = ds.ProtocolName = description
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = study.frame_uid
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = {"SIEMENS": "Aera", "Philips Medical Systems": "Ingenia"}.get(
        manufacturer, "SIGNA Artist"
    )
    ds.MagneticFieldStrength = study.field_strength_t
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImagePositionPatient = [round(float(v), 4) for v in plane.position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*plane.row, *plane.col)]
    ds.PixelSpacing = list(plane.spacing_mm)
    ds.SliceThickness = 8.0
    ds.SliceLocation = round(float(plane.position @ plane.normal), 4)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def save(ds: FileDataset, path: Path, syntax: str = "explicit") -> Path:
    """Write ``ds`` to ``path`` in one of :data:`SYNTAXES`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "jpeg_lossless":
        pixels = np.frombuffer(ds.PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([encode_jpeg_lossless(pixels)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif syntax != "explicit":
        ds.compress(SYNTAXES[syntax])
    ds.save_as(path, enforce_file_format=True)
    return path


def to_uint16(image: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.round(image * scale), 0, 65535).astype(np.uint16)


def _clock(start_s: float, offset_s: float) -> str:
    t = datetime.datetime(2024, 3, 5) + datetime.timedelta(seconds=start_s + offset_s)
    return t.strftime("%H%M%S.%f")


# acquisition order of the 11 phantom TIs as MOLLI inversions (TI steps of one inversion > 100 ms)
MOLLI_RUNS_3_3_5 = ([0, 3, 6], [1, 4, 7], [2, 5, 8, 9, 10])
MOLLI_RUNS_5_3_3 = ([0, 3, 6, 8, 10], [1, 4, 7], [2, 5, 9])


def write_siemens_molli(
    folder: Path, images: np.ndarray, times_ms: np.ndarray, study: Study, plane: Plane,
    series_number: int, description: str = "MOLLI 3(3)3(3)5 SAX", syntax: str = "explicit",
    runs=MOLLI_RUNS_3_3_5, scale: float | None = None,
) -> tuple[list[Path], float]:  # fmt: skip
    """Siemens MOLLI: returns (files, the scale stored = round(image * scale))."""
    scale = scale or 3000.0 / float(images.max())
    series_uid = generate_uid()
    order = [i for run in runs for i in run]
    paths = []
    for acquired, index in enumerate(order):
        ti = round(float(times_ms[index]), 1)
        ds = mr_image(
            to_uint16(images[index], scale), study, series_uid, series_number, description,
            acquired + 1, plane, "SIEMENS",
            InversionTime=ti, ImageComments=f"TI {ti:.1f}",
            AcquisitionTime=_clock(36000, 1.1 * acquired), SequenceName="*tfi2d1_12",
            EchoTime=1.12, RepetitionTime=2.7,
        )  # fmt: skip
        paths.append(save(ds, folder / f"{series_number:03d}" / f"{ds.SOPInstanceUID}.dcm", syntax))
    return paths, scale


def write_philips_molli(
    folder: Path, images: np.ndarray, times_ms: np.ndarray, t1_map_ms: np.ndarray, study: Study,
    plane: Plane, series_number: int, description: str = "T1map_SAX", syntax: str = "explicit",
) -> tuple[list[Path], np.ndarray]:  # fmt: skip
    """Philips MOLLI with its T1 MAP in the series: returns (files, per-image scale k_i with
    stored = round(image * k_i)); RescaleSlope varies too, so only the Philips floating-point
    value stored / SS gives the image back."""
    series_uid = generate_uid()
    order = [i for run in MOLLI_RUNS_5_3_3 for i in run]
    scales = 4000.0 / images.reshape(len(images), -1).max(axis=1)
    paths = []
    for acquired, index in enumerate(order):
        ds = mr_image(
            to_uint16(images[index], scales[index]), study, series_uid, series_number, description,
            acquired + 1, plane, "Philips Medical Systems",
            InversionTime="", RescaleSlope=f"{2.5 + 0.3 * index:.4f}", RescaleIntercept="0",
            AcquisitionTime=_clock(40000, 1.0 * acquired), EchoTime=1.1,
        )  # fmt: skip
        ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
        ds.add_new((0x2005, 0x100E), "FL", float(scales[index]))
        ds.add_new((0x2005, 0x0015), "LO", "Philips MR Imaging DD 005")
        ds.add_new((0x2005, 0x1572), "FL", float(times_ms[index]))
        paths.append(save(ds, folder / "DICOM" / f"IM_{series_number:02d}{acquired:02d}", syntax))
    stored = np.clip(np.round(np.nan_to_num(t1_map_ms) / 0.5), 0, 65535).astype(np.uint16)
    ds = mr_image(
        stored, study, series_uid, series_number, description, len(order) + 1, plane,
        "Philips Medical Systems",
        ImageType=["DERIVED", "PRIMARY", "T1 MAP", "T1"], RescaleSlope="0.5", RescaleIntercept="0",
    )  # fmt: skip
    ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
    ds.add_new((0x2005, 0x100E), "FL", 123.0)  # must not be applied to a map
    paths.append(save(ds, folder / "DICOM" / f"IM_{series_number:02d}99", syntax))
    return paths, scales


def write_siemens_t2prep(
    folder: Path, images: np.ndarray, times_ms: np.ndarray, study: Study, plane: Plane,
    series_number: int, description: str = "T2map_SAX", syntax: str = "explicit",
) -> tuple[list[Path], float]:  # fmt: skip
    """Siemens T2-prepared bSSFP: the T2-prep duration only in the image comments."""
    scale = 3000.0 / float(images.max())
    series_uid = generate_uid()
    paths = []
    for index in range(len(images)):
        ds = mr_image(
            to_uint16(images[index], scale), study, series_uid, series_number, description,
            index + 1, plane, "SIEMENS",
            ImageComments=f"T2 prep. duration = {float(times_ms[index]):g} ms", EchoTime=1.32,
            AcquisitionTime=_clock(38000, 1.2 * index), SequenceName="*tfi2d1_12",
        )  # fmt: skip
        paths.append(save(ds, folder / "t2" / f"{series_number}_{index}", syntax))
    return paths, scale


def write_perfusion(
    folder: Path, series: np.ndarray, times_s: np.ndarray, n_pd: int, study: Study,
    series_number: int, vendor: str, description: str = "FirstPass AIF",
    syntax: str = "explicit",
) -> tuple[list[Path], float, Plane]:  # fmt: skip
    """A perfusion AIF series [T, RO, E1]: GE (cumulative TriggerTime, frames stored [E1, RO])
    or Siemens (AcquisitionTime). Returns (files, scale, plane of the stored frames)."""
    scale = 3000.0 / float(series.max())
    ge = vendor == "ge"
    frames = np.swapaxes(series, 1, 2) if ge else series
    plane = sax_plane(frames.shape[1:], 5.625)
    series_uid = generate_uid()
    paths = []
    for t in range(len(series)):
        timing = (
            {"TriggerTime": round(1000.0 * float(times_s[t]), 2),
             "AcquisitionTime": "101010.000000", "InPlanePhaseEncodingDirection": "COL"}
            if ge else
            {"AcquisitionTime": _clock(37000, float(times_s[t])), "TriggerTime": 120.0,
             "InPlanePhaseEncodingDirection": "ROW"}
        )  # fmt: skip
        ds = mr_image(
            to_uint16(frames[t], scale), study, series_uid, series_number, description, t + 1,
            plane, "GE MEDICAL SYSTEMS" if ge else "SIEMENS",
            ImageComments="PD" if t < n_pd else "SR", **timing,
        )  # fmt: skip
        paths.append(save(ds, folder / "perf" / f"{t:04d}", syntax))
    return paths, scale, plane


@dataclass
class PhantomStudy:
    """One phantom patient as a scanner export: the folder and what was written into it.

    Series: 3 GE perfusion AIF, 5 Siemens MOLLI native T1, 7 Philips MOLLI post-contrast T1
    (with its T1 MAP), 9 Siemens T2-prep (JPEG lossless). ``scales`` holds each series' stored
    = round(image * scale) factor (Philips: one per image), ``files`` its paths.
    """

    root: Path
    study: Study
    plane: Plane
    acquisitions: dict
    aif: object
    files: dict[int, list[Path]]
    scales: dict[int, object]
    pixel_mm: float


def write_phantom_study(
    root: Path, seed: int = 0, t2_syntax: str = "jpeg_lossless"
) -> PhantomStudy:
    """Write :class:`PhantomStudy` (one mapping slice, one AIF scan) under ``root``, with a
    README and an empty nested folder beside the DICOM files."""
    from dataclasses import replace

    from datamodules.synthetic.aif_phantom import CLASSIC, simulate_aif_scan
    from datamodules.synthetic.mapping_phantom import simulate_mapping_patient

    patient = simulate_mapping_patient(seed, 0, slices_per_patient=1)
    acquisitions = patient.slices[0].acquisitions
    native, post, t2 = (acquisitions[m] for m in ("t1_native", "post_contrast", "t2"))
    study = Study()
    pixel_mm = float(patient.case_attrs["pixel_mm"])
    plane = sax_plane(native.images.shape[1:], pixel_mm)
    # a dual-sequence AIF series with 3 PD frames, as a GE site would export it
    aif = simulate_aif_scan(
        np.random.default_rng(seed + 1), replace(CLASSIC, pd_frames_p=(0, 0, 0, 1))
    )
    files, scales = {}, {}
    files[3], scales[3], _ = write_perfusion(
        root, aif.series, aif.times_s, aif.n_pd_frames, study, 3, "ge"
    )
    files[5], scales[5] = write_siemens_molli(root, native.images, native.times_ms, study, plane, 5)
    files[7], scales[7] = write_philips_molli(
        root, post.images, post.times_ms, post.truth_ms, study, plane, 7,
        description="T1map_SAX post",
    )  # fmt: skip
    files[9], scales[9] = write_siemens_t2prep(
        root, t2.images, t2.times_ms, study, plane, 9, syntax=t2_syntax
    )
    (root / "README.txt").write_text("exported from the phantom scanner\n")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "nested" / "deeper" / "notes.json").write_text("{}")
    return PhantomStudy(root, study, plane, acquisitions, aif, files, scales, pixel_mm)


def sop_uids(paths: list[Path]) -> list[str]:
    """SOP Instance UID of each file."""
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def acquisition_order(runs) -> list[int]:
    """Phantom image index of each acquired image (InstanceNumber 1, 2, ...)."""
    return [i for run in runs for i in run]
