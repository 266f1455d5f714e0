"""Rician noise floor of magnitude images: noise level from the background, floor removal.

A magnitude image of signal S with complex Gaussian noise of SD sigma per channel is Rician:
``E[M^2] = S^2 + 2 sigma^2``, so a low signal (a late T2-prepared echo, an inversion-recovery
image near the null point) reads high by up to ``sigma sqrt(pi / 2)``. Relaxation fits then see
a floor the model does not have: with the T2 offset shared by a slice, the floor was read as
offset and T2 came out low (phantoms, SNR 10-60: -0.8 ms per segment).

- :func:`background_sigma`: sigma from the air of the image frame (a strip along the image
  border): there ``M`` is Rayleigh distributed and ``median(M) = sigma sqrt(2 ln 2)``; the
  median ignores a minority of tissue in the strip (measured on the phantoms: within +6 % of
  the true sigma).
- :func:`remove_noise_floor`: ``sqrt(max(M^2 - 2 sigma^2, 0))``, unbiased for ``S^2``.

Pure NumPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKGROUND_BORDER_PX", "background_sigma", "remove_noise_floor"]

BACKGROUND_BORDER_PX = 6
"""Width of the image frame taken as air background, px."""


def background_sigma(images: np.ndarray, border_px: int = BACKGROUND_BORDER_PX) -> float:
    """Noise SD per channel (signal units) of magnitude images [N, H, W] (or [H, W]).

    The median of the frame ``border_px`` wide over all images, divided by ``sqrt(2 ln 2)``.
    Returns NaN when the frame is empty (images too small).
    """
    x = np.asarray(images, dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    height, width = x.shape[-2:]
    b = int(border_px)
    if b <= 0 or 2 * b >= min(height, width):
        return float("nan")
    frame = np.ones((height, width), dtype=bool)
    frame[b:-b, b:-b] = False
    return float(np.median(x[:, frame]) / np.sqrt(2.0 * np.log(2.0)))


def remove_noise_floor(magnitude: np.ndarray, sigma: float) -> np.ndarray:
    """``sqrt(max(M^2 - 2 sigma^2, 0))`` element-wise (float64, same shape); sigma in signal
    units (NaN or <= 0: returned unchanged)."""
    m = np.asarray(magnitude, dtype=np.float64)
    if not np.isfinite(sigma) or sigma <= 0:
        return m.copy()
    return np.sqrt(np.maximum(m * m - 2.0 * sigma * sigma, 0.0))
