"""Labels for imported DICOM slices: DICOM Segmentation (read with highdicom), RT Structure Set
contours rasterised on the slice grid, NIfTI volumes and NumPy arrays.

Every source gives, for one imported slice (:class:`LabelTarget`), a label image per image of
the slice in the import's values :data:`LV` = 1 (LV blood pool), :data:`RV` = 2 (RV blood pool),
:data:`MYOCARDIUM` = 3 (LV myocardium), 0 elsewhere; the contracts then take what they hold (AIF:
``mask`` 1 LV / 2 RV; mapping: ``masks`` 1 where myocardium).

- DICOM SEG and RTSTRUCT name their structures; a segment label or segmented property
  (``SegmentLabel``, the SNOMED code: 49848007 LV myocardium, 87878005 left ventricle,
  53085002 right ventricle) or an ROI name is matched, case-insensitively: ``myo`` / ``LV
  wall`` -> myocardium; ``epi`` -> LV epicardium (myocardium = epicardium minus LV
  endocardium); ``RV`` / ``right ventricle`` -> RV blood pool; ``LV`` / ``left ventricle`` /
  ``endo`` / ``blood pool`` -> LV blood pool. Other structures are ignored.
- NIfTI / NumPy values follow ``--label-convention``: ``inline`` (default) 1 LV blood pool,
  2 RV blood pool, 3 myocardium; ``acdc`` (ACDC, M&Ms) 1 RV cavity, 2 LV myocardium, 3 LV cavity.
  A NIfTI volume is sampled at the slice's pixel centres through its affine (voxel centres must
  fall on the pixel centres within 0.1 voxel: labels are never interpolated). A ``.npz`` holds
  one [H, W] label image per SOP Instance UID (its key); a ``.npy`` holds [H, W] (every image of
  the one imported slice) or [N, H, W] (image by image, in the import's order).

A label that names SOP instances belongs to those images; a NIfTI volume, an ``[H, W]`` array or
a contour without image references belongs to the slice position and so to every image of the
slice (right for motion-corrected series).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from formats.dicom.geometry import SliceGeometry

__all__ = [
    "LABEL_CONVENTIONS",
    "LV",
    "MYOCARDIUM",
    "RV",
    "ArrayLabels",
    "ContourLabels",
    "LabelError",
    "LabelSource",
    "LabelTarget",
    "SegLabels",
    "VolumeLabels",
    "combine_structures",
    "dicom_label_source",
    "label_source_for_file",
    "polygon_mask",
    "structure_of",
]

LV, RV, MYOCARDIUM = 1, 2, 3
LABEL_CONVENTIONS = {
    "inline": {1: LV, 2: RV, 3: MYOCARDIUM},
    "acdc": {1: RV, 2: MYOCARDIUM, 3: LV},
}
"""File label value -> import label value, per ``--label-convention``."""
SNOMED_STRUCTURES = {"49848007": "myo", "87878005": "lv", "53085002": "rv"}
GRID_TOLERANCE_VOXELS = 0.1
PLANE_TOLERANCE_MM = 0.5


class LabelError(ValueError):
    """A label file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class LabelTarget:
    """One imported slice, as the label sources see it.

    Attributes:
        sop_instance_uids: the SOP Instance UID of each image, in the import's order.
        geometry: the slice plane (shared by its images).
        frame_of_reference_uid: ``FrameOfReferenceUID`` of the images ("" when absent).
        name: how messages name the slice (series and position).
    """

    sop_instance_uids: tuple[str, ...]
    geometry: SliceGeometry
    frame_of_reference_uid: str
    name: str

    @property
    def n_images(self) -> int:
        return len(self.sop_instance_uids)


class LabelSource(Protocol):
    """A label file that may cover imported slices."""

    path: Path

    def labels_for(self, target: LabelTarget) -> tuple[np.ndarray, np.ndarray] | None:
        """(labels uint8 [N, H, W] in the import's values, covered bool [N]) for the images of
        ``target``, or None when the file says nothing about that slice."""
        ...


def structure_of(name: str) -> str | None:
    """``myo`` | ``epi`` | ``rv`` | ``lv`` for a segment or ROI name, None when unknown.

    Example:
        >>> [structure_of(n) for n in ("LV Myocardium", "RV endocardium", "lv_epi", "LV blood")]
        ['myo', 'rv', 'epi', 'lv']
    """
    text = name.lower()
    if re.search(r"myo|lv[\s_-]*wall", text):
        return "myo"
    if re.search(r"epi", text):
        return "epi"
    if re.search(r"\brv|right[\s_-]*ventric|_rv", text):
        return "rv"
    if re.search(r"\blv|left[\s_-]*ventric|endo|blood[\s_-]*pool|_lv", text):
        return "lv"
    return None


def combine_structures(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """uint8 label image(s) from boolean masks per structure (``lv``, ``rv``, ``myo``, ``epi``):
    myocardium (or epicardium minus LV blood pool), then RV, then LV on top."""
    lv = masks.get("lv", np.zeros(shape, bool))
    myo = masks.get("myo")
    if myo is None and "epi" in masks:
        myo = masks["epi"] & ~lv
    labels = np.zeros(shape, np.uint8)
    if myo is not None:
        labels[myo] = MYOCARDIUM
    if "rv" in masks:
        labels[masks["rv"]] = RV
    labels[lv] = LV
    return labels


def polygon_mask(rows_cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: pixel centres inside a closed polygon (even-odd rule), scanline by scanline.

    Args:
        rows_cols: float [P, 3+] or [P, 2] polygon vertices as (row, column) in pixels.
        shape: (H, W).

    Example:
        >>> square = np.array([[0.5, 0.5], [0.5, 2.5], [2.5, 2.5], [2.5, 0.5]])
        >>> polygon_mask(square, (4, 4)).astype(int)
        array([[0, 0, 0, 0],
               [0, 1, 1, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0]])
    """
    height, width = shape
    r0, c0 = rows_cols[:, 0], rows_cols[:, 1]
    r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
    ys = np.arange(height, dtype=np.float64)[:, None]
    crosses = (ys >= np.minimum(r0, r1)) & (ys < np.maximum(r0, r1))  # [H, E], half-open
    step = np.where(r1 != r0, r1 - r0, 1.0)
    x = np.where(crosses, c0 + (ys - r0) / step * (c1 - c0), np.inf)
    x.sort(axis=1)
    n_pairs = x.shape[1] // 2
    starts, ends = x[:, 0 : 2 * n_pairs : 2], x[:, 1 : 2 * n_pairs : 2]
    valid = np.isfinite(starts) & np.isfinite(ends)
    first = np.clip(np.ceil(starts), 0, width).astype(np.int64)
    last = np.clip(np.floor(ends) + 1, 0, width).astype(np.int64)
    valid &= last > first
    rows = np.broadcast_to(np.arange(height)[:, None], starts.shape)
    edges = np.zeros((height, width + 1), np.int32)
    np.add.at(edges, (rows[valid], first[valid]), 1)
    np.add.at(edges, (rows[valid], last[valid]), -1)
    return np.cumsum(edges[:, :width], axis=1) > 0


def _convert(values: np.ndarray, convention: str, path: Path) -> np.ndarray:
    table = LABEL_CONVENTIONS[convention]
    values = np.asarray(values)
    if values.dtype.kind == "f":
        if not np.array_equal(values, np.round(values)):
            raise LabelError(f"{path}: label values must be whole numbers; found fractions")
    present = set(np.unique(values).astype(np.int64).tolist()) - {0}
    unknown = sorted(present - set(table))
    if unknown:
        names = {LV: "LV", RV: "RV", MYOCARDIUM: "myocardium"}
        meaning = ", ".join(f"{k} {names[v]}" for k, v in table.items())
        raise LabelError(
            f"{path}: label values {unknown} are not in the {convention!r} convention ({meaning})"
        )
    out = np.zeros(values.shape, np.uint8)
    for value, label in table.items():
        out[values == value] = label
    return out


# ----------------------------------------------------------------------------- DICOM SEG


class SegLabels:
    """A DICOM Segmentation that references the source images (read with highdicom)."""

    def __init__(self, path: Path) -> None:
        import highdicom as hd

        self.path = Path(path)
        try:
            self.seg = hd.seg.segread(self.path)
        except Exception as exc:  # noqa: BLE001 - any reader failure: unusable file
            raise LabelError(f"{self.path}: unreadable DICOM Segmentation ({exc})") from exc
        self.structures: dict[int, str] = {}
        for number in self.seg.segment_numbers:
            description = self.seg.get_segment_description(number)
            code = str(description.segmented_property_type.value)
            kind = SNOMED_STRUCTURES.get(code) or structure_of(
                f"{description.segment_label} {description.segmented_property_type.meaning}"
            )
            if kind is not None:
                self.structures[number] = kind
        if not self.structures:
            raise LabelError(f"{self.path}: no segment names the LV, RV or myocardium")
        self.referenced = {str(uid) for _, _, uid in self.seg.get_source_image_uids()}

    def labels_for(self, target: LabelTarget) -> tuple[np.ndarray, np.ndarray] | None:
        covered = np.array([uid in self.referenced for uid in target.sop_instance_uids])
        if not covered.any():
            return None
        uids = [u for u, c in zip(target.sop_instance_uids, covered, strict=True) if c]
        numbers = sorted(self.structures)
        try:
            pixels = self.seg.get_pixels_by_source_instance(
                uids, segment_numbers=numbers, assert_missing_frames_are_empty=True
            )  # [K, H, W, S]
        except Exception as exc:  # noqa: BLE001 - highdicom raises several types
            raise LabelError(
                f"{self.path}: cannot read the segments of {target.name} ({exc})"
            ) from exc
        shape = (target.n_images, *target.geometry.shape)
        if pixels.shape[1:3] != shape[1:]:
            raise LabelError(
                f"{self.path}: segmentation frames of {pixels.shape[1:3]} pixels; {target.name} "
                f"has {shape[1:]}"
            )
        masks: dict[str, np.ndarray] = {}
        for index, number in enumerate(numbers):
            kind = self.structures[number]
            full = np.zeros(shape, bool)
            full[covered] = pixels[..., index] > 0
            masks[kind] = masks.get(kind, np.zeros(shape, bool)) | full
        return combine_structures(masks, shape), covered


# ----------------------------------------------------------------------------- RTSTRUCT


@dataclass(frozen=True)
class _Contour:
    kind: str
    points_mm: np.ndarray  # [P, 3]
    image_uids: tuple[str, ...]
    frame_of_reference_uid: str


class ContourLabels:
    """An RT Structure Set: closed planar contours rasterised on the slice grid."""

    def __init__(self, path: Path, dataset: Dataset | None = None) -> None:
        self.path = Path(path)
        try:
            ds = dataset if dataset is not None else pydicom.dcmread(self.path)
            rois = {
                int(roi.ROINumber): (
                    str(roi.get("ROIName", "")),
                    str(roi.get("ReferencedFrameOfReferenceUID", "")),
                )
                for roi in ds.StructureSetROISequence
            }
            contours = []
            for roi_contour in ds.get("ROIContourSequence", []):
                name, frame = rois.get(int(roi_contour.ReferencedROINumber), ("", ""))
                kind = structure_of(name)
                if kind is None:
                    continue
                for contour in roi_contour.get("ContourSequence", []):
                    if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                        continue
                    points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
                    uids = tuple(
                        str(item.ReferencedSOPInstanceUID)
                        for item in contour.get("ContourImageSequence", [])
                    )
                    contours.append(_Contour(kind, points, uids, frame))
        except LabelError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed structure sets
            raise LabelError(f"{self.path}: unreadable RT Structure Set ({exc})") from exc
        if not contours:
            raise LabelError(f"{self.path}: no closed planar contour of the LV, RV or myocardium")
        self.contours = contours

    def labels_for(self, target: LabelTarget) -> tuple[np.ndarray, np.ndarray] | None:
        shape = (target.n_images, *target.geometry.shape)
        index_of = {uid: i for i, uid in enumerate(target.sop_instance_uids)}
        masks: dict[str, np.ndarray] = {}
        covered = np.zeros(target.n_images, bool)
        for contour in self.contours:
            images = [index_of[u] for u in contour.image_uids if u in index_of]
            if not images:
                if contour.image_uids or (
                    contour.frame_of_reference_uid
                    and contour.frame_of_reference_uid != target.frame_of_reference_uid
                ):
                    continue
                pixels = target.geometry.to_pixels(contour.points_mm)
                if np.abs(pixels[:, 2]).max() > PLANE_TOLERANCE_MM:
                    continue  # another slice's contour
                images = list(range(target.n_images))
            else:
                pixels = target.geometry.to_pixels(contour.points_mm)
            inside = polygon_mask(pixels, target.geometry.shape)
            mask = masks.setdefault(contour.kind, np.zeros(shape, bool))
            mask[images] |= inside
            covered[images] = True
        if not covered.any():
            return None
        return combine_structures(masks, shape), covered


# ----------------------------------------------------------------------------- NIfTI, NumPy


class VolumeLabels:
    """A NIfTI label volume, sampled at the pixel centres of each slice through its affine."""

    def __init__(self, path: Path, convention: str) -> None:
        import nibabel

        self.path = Path(path)
        try:
            image = nibabel.load(self.path)
            data = np.asanyarray(image.dataobj)
        except Exception as exc:  # noqa: BLE001 - nibabel raises several types
            raise LabelError(f"{self.path}: unreadable NIfTI file ({exc})") from exc
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3:
            raise LabelError(f"{self.path}: expected a 3-D label volume; found shape {data.shape}")
        self.labels = _convert(data, convention, self.path)
        self.ras_to_voxel = np.linalg.inv(np.asarray(image.affine, dtype=np.float64))

    def labels_for(self, target: LabelTarget) -> tuple[np.ndarray, np.ndarray] | None:
        lps = target.geometry.pixel_centres()
        ras = lps * np.array([-1.0, -1.0, 1.0])
        voxels = ras @ self.ras_to_voxel[:3, :3].T + self.ras_to_voxel[:3, 3]  # [H, W, 3]
        nearest = np.round(voxels)
        inside = (nearest >= 0).all(-1) & (nearest < np.array(self.labels.shape)).all(-1)
        if not inside.any():
            return None
        if not inside.all():
            raise LabelError(f"{self.path}: covers only part of {target.name}")
        offset = np.abs(voxels - nearest).max()
        if offset > GRID_TOLERANCE_VOXELS:
            raise LabelError(
                f"{self.path}: voxels lie {offset:.2f} voxel off the pixel centres of "
                f"{target.name}; resample the labels onto the DICOM grid first"
            )
        index = nearest.astype(np.int64)
        plane = self.labels[index[..., 0], index[..., 1], index[..., 2]]
        labels = np.broadcast_to(plane, (target.n_images, *plane.shape)).copy()
        return labels, np.ones(target.n_images, bool)


class ArrayLabels:
    """NumPy labels: ``.npz`` keyed by SOP Instance UID, or one ``.npy`` for a one-slice import
    (module docstring)."""

    def __init__(self, path: Path, convention: str) -> None:
        self.path = Path(path)
        try:
            loaded = np.load(self.path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - damaged or pickled files
            raise LabelError(f"{self.path}: unreadable NumPy file ({exc})") from exc
        if isinstance(loaded, np.ndarray):
            if loaded.ndim not in (2, 3):
                raise LabelError(f"{self.path}: expected [H, W] or [N, H, W]; found {loaded.shape}")
            self.single: np.ndarray | None = _convert(loaded, convention, self.path)
            self.by_uid: dict[str, np.ndarray] = {}
        else:
            self.single = None
            self.by_uid = {k: _convert(loaded[k], convention, self.path) for k in loaded.files}

    def labels_for(self, target: LabelTarget) -> tuple[np.ndarray, np.ndarray] | None:
        shape = target.geometry.shape
        if self.single is not None:
            array = self.single
            if array.ndim == 2:
                array = np.broadcast_to(array, (target.n_images, *array.shape))
            if array.shape != (target.n_images, *shape):
                raise LabelError(
                    f"{self.path}: shape {self.single.shape}; {target.name} needs {shape} or "
                    f"{(target.n_images, *shape)}"
                )
            return array.copy(), np.ones(target.n_images, bool)
        covered = np.array([uid in self.by_uid for uid in target.sop_instance_uids])
        if not covered.any():
            return None
        labels = np.zeros((target.n_images, *shape), np.uint8)
        for i, uid in enumerate(target.sop_instance_uids):
            if uid in self.by_uid:
                if self.by_uid[uid].shape != shape:
                    raise LabelError(f"{self.path}: key {uid}: shape {self.by_uid[uid].shape}; "
                                     f"expected {shape}")  # fmt: skip
                labels[i] = self.by_uid[uid]
        return labels, covered


def label_source_for_file(path: Path, convention: str = "inline") -> LabelSource:
    """The label source of a ``--labels`` file, by its name (``.nii``, ``.nii.gz``, ``.npy``,
    ``.npz``) or, for any other name, its DICOM SOP class (SEG or RTSTRUCT).

    Raises:
        LabelError: unreadable file or unknown kind.
    """
    path = Path(path)
    if convention not in LABEL_CONVENTIONS:
        raise LabelError(
            f"label convention {convention!r}; expected one of {list(LABEL_CONVENTIONS)}"
        )
    if not path.is_file():
        raise LabelError(f"{path}: no such label file")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return VolumeLabels(path, convention)
    if name.endswith((".npy", ".npz")):
        return ArrayLabels(path, convention)
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise LabelError(f"{path}: not a NIfTI, NumPy or DICOM label file ({exc})") from exc
    return dicom_label_source(path, header)


def dicom_label_source(path: Path, header: Dataset) -> LabelSource:
    """SEG or RTSTRUCT source of a DICOM label object.

    Raises:
        LabelError: another SOP class, or an unusable object.
    """
    sop_class = str(header.get("SOPClassUID", ""))
    if sop_class == "1.2.840.10008.5.1.4.1.1.66.4":
        return SegLabels(path)
    if sop_class == "1.2.840.10008.5.1.4.1.1.481.3":
        return ContourLabels(path)
    raise LabelError(f"{path}: a DICOM label must be a Segmentation or RT Structure Set")
