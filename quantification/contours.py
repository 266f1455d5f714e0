"""Outlines of binary masks as closed polygons along the pixel edges (for ROI overlays).

Pixel (r, c) covers the square [r, r + 1] x [c, c + 1] in (row, column) coordinates, so an
outline runs through pixel corners, with coordinates from 0 to the number of rows / columns: the
ROI convention of FIRE (``ROI_*`` image meta) and of DICOM overlays. Every mask pixel edge that
faces a pixel outside the mask is a boundary edge, oriented clockwise on screen (rows down) around
the mask, so outer boundaries run clockwise and holes anticlockwise. Edges are chained into loops;
where two mask pixels touch only at a corner the loop continues into the diagonal neighbour, so an
8-connected blob has a single outer outline (as ``quantification.lv_mask`` defines LV blobs).
Collinear runs are merged: a 5 x 3 rectangle is 4 corners.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_outlines"]

# boundary edges of a pixel at (r, c), as (corner from, corner to) offsets, clockwise on screen,
# keyed by the neighbour that must be outside the mask
_EDGES = {
    (-1, 0): ((0, 0), (0, 1)),  # top: left to right
    (0, 1): ((0, 1), (1, 1)),  # right: top to bottom
    (1, 0): ((1, 1), (1, 0)),  # bottom: right to left
    (0, -1): ((1, 0), (0, 0)),  # left: bottom to top
}


def _boundary_edges(mask: np.ndarray) -> np.ndarray:
    """int64 [E, 2, 2]: (from, to) corner of every boundary edge."""
    padded = np.pad(mask, 1)
    edges = []
    for (dr, dc), (start, end) in _EDGES.items():
        outside = ~padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        rows, cols = np.nonzero(mask & outside)
        corners = np.stack([rows, cols], axis=1)[:, None, :] + np.array([start, end])[None]
        edges.append(corners)
    return np.concatenate(edges).astype(np.int64)


def _turn(direction: tuple[int, int], candidate: tuple[int, int]) -> int:
    """0 left, 1 straight, 2 right of ``candidate`` relative to ``direction`` (rows down)."""
    cross = direction[0] * candidate[1] - direction[1] * candidate[0]
    return 1 if cross == 0 else (0 if cross > 0 else 2)


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask.

    Args:
        mask: bool or integer [H, W]; nonzero pixels are inside.

    Returns:
        One float64 [K + 1, 2] array of (row, col) corners per loop, the first point repeated at
        the end; outer boundaries clockwise, holes anticlockwise; largest loop (most corners of
        the unmerged edge chain) first. Empty list for an empty mask.

    Example:
        >>> mask = np.zeros((4, 5), bool); mask[1:3, 1:4] = True
        >>> mask_outlines(mask)[0].tolist()
        [[1.0, 1.0], [1.0, 4.0], [3.0, 4.0], [3.0, 1.0], [1.0, 1.0]]
    """
    mask = np.asarray(mask) != 0
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    edges = _boundary_edges(mask)
    leaving: dict[tuple[int, int], list[int]] = {}
    for k, (start, _) in enumerate(edges.tolist()):
        leaving.setdefault(tuple(start), []).append(k)
    used = np.zeros(len(edges), dtype=bool)
    loops: list[list[tuple[int, int]]] = []
    for first in range(len(edges)):
        if used[first]:
            continue
        loop, k = [], first
        while not used[k]:
            used[k] = True
            start, end = (tuple(p) for p in edges[k].tolist())
            loop.append(start)
            direction = (end[0] - start[0], end[1] - start[1])
            free = [j for j in leaving[end] if not used[j]]
            if not free:
                break
            k = min(free, key=lambda j: _turn(direction, tuple(edges[j, 1] - edges[j, 0])))
        loops.append(loop)
    loops.sort(key=len, reverse=True)
    return [_merge_collinear(np.array(loop, dtype=np.float64)) for loop in loops]


def _merge_collinear(points: np.ndarray) -> np.ndarray:
    """The loop's corners without the points inside straight runs, closed."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    corner = (before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) != 0
    kept = points[corner]
    return np.concatenate([kept, kept[:1]])
