"""Image-plane geometry of DICOM images: where each pixel is in the patient, which images share a
slice, and where a slice lies along the heart's long axis.

DICOM patient coordinates are LPS (x to the patient's left, y posterior, z head), in mm. An image
plane is given by ``ImagePositionPatient`` (centre of the first transmitted pixel),
``ImageOrientationPatient`` (direction cosines of a row, then of a column) and ``PixelSpacing``
(spacing between rows, then between columns). Pixel (row r, column c) is at
``position + c * column_spacing * row_cosine + r * row_spacing * column_cosine``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "APEX_DIRECTION_LPS",
    "GeometryError",
    "SliceGeometry",
    "apex_sign",
    "apical_distance_mm",
    "geometry_of",
    "group_by_position",
    "level_of_rank",
]

POSITION_TOLERANCE_MM = 0.1
"""Images whose positions along the slice normal differ by less than this share a slice."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference of direction cosines between images of one slice."""
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
"""Rough direction from the base of the heart to its apex in LPS: left, anterior, inferior."""


class GeometryError(ValueError):
    """An image has no usable plane geometry (the message names the attribute)."""


@dataclass(frozen=True)
class SliceGeometry:
    """The plane of one image.

    Attributes:
        position: float64 [3] ``ImagePositionPatient``, mm (LPS).
        orientation: float64 [6] ``ImageOrientationPatient`` (row cosines, column cosines).
        spacing_mm: float64 [2] ``PixelSpacing``: between rows, between columns.
        shape: (rows, columns).
    """

    position: np.ndarray
    orientation: np.ndarray
    spacing_mm: np.ndarray
    shape: tuple[int, int]

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, row cosine x column cosine."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        return normal / np.linalg.norm(normal)

    @property
    def distance_mm(self) -> float:
        """Position along the slice normal (``position · normal``), mm."""
        return float(self.position @ self.normal)

    def same_plane_orientation(self, other: SliceGeometry) -> bool:
        """Equal orientation, pixel spacing and matrix (the position may differ)."""
        return (
            self.shape == other.shape
            and np.allclose(self.orientation, other.orientation, atol=ORIENTATION_TOLERANCE)
            and np.allclose(self.spacing_mm, other.spacing_mm, rtol=1e-4)
        )

    def pixel_centres(self) -> np.ndarray:
        """float64 [rows, columns, 3]: LPS coordinates (mm) of every pixel centre."""
        rows = np.arange(self.shape[0], dtype=np.float64)[:, None, None]
        cols = np.arange(self.shape[1], dtype=np.float64)[None, :, None]
        row_cos, col_cos = self.orientation[:3], self.orientation[3:]
        return (
            self.position
            + cols * self.spacing_mm[1] * row_cos
            + rows * self.spacing_mm[0] * col_cos
        )

    def to_pixels(self, points_mm: np.ndarray) -> np.ndarray:
        """LPS points [..., 3] (mm) -> [..., 3]: (row, column) in pixels and the distance from
        the plane along the normal in mm.

        Example:
            >>> g = SliceGeometry(np.zeros(3), np.array([1., 0, 0, 0, 1, 0]), np.array([2., 1]),
            ...                   (4, 4))
            >>> g.to_pixels(np.array([3.0, 4.0, 0.5])).tolist()
            [2.0, 3.0, 0.5]
        """
        offset = np.asarray(points_mm, dtype=np.float64) - self.position
        row_cos, col_cos = self.orientation[:3], self.orientation[3:]
        return np.stack(
            [
                offset @ col_cos / self.spacing_mm[0],
                offset @ row_cos / self.spacing_mm[1],
                offset @ self.normal,
            ],
            axis=-1,
        )


def _numbers(header: Dataset, keyword: str, size: int) -> np.ndarray:
    value = header.get(keyword)
    if value is None or value == "":
        raise GeometryError(f"no {keyword}")
    values = np.array([float(v) for v in (value if size > 1 else [value])], dtype=np.float64)
    if values.shape != (size,) or not np.isfinite(values).all():
        raise GeometryError(f"{keyword} is {value!r}; expected {size} finite numbers")
    return values


def geometry_of(header: Dataset) -> SliceGeometry:
    """The plane of one single-frame image.

    Raises:
        GeometryError: a missing or malformed geometry attribute, or non-orthonormal cosines.
    """
    position = _numbers(header, "ImagePositionPatient", 3)
    orientation = _numbers(header, "ImageOrientationPatient", 6)
    spacing = _numbers(header, "PixelSpacing", 2)
    row_cos, col_cos = orientation[:3], orientation[3:]
    if not (
        abs(np.linalg.norm(row_cos) - 1) < 1e-2
        and abs(np.linalg.norm(col_cos) - 1) < 1e-2
        and abs(row_cos @ col_cos) < 1e-2
    ):
        raise GeometryError(f"ImageOrientationPatient {orientation.tolist()} is not orthonormal")
    if (spacing <= 0).any():
        raise GeometryError(f"PixelSpacing {spacing.tolist()} must be positive")
    return SliceGeometry(position, orientation, spacing, (int(header.Rows), int(header.Columns)))


def group_by_position(
    geometries: list[SliceGeometry], tolerance_mm: float = POSITION_TOLERANCE_MM
) -> list[list[int]]:
    """Indices of the images of each slice: images grouped by their position along the normal
    (within ``tolerance_mm``), slices ordered by that position.

    Example:
        >>> z = lambda d: SliceGeometry(np.array([0, 0, d]), np.array([1., 0, 0, 0, 1, 0]),
        ...                             np.ones(2), (2, 2))
        >>> group_by_position([z(10.0), z(0.0), z(10.02), z(0.0)])
        [[1, 3], [0, 2]]
    """
    distances = np.array([g.distance_mm for g in geometries])
    order = np.argsort(distances, kind="stable")
    groups: list[list[int]] = []
    for index in order:
        if groups and distances[index] - distances[groups[-1][0]] < tolerance_mm:
            groups[-1].append(int(index))
        else:
            groups.append([int(index)])
    return [sorted(g) for g in groups]


def level_of_rank(rank: int, n_slices: int) -> str:
    """Short-axis level of the ``rank``-th of ``n_slices`` parallel slices ordered base -> apex:
    the slice centre ``(rank + 0.5) / n`` in the basal, mid or apical third of the stack (one
    slice: mid).

    Example:
        >>> [level_of_rank(k, 3) for k in range(3)], level_of_rank(0, 1)
        (['basal', 'mid', 'apical'], 'mid')
    """
    fraction = (rank + 0.5) / n_slices
    return "basal" if fraction < 1 / 3 else "mid" if fraction < 2 / 3 else "apical"


def apex_sign(geometry: SliceGeometry) -> float:
    """+1 when the slice normal points towards the apex (:data:`APEX_DIRECTION_LPS`), else -1."""
    return 1.0 if geometry.normal @ APEX_DIRECTION_LPS >= 0 else -1.0


def apical_distance_mm(geometry: SliceGeometry) -> float:
    """Position along the slice normal, signed so that it grows towards the apex."""
    return apex_sign(geometry) * geometry.distance_mm
