"""MRD images <-> the arrays of our data contracts: pixels, frame times, slices, geometry.

Orientation: an MRD image holds pixels [channels, z, y, x] with ``x`` along ``read_dir``
(``matrix_size[0]``, the readout, RO) and ``y`` along ``phase_dir`` (``matrix_size[1]``, the
phase encoding, E1). A 2D image is read as ``pixels [y, x]`` (rows, columns, as DICOM shows it).
The AIF contract stores frames as [RO, E1], i.e. ``pixels.T``; the mapping contract stores images
as [H, W] = [rows, columns] = ``pixels``.

Frame times (AIF): ``acquisition_time_stamp`` counts 2.5 ms ticks since midnight (as Siemens and
the MRD examples send it; a series that crosses midnight is unwrapped); ``physiology_time_stamp[0]``
is used instead when asked, or with ``time_source="auto"`` when the acquisition stamps are not
strictly increasing. Relaxation times (mapping): the image meta ``InversionTime`` (T1) or
``T2PrepDuration`` (T2), in ms, or a list given by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ismrmrd
import numpy as np

from formats.mrd.meta import MetaError, format_meta, meta_numbers, parse_meta
from formats.mrd.stream import ImageMessage

__all__ = [
    "TICK_S",
    "TIME_SOURCES",
    "AIFFrames",
    "MRDSeriesError",
    "SliceImages",
    "aif_frames",
    "derived_image",
    "dicom_geometry",
    "frame_times_s",
    "image_pixels",
    "make_image",
    "mapping_slices",
    "split_series",
]

TICK_S = 2.5e-3
"""Seconds per tick of ``acquisition_time_stamp`` and ``physiology_time_stamp``."""
_TICKS_PER_DAY = round(86400 / TICK_S)
TIME_SOURCES = ("auto", "acquisition", "physiology")


class MRDSeriesError(ValueError):
    """Images that do not form the series a config needs; the message says what is wrong."""


def image_pixels(image: ImageMessage) -> np.ndarray:
    """float32 [y, x] pixels of a single-channel 2D image (magnitude if complex).

    Raises:
        MRDSeriesError: more than one channel or partition.
    """
    channels, z, _, _ = image.data.shape
    if channels != 1 or z != 1:
        raise MRDSeriesError(
            f"image {image.head.image_index} of series {image.head.image_series_index} has "
            f"{channels} channels x {z} partitions; expected single-channel 2D images"
        )
    pixels = image.data[0, 0]
    return (np.abs(pixels) if np.iscomplexobj(pixels) else pixels).astype(np.float32)


def split_series(images: Sequence[ImageMessage]) -> dict[int, list[ImageMessage]]:
    """Images by ``image_series_index`` (ascending), each list in arrival order."""
    series: dict[int, list[ImageMessage]] = {}
    for image in images:
        series.setdefault(int(image.head.image_series_index), []).append(image)
    return dict(sorted(series.items()))


def _strictly_increasing(values: np.ndarray) -> bool:
    return bool(values.size >= 2 and np.all(np.diff(values) > 0))


def frame_times_s(images: Sequence[ImageMessage], source: str = "auto") -> tuple[np.ndarray, str]:
    """float64 [T] seconds since the first frame, and the time stamp used.

    Args:
        images: the frames in their order (e.g. sorted by ``image_index``).
        source: ``"acquisition"``, ``"physiology"`` or ``"auto"`` (see the module docstring).

    Raises:
        MRDSeriesError: the chosen stamps are not strictly increasing ("missing times").
    """
    if source not in TIME_SOURCES:
        raise MRDSeriesError(f"time source {source!r}; expected one of {TIME_SOURCES}")
    acquisition = np.array([im.head.acquisition_time_stamp for im in images], dtype=np.int64)
    midnights = np.cumsum(np.diff(acquisition, prepend=acquisition[:1]) < -_TICKS_PER_DAY // 2)
    acquisition += _TICKS_PER_DAY * midnights
    physiology = np.array([im.head.physiology_time_stamp[0] for im in images], dtype=np.int64)
    stamps = {"acquisition": acquisition, "physiology": physiology}
    order = ("acquisition", "physiology") if source == "auto" else (source,)
    for name in order:
        if _strictly_increasing(stamps[name]):
            ticks = stamps[name]
            return (ticks - ticks[0]) * TICK_S, name
    shown = ", ".join(f"{name}_time_stamp {stamps[name][:6].tolist()}..." for name in order)
    raise MRDSeriesError(
        f"missing frame times: expected strictly increasing {' or '.join(order)} time stamps "
        f"(2.5 ms ticks) over {len(images)} frames; found {shown}"
    )


@dataclass(frozen=True)
class AIFFrames:
    """One AIF series as the AIF contract wants it.

    Attributes:
        series: float32 [T, RO, E1] frames in ``image_index`` order.
        times_s: float64 [T] seconds since the first frame.
        time_source: ``"acquisition"`` or ``"physiology"``.
        images: the frames, sorted (their headers carry the geometry).
    """

    series: np.ndarray
    times_s: np.ndarray
    time_source: str
    images: list[ImageMessage]


def aif_frames(images: Sequence[ImageMessage], time_source: str = "auto") -> AIFFrames:
    """The frames of one AIF series (one ``image_series_index`` and ``slice``) as arrays.

    Raises:
        MRDSeriesError: no images, several series or slices, repeated ``image_index``,
            frames of different sizes, not 2D, or missing times.
    """
    if not images:
        raise MRDSeriesError("no images received")
    keys = sorted({(int(im.head.image_series_index), int(im.head.slice)) for im in images})
    if len(keys) != 1:
        raise MRDSeriesError(
            f"expected the frames of one series and slice; found (series, slice) {keys}"
        )
    ordered = sorted(images, key=lambda im: int(im.head.image_index))
    index = [int(im.head.image_index) for im in ordered]
    if len(set(index)) != len(index):
        repeated = sorted({i for i in index if index.count(i) > 1})
        raise MRDSeriesError(f"image_index repeated: {repeated[:10]} (one frame per index)")
    frames = [image_pixels(im) for im in ordered]
    shapes = sorted({f.shape for f in frames})
    if len(shapes) != 1:
        raise MRDSeriesError(f"frames of different sizes [y, x]: {shapes}")
    times, used = frame_times_s(ordered, time_source)
    return AIFFrames(np.stack([f.T for f in frames]), times, used, ordered)


@dataclass(frozen=True)
class SliceImages:
    """The weighted images of one slice, sorted by their relaxation time.

    Attributes:
        slice_index: the header's ``slice``.
        images: float32 [N, H, W] (rows, columns).
        times_ms: float64 [N] strictly increasing inversion or T2-prep times, ms.
        sources: the MRD images in the same order.
    """

    slice_index: int
    images: np.ndarray
    times_ms: np.ndarray
    sources: list[ImageMessage]


def _slice_times(
    group: list[ImageMessage], meta_key: str, given: Sequence[float] | None, where: str
) -> np.ndarray:
    try:
        from_meta = [meta_numbers(parse_meta(im.attributes), meta_key) for im in group]
    except MetaError as exc:
        raise MRDSeriesError(f"{where}: {exc}") from exc
    if given is not None:
        if len(given) != len(group):
            raise MRDSeriesError(
                f"{where}: {len(group)} images but {len(given)} times were given in the "
                "parameters (one per image, in image_index order)"
            )
        return np.asarray(given, dtype=np.float64)
    if any(values is None or len(values) != 1 for values in from_meta):
        n_missing = sum(values is None for values in from_meta)
        raise MRDSeriesError(
            f"{where}: missing times: {n_missing} of {len(group)} images lack the meta "
            f"{meta_key!r} (ms) and no times were given in the parameters"
        )
    return np.array([values[0] for values in from_meta], dtype=np.float64)  # type: ignore[index]


def mapping_slices(
    images: Sequence[ImageMessage],
    meta_key: str,
    times_ms: Sequence[float] | Sequence[Sequence[float]] | None = None,
) -> list[SliceImages]:
    """Images grouped by the header's ``slice`` (ascending), each sorted by relaxation time.

    Args:
        images: the weighted images of one series (any order).
        meta_key: ``"InversionTime"`` or ``"T2PrepDuration"`` (ms in the image meta).
        times_ms: instead of the meta: one list for every slice, or one list per slice (in
            slice order), each in ``image_index`` order within the slice.

    Raises:
        MRDSeriesError: no images, times missing or not one per image, two images of a slice
            with the same time, images of a slice of different sizes, not 2D.
    """
    if not images:
        raise MRDSeriesError("no images received")
    by_slice: dict[int, list[ImageMessage]] = {}
    for image in images:
        by_slice.setdefault(int(image.head.slice), []).append(image)
    nested = times_ms is not None and len(times_ms) > 0 and isinstance(times_ms[0], Sequence)
    if nested and len(times_ms) != len(by_slice):  # type: ignore[arg-type]
        raise MRDSeriesError(
            f"{len(by_slice)} slices but {len(times_ms)} lists of times"  # type: ignore[arg-type]
        )
    slices = []
    for k, (slice_index, group) in enumerate(sorted(by_slice.items())):
        where = f"slice {slice_index}"
        group = sorted(group, key=lambda im: int(im.head.image_index))
        given = times_ms[k] if nested else times_ms  # type: ignore[index]
        times = _slice_times(group, meta_key, given, where)  # type: ignore[arg-type]
        order = np.argsort(times, kind="stable")
        if np.any(np.diff(times[order]) <= 0) or not np.all(np.isfinite(times)):
            raise MRDSeriesError(f"{where}: times must be finite and distinct; found {times}")
        pixels = [image_pixels(group[i]) for i in order]
        shapes = sorted({p.shape for p in pixels})
        if len(shapes) != 1:
            raise MRDSeriesError(f"{where}: images of different sizes [y, x]: {shapes}")
        slices.append(
            SliceImages(slice_index, np.stack(pixels), times[order], [group[i] for i in order])
        )
    return slices


def derived_image(
    source: ImageMessage,
    pixels: np.ndarray,
    series_index: int,
    image_index: int,
    meta: dict,
) -> ImageMessage:
    """A new image in the geometry of ``source`` (field of view, position, directions, slice,
    time stamps and counters copied) holding ``pixels`` [y, x].

    Raises:
        ValueError: ``pixels`` is not the shape [y, x] of ``source``.
    """
    _, _, y, x = source.data.shape
    if pixels.shape != (y, x):
        raise ValueError(f"derived pixels {pixels.shape}; the source image is [y, x] = {(y, x)}")
    head = ismrmrd.ImageHeader.from_buffer_copy(bytes(source.head))
    head.image_type = ismrmrd.IMTYPE_MAGNITUDE
    head.image_series_index = series_index
    head.image_index = image_index
    return ImageMessage(head=head, attributes=format_meta(meta), data=pixels[None, None])


def make_image(
    pixels: np.ndarray,
    *,
    series_index: int = 0,
    image_index: int = 0,
    slice_index: int = 0,
    acquisition_time_stamp: int = 0,
    physiology_time_stamp: int = 0,
    pixel_spacing_mm: tuple[float, float] = (1.5, 1.5),
    position_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0),
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0),
    slice_thickness_mm: float = 8.0,
    meta: dict | None = None,
) -> ImageMessage:
    """A new 2D MRD image of ``pixels`` [y, x] (a client's or a test's input).

    ``pixel_spacing_mm`` is (along x, along y); the field of view follows from it; ``position``
    is the centre of the image (MRD convention); ``slice_dir`` = read x phase.
    """
    pixels = np.asarray(pixels)
    y, x = pixels.shape
    head = ismrmrd.ImageHeader()
    head.version = 1
    head.image_type = ismrmrd.IMTYPE_MAGNITUDE
    head.field_of_view[:] = (x * pixel_spacing_mm[0], y * pixel_spacing_mm[1], slice_thickness_mm)
    head.position[:] = position_mm
    head.read_dir[:] = read_dir
    head.phase_dir[:] = phase_dir
    head.slice_dir[:] = np.cross(read_dir, phase_dir)
    head.image_series_index = series_index
    head.image_index = image_index
    head.slice = slice_index
    head.acquisition_time_stamp = acquisition_time_stamp
    head.physiology_time_stamp[0] = physiology_time_stamp
    return ImageMessage(head=head, attributes=format_meta(meta or {}), data=pixels[None, None])


def dicom_geometry(image: ImageMessage) -> dict[str, list[float] | float]:
    """The image's geometry as the mapping contract's DICOM attrs (``GEOMETRY_ATTRS``).

    MRD ``position`` is the centre of the image; DICOM's image position is the centre of the
    first pixel: position - (fov_x - dx) / 2 * read_dir - (fov_y - dy) / 2 * phase_dir.
    """
    head = image.head
    _, _, y, x = image.data.shape
    fov = np.array(head.field_of_view[:2], dtype=np.float64)
    spacing = fov / np.array([x, y])  # along x (columns), along y (rows)
    read, phase = np.array(head.read_dir[:]), np.array(head.phase_dir[:])
    centre = np.array(head.position[:], dtype=np.float64)
    first = centre - (fov[0] - spacing[0]) / 2 * read - (fov[1] - spacing[1]) / 2 * phase
    return {
        "image_position_patient": first.tolist(),
        "image_orientation_patient": [*read.tolist(), *phase.tolist()],
        "pixel_spacing_mm": [float(spacing[1]), float(spacing[0])],  # between rows, columns
        "slice_location_mm": float(np.dot(centre, np.array(head.slice_dir[:]))),
    }
