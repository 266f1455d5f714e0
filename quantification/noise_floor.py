"""Rician noise floor of magnitude images: noise level from the background, floor removal.

A magnitude image of signal S with complex Gaussian noise of SD sigma per channel is Rician:
``E[M^2] = S^2 + 2 sigma^2``, so a low signal (a late T2-prepared echo, an inversion-recovery
image near the null point) reads high by up to ``sigma sqrt(pi / 2)``. Relaxation fits then see
a floor the model does not have: with the T2 offset shared by a slice, the floor was read as
offset and T2 came out low (phantoms, SNR 10-60: -0.8 ms per segment).

- :func:`background_sigma`: sigma from the air of the image frame (a strip along the image
  border). Per frame pixel the power ``P = mean_n M_n^2 / 2`` over the N images is, in air,
  ``sigma^2`` times a Gamma(N, 1/N) variable (``M^2 / 2 sigma^2`` is exponential), which pooling
  over the images makes narrow: a pixel of dark tissue with a signal of 2 sigma has ``P = 3
  sigma^2``, beyond the air's 99.9th percentile for N >= 6. A start from the median of ``P``,
  then a few rounds of its mean below that percentile (divided by the truncated Gamma's mean).
  On 10 MOLLI phantom acquisitions (whole field of view, SNR 10-60) within 0.5 % of the true
  sigma.
- :func:`remove_noise_floor`: ``sqrt(max(M^2 - 2 sigma^2, 0))``, unbiased for ``S^2``.

The frame is air only on a field of view wider than the body. On a crop around the heart it is
tissue, and the frame "sigma" was 5-28 times the true one on phantom crops: the floor removed
was then most of the signal, and maps lost most of their pixels or went NaN. So the frame is
used only once it is *verified* to be air (:func:`air_sigma`: at least
:data:`MIN_AIR_FRACTION` of the frame pixels below the cut-off, and their powers distributed as
air's, Kolmogorov-Smirnov distance at most :data:`MAX_AIR_KS`; phantom crops without air:
0.13-0.25, docs/mapping.md). Otherwise the noise is
measured from the residuals of the slice's own relaxation fits (:func:`residual_sigma`: at high
SNR the magnitude noise is Gaussian of SD sigma, so ``RSS / sigma^2`` is chi-square with
``N - p`` degrees of freedom, whose median is robust to the few pixels that motion or partial
volume misfit). :func:`slice_noise` applies that rule and says which source it used, or why
the noise could not be measured (then no floor is removed, ``docs/mapping.md``).

Pure NumPy and SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

__all__ = [
    "BACKGROUND_BORDER_PX",
    "MAX_AIR_KS",
    "MIN_AIR_FRACTION",
    "NoiseEstimate",
    "air_sigma",
    "background_sigma",
    "remove_noise_floor",
    "residual_sigma",
    "slice_noise",
]

BACKGROUND_BORDER_PX = 6
"""Width of the image frame taken as air background, px."""
_AIR_QUANTILE = 0.999
"""Frame pixels whose power is below this quantile of the air's distribution count as air."""
MIN_AIR_FRACTION = 0.5
"""The frame is air when at least this fraction of its pixels counts as air..."""
MAX_AIR_KS = 0.05
"""...and when the Kolmogorov-Smirnov distance of their powers to the air's distribution
(truncated at :data:`_AIR_QUANTILE`) is at most this (docs/mapping.md)."""
RESIDUAL_PIXELS = 4096
"""Pixels with signal (evenly spread) whose fit residuals measure the noise."""
RESIDUAL_SIGNAL_FRACTION = 0.05
"""Those pixels' largest signal is at least this fraction of the slice's largest signal."""


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise SD of a slice and where it came from.

    Attributes:
        sigma: SD per channel (signal units); NaN when it could not be measured.
        source: ``"background"`` (verified air in the image frame), ``"residuals"`` (the fit
            residuals of the slice's pixels) or ``"none"``.
        note: why the background was not used, or why nothing could be measured ("" when the
            background was used).
    """

    sigma: float
    source: str
    note: str = ""

    @property
    def measured(self) -> bool:
        """Whether ``sigma`` is a usable positive number."""
        return bool(np.isfinite(self.sigma) and self.sigma > 0)

    def as_details(self) -> dict[str, Any]:
        """JSON-able record for a slice's details."""
        return {"noise_sigma": self.sigma, "noise_source": self.source, "noise_note": self.note}


def _frame_power(images: np.ndarray, border_px: int) -> np.ndarray | None:
    """float64 [P] the power ``mean_n M_n^2 / 2`` of each frame pixel (None: no frame)."""
    x = np.asarray(images, dtype=np.float64)
    x = x[None] if x.ndim == 2 else x
    height, width = x.shape[-2:]
    b = int(border_px)
    if b <= 0 or 2 * b >= min(height, width):
        return None
    frame = np.ones((height, width), dtype=bool)
    frame[b:-b, b:-b] = False
    values = x[:, frame]
    return np.einsum("np,np->p", values, values) / (2.0 * values.shape[0])


def _air_fit(power: np.ndarray, n_images: int) -> tuple[float, np.ndarray, float]:
    """(sigma, bool [P] air pixels, cut-off in units of sigma^2) of frame powers."""
    air_power = stats.gamma(n_images, scale=1.0 / n_images)  # P / sigma^2 in air
    cut = float(air_power.ppf(_AIR_QUANTILE))
    truncated_mean = float(special.gammainc(n_images + 1, n_images * cut)
                           / special.gammainc(n_images, n_images * cut))  # fmt: skip
    variance = float(np.median(power) / air_power.median())
    air = power < cut * variance
    for _ in range(5):  # converges in 2-3 rounds
        if not air.any():
            break
        variance = float(np.mean(power[air]) / truncated_mean)
        air = power < cut * variance
    return float(np.sqrt(variance)), air, cut


def background_sigma(images: np.ndarray, border_px: int = BACKGROUND_BORDER_PX) -> float:
    """Noise SD per channel (signal units) of magnitude images [N, H, W] (or [H, W]).

    From the frame ``border_px`` wide over all images (module docstring), assuming it is air
    (:func:`air_sigma` checks that). Returns NaN when the frame is empty (images too small) and
    0 when it is all zero (zero-filled background).
    """
    power = _frame_power(images, border_px)
    if power is None:
        return float("nan")
    n_images = 1 if np.ndim(images) == 2 else int(np.shape(images)[0])
    return _air_fit(power, n_images)[0]


def remove_noise_floor(magnitude: np.ndarray, sigma: float) -> np.ndarray:
    """``sqrt(max(M^2 - 2 sigma^2, 0))`` element-wise (float64, same shape); sigma in signal
    units (NaN or <= 0: returned unchanged)."""
    m = np.asarray(magnitude, dtype=np.float64)
    if not np.isfinite(sigma) or sigma <= 0:
        return m.copy()
    return np.sqrt(np.maximum(m * m - 2.0 * sigma * sigma, 0.0))


def air_sigma(images: np.ndarray, border_px: int = BACKGROUND_BORDER_PX) -> tuple[float, str]:
    """``(sigma, "")`` from the image frame when it is verified to be air, else ``(NaN, why)``.

    At least :data:`MIN_AIR_FRACTION` of the frame pixels must count as air, and their powers
    follow the air's truncated Gamma distribution (Kolmogorov-Smirnov distance <=
    :data:`MAX_AIR_KS`).
    """
    power = _frame_power(images, border_px)
    if power is None:
        return float("nan"), f"image {np.shape(images)[-2:]} too small for a {border_px} px frame"
    if not power.any():
        return float("nan"), "the image frame is zero-filled"
    n_images = 1 if np.ndim(images) == 2 else int(np.shape(images)[0])
    sigma, air, cut = _air_fit(power, n_images)
    fraction = float(air.mean())
    if fraction < MIN_AIR_FRACTION:
        return float("nan"), f"only {fraction:.0%} of the image frame looks like air"
    air_power = stats.gamma(n_images, scale=1.0 / n_images)
    cdf = air_power.cdf(np.sort(power[air]) / sigma**2) / air_power.cdf(cut)
    steps = np.arange(1, cdf.size + 1) / cdf.size
    distance = float(max(np.max(steps - cdf), np.max(cdf - (steps - 1.0 / cdf.size))))
    if distance > MAX_AIR_KS:
        return float("nan"), (f"the image frame is not air (KS distance {distance:.3f} > "
                              f"{MAX_AIR_KS}): tissue, or a filtered background")  # fmt: skip
    return sigma, ""


def residual_sigma(rss: np.ndarray, degrees_of_freedom: np.ndarray | int) -> float:
    """Noise SD from the residual sums of squares of pixel fits: ``sqrt(median(RSS / k) /
    (median of chi-square(k) / k))`` over the finite pixels, ``k = N - parameters`` (scalar or
    per pixel, >= 1); NaN without any."""
    r = np.asarray(rss, dtype=np.float64).ravel()
    k = np.broadcast_to(np.asarray(degrees_of_freedom, dtype=np.float64), np.shape(rss)).ravel()
    ok = np.isfinite(r) & (k >= 1)
    if not ok.any():
        return float("nan")
    scaled = r[ok] / stats.chi2.median(k[ok])
    return float(np.sqrt(np.median(scaled)))


def slice_noise(
    images: np.ndarray,
    fit: Callable[[np.ndarray], Any],
    n_parameters: int,
    border_px: int = BACKGROUND_BORDER_PX,
) -> NoiseEstimate:
    """The noise of one slice's magnitude images [N, H, W]: verified air in the frame
    (:func:`air_sigma`), else the residuals of ``fit`` (curves [N, P] -> a
    :class:`quantification.relaxometry.RelaxometryFit`, ``n_parameters`` free per pixel) on up
    to :data:`RESIDUAL_PIXELS` pixels with signal (:func:`residual_sigma`), else ``"none"``
    with the reasons."""
    x = np.asarray(images, dtype=np.float64)
    sigma, why = air_sigma(x, border_px)
    if np.isfinite(sigma):
        return NoiseEstimate(sigma, "background")
    peak = x.max(axis=0)
    pixels = np.flatnonzero(peak >= RESIDUAL_SIGNAL_FRACTION * max(float(peak.max()), 1e-30))
    pixels = pixels[:: max(1, pixels.size // RESIDUAL_PIXELS)]
    if pixels.size == 0:
        return NoiseEstimate(float("nan"), "none", f"{why}; no pixel with signal")
    result = fit(x.reshape(x.shape[0], -1)[:, pixels])
    used = x.shape[0] if result.samples_used is None else result.samples_used
    dof = np.asarray(used) - int(n_parameters)
    rss = np.where(result.valid, result.rss, np.nan)
    sigma = residual_sigma(rss, dof)
    if not (np.isfinite(sigma) and sigma > 0):
        return NoiseEstimate(float("nan"), "none", f"{why}; no fit residuals to measure it from")
    return NoiseEstimate(sigma, "residuals", why)
