"""Polar resampling of the myocardium about its centroid (method.md §B2 step 4) and the inverse map.

Each image of a slice is resampled on a uniform grid of ``n_angles`` angles x ``n_depth``
transmural depths *within its own myocardial mask*: angle bin ``a`` is centred on
``theta_a = 2 pi (a + 0.5) / n_angles`` and depth bin ``d`` on the fraction
``(d + 0.5) / n_depth`` of the wall from the endocardial to the epicardial border along that
ray. Sample ``(a, d)`` therefore lies on the same piece of myocardium in every image of the slice
even when the heart moved or deformed slightly between images: this is the alignment, and the
relaxometry fit runs on the ``[N, n_angles, n_depth]`` stack. :func:`from_polar` maps a polar
map back to the Cartesian pixels of one reference image.

Conventions: pixel (row, col) centres at integer coordinates; angles counter-clockwise from the
+column axis with rows pointing down (``row = r0 - rho sin(theta)``, ``col = c0 + rho cos(theta)``),
in radians here (degrees in ``aha_segments``). Border radii per angle come from casting a ray
from the centroid through the bilinearly interpolated 0/1 mask at ``radial_step_px`` steps: the
first and last sample >= 0.5 (the pixel edges). Angles whose ray misses the mask (a gap in the
ring) get radii interpolated from the neighbouring angles (circularly). Image sampling is
bilinear.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from quantification.myocardium_shape import myocardium_centroid

__all__ = ["PolarGeometry", "from_polar", "polar_coordinates", "polar_geometry", "to_polar"]


@dataclass(frozen=True)
class PolarGeometry:
    """Where the polar grid of one image lies.

    Attributes:
        centre: (row, col) myocardial centroid in px.
        r_inner: float64 [n_angles] endocardial radius per angle bin, px.
        r_outer: float64 [n_angles] epicardial radius per angle bin, px.
        n_depth: number of transmural samples.
        shape: (H, W) of the image.
    """

    centre: tuple[float, float]
    r_inner: np.ndarray
    r_outer: np.ndarray
    n_depth: int
    shape: tuple[int, int]

    @property
    def n_angles(self) -> int:
        return int(self.r_inner.size)

    @property
    def angles_rad(self) -> np.ndarray:
        """float64 [n_angles] bin-centre angles in radians."""
        return 2 * np.pi * (np.arange(self.n_angles) + 0.5) / self.n_angles

    def sample_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) float64 [n_angles, n_depth] of the grid samples in px."""
        frac = (np.arange(self.n_depth) + 0.5) / self.n_depth
        rho = self.r_inner[:, None] + frac[None, :] * (self.r_outer - self.r_inner)[:, None]
        theta = self.angles_rad[:, None]
        return self.centre[0] - rho * np.sin(theta), self.centre[1] + rho * np.cos(theta)


def _fill_circular(values: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values)
    if ok.all():
        return values
    n = values.size
    idx = np.flatnonzero(ok)
    xp = np.concatenate([idx - n, idx, idx + n])
    fp = np.tile(values[idx], 3)
    return np.interp(np.arange(n), xp, fp)


def polar_geometry(
    mask: np.ndarray,
    *,
    n_angles: int = 120,
    n_depth: int = 16,
    radial_step_px: float = 0.25,
    centre: tuple[float, float] | None = None,
) -> PolarGeometry:
    """Polar grid of a myocardial mask (module docstring).

    Args:
        mask: [H, W] myocardium (non-zero), a ring.
        n_angles: angle bins over 360 degrees.
        n_depth: transmural samples from endo- to epicardium.
        radial_step_px: ray sampling step for the border radii, px.
        centre: (row, col) to use instead of the mask's centroid.

    Raises:
        ValueError: empty mask, or no ray meets it.
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2 or not m.any():
        raise ValueError(f"need a non-empty [H, W] mask, got shape {m.shape}")
    r0, c0 = myocardium_centroid(m) if centre is None else centre
    rows, cols = np.nonzero(m)
    r_max = float(np.hypot(rows - r0, cols - c0).max()) + 2.0
    rho = np.arange(0.0, r_max, radial_step_px)
    theta = 2 * np.pi * (np.arange(n_angles) + 0.5) / n_angles
    rr = r0 - rho[None, :] * np.sin(theta)[:, None]
    cc = c0 + rho[None, :] * np.cos(theta)[:, None]
    inside = ndimage.map_coordinates(m, [rr, cc], order=1, cval=0.0) >= 0.5
    hit = inside.any(axis=1)
    if not hit.any():
        raise ValueError("no ray from the centroid meets the mask")
    first = np.argmax(inside, axis=1)
    last = rho.size - 1 - np.argmax(inside[:, ::-1], axis=1)
    r_in = np.where(hit, rho[first], np.nan)
    r_out = np.where(hit, rho[last], np.nan)
    return PolarGeometry(
        centre=(float(r0), float(c0)),
        r_inner=_fill_circular(r_in),
        r_outer=_fill_circular(r_out),
        n_depth=int(n_depth),
        shape=(int(m.shape[0]), int(m.shape[1])),
    )


def to_polar(images: np.ndarray, geometry: PolarGeometry) -> np.ndarray:
    """Bilinear samples of images on a polar grid.

    Args:
        images: float [H, W] or [N, H, W] (all sampled with the same geometry).
        geometry: from :func:`polar_geometry`.

    Returns:
        float64 [n_angles, n_depth] or [N, n_angles, n_depth].
    """
    x = np.asarray(images, dtype=np.float64)
    rows, cols = geometry.sample_points()
    stack = x[None] if x.ndim == 2 else x
    out = np.stack(
        [ndimage.map_coordinates(img, [rows, cols], order=1, mode="nearest") for img in stack]
    )
    return out[0] if x.ndim == 2 else out


def polar_coordinates(geometry: PolarGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous polar grid coordinates of every Cartesian pixel of the geometry's image.

    Returns:
        (angle float64 [H, W] in bin units (bin a centred on a), depth fraction float64 [H, W]
        (0 = endocardial, 1 = epicardial border), inside bool [H, W] = depth in [0, 1]).
    """
    h, w = geometry.shape
    r0, c0 = geometry.centre
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = np.mod(np.arctan2(r0 - rows, cols - c0), 2 * np.pi)
    rho = np.hypot(rows - r0, cols - c0)
    a = theta / (2 * np.pi) * geometry.n_angles - 0.5
    r_in = _circular_interp(geometry.r_inner, a)
    r_out = _circular_interp(geometry.r_outer, a)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = (rho - r_in) / (r_out - r_in)
    inside = (depth >= 0) & (depth <= 1)
    return a, depth, inside


def _circular_interp(values: np.ndarray, a: np.ndarray) -> np.ndarray:
    n = values.size
    i0 = np.floor(a).astype(np.int64)
    w = a - i0
    return (1 - w) * values[np.mod(i0, n)] + w * values[np.mod(i0 + 1, n)]


def from_polar(
    polar: np.ndarray, geometry: PolarGeometry, region: np.ndarray | None = None
) -> np.ndarray:
    """Map polar maps back to the Cartesian pixels of the geometry's image (bilinear).

    Args:
        polar: float [n_angles, n_depth] or [K, n_angles, n_depth] (NaN allowed: a pixel whose
            interpolation touches a NaN sample is NaN).
        geometry: the reference image's geometry.
        region: optional bool [H, W]; pixels outside it are NaN too.

    Returns:
        float64 [H, W] or [K, H, W]; NaN outside the ring (and outside ``region``).
    """
    p = np.asarray(polar, dtype=np.float64)
    stack = p[None] if p.ndim == 2 else p
    if stack.shape[1:] != (geometry.n_angles, geometry.n_depth):
        raise ValueError(
            f"polar maps must be [..., {geometry.n_angles}, {geometry.n_depth}], got {p.shape}"
        )
    a, depth, inside = polar_coordinates(geometry)
    if region is not None:
        inside &= np.asarray(region, dtype=bool)
    d = np.clip(depth[inside] * geometry.n_depth - 0.5, 0.0, geometry.n_depth - 1.0)
    aa = a[inside]
    a0 = np.floor(aa).astype(np.int64)
    wa = aa - a0
    a0 %= geometry.n_angles
    a1 = (a0 + 1) % geometry.n_angles
    d0 = (
        np.minimum(np.floor(d).astype(np.int64), geometry.n_depth - 2)
        if geometry.n_depth > 1
        else np.zeros_like(a0)
    )
    wd = d - d0 if geometry.n_depth > 1 else np.zeros_like(d)
    d1 = np.minimum(d0 + 1, geometry.n_depth - 1)
    out = np.full((stack.shape[0],) + geometry.shape, np.nan)
    for k, m in enumerate(stack):
        v = (
            (1 - wa) * (1 - wd) * m[a0, d0]
            + (1 - wa) * wd * m[a0, d1]
            + wa * (1 - wd) * m[a1, d0]
            + wa * wd * m[a1, d1]
        )
        out[k][inside] = v
    return out[0] if p.ndim == 2 else out
