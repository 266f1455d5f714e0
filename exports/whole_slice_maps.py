"""Whole-slice T1 and T2 maps: every pixel of a slice fitted in its native geometry, the way the
scanner's own maps look, with no segmentation, alignment or segments.

This is what ``python -m exports mapping --t1 ... | --input ...`` writes when neither
``--model`` nor masks in the file are given, and what the MRD server returns for a mapping
series. Per slice:

1. The noise is measured (:func:`quantification.noise_floor.slice_noise`: the image frame when
   it is verified to be air, else the residuals of this fit on the slice's pixels) and the
   Rician noise floor removed; when no noise can be measured nothing is removed and the reason
   is recorded (``noise_note``).
2. Pixels with signal: the largest of the N images is at least :data:`SIGNAL_SNR` sigma (or, when
   no noise can be measured, at least :data:`SIGNAL_FRACTION` of the slice's largest signal);
   air and lung stay NaN.
3. The fit of every pixel with signal, all at once: T1 with the sequence's model
   (:mod:`quantification.t1_sequences`: STONE, MOLLI with the Look-Locker correction, ShMOLLI,
   SASHA), T2 with ``t2_model`` (default the offset B/A shared by the slice, estimated from up to
   :data:`OFFSET_PIXELS` pixels with signal, then two free parameters per pixel; ``"t2_3p"``: B
   free per pixel, method.md §B2). Pixels whose fit fails (flat, non-convergent, no preparation,
   T on the edge of the search range) are NaN.

Importable with NumPy and SciPy only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from quantification.noise_floor import NoiseEstimate, remove_noise_floor, slice_noise
from quantification.relaxometry import RelaxometryFit, estimate_offset_fraction, fit_t2
from quantification.t1_sequences import fit_t1_sequence, resolve_t1_sequence

__all__ = [
    "OFFSET_PIXELS",
    "SIGNAL_FRACTION",
    "SIGNAL_SNR",
    "WholeSliceMap",
    "free_parameters",
    "whole_slice_map",
]

log = logging.getLogger(__name__)

SIGNAL_SNR = 5.0
"""A pixel is fitted when its largest signal is at least this many noise SDs."""
SIGNAL_FRACTION = 0.05
"""Without a measurable noise level: at least this fraction of the slice's largest signal."""
OFFSET_PIXELS = 4096
"""Pixels (evenly spread over those with signal) that estimate a slice's shared T2 offset."""
T2_MODELS = ("t2_shared_offset", "t2_3p")


@dataclass(frozen=True)
class WholeSliceMap:
    """A whole-slice map.

    Attributes:
        map_ms: float32 [H, W] T1 or T2 (ms), NaN where there is no signal or the fit failed.
        r_squared: float32 [H, W] coefficient of determination of each pixel's fit (NaN where
            not fitted).
        noise: the slice's noise and where it was measured.
        floor_removed: whether the Rician floor was removed before the fit.
    """

    map_ms: np.ndarray
    r_squared: np.ndarray
    noise: NoiseEstimate
    floor_removed: bool

    def details(self) -> dict[str, object]:
        """JSON-able record of the noise and the floor correction."""
        return {**self.noise.as_details(), "noise_floor_removed": self.floor_removed}


def free_parameters(quantity: str, sequence: str, t2_model: str, stone_model: str = "t1_2p"
                    ) -> int:  # fmt: skip
    """Parameters fitted per pixel: 2 for STONE's ``t1_2p`` and the shared-offset T2 model,
    else 3 (A, B and T)."""
    if quantity == "t1":
        return 2 if sequence in ("stone", "auto") and stone_model == "t1_2p" else 3
    return 2 if t2_model == "t2_shared_offset" else 3


def _signal_pixels(images: np.ndarray, sigma: float) -> np.ndarray:
    peak = images.max(axis=0)
    if np.isfinite(sigma) and sigma > 0:
        return peak >= SIGNAL_SNR * sigma
    return peak >= SIGNAL_FRACTION * max(float(peak.max()), 1e-30)


def _fit(
    curves: np.ndarray, times: np.ndarray, quantity: str, sequence: str, t2_model: str
) -> RelaxometryFit:
    if quantity == "t1":
        used, source = resolve_t1_sequence(sequence, None)
        if source == "fallback":
            log.warning("whole-slice T1: sequence 'auto' and none known; fitted with the STONE "
                        "model (docs/method.md §B2)")  # fmt: skip
        return fit_t1_sequence(curves, times, used)
    if sequence not in ("auto", "t2prep"):
        raise ValueError(f"T2 maps are fitted from T2-prepared images; got sequence {sequence!r}")
    beta = None
    if t2_model == "t2_shared_offset":
        step = max(1, curves.shape[1] // OFFSET_PIXELS)
        beta = estimate_offset_fraction(curves[:, ::step], times)
    return fit_t2(curves, times, offset_fraction=beta)


def whole_slice_map(
    images: np.ndarray,
    times_ms: np.ndarray,
    quantity: str,
    sequence: str = "auto",
    *,
    t2_model: str = "t2_shared_offset",
    noise_floor_correction: bool = True,
) -> WholeSliceMap:
    """Fit every pixel of one slice (module docstring).

    Args:
        images: float [N, H, W] magnitude weighted images of the slice.
        times_ms: float [N] inversion / saturation times (T1; SASHA's non-saturated image +inf)
            or T2-prep echo times (T2), ms.
        quantity: ``"t1"`` or ``"t2"``.
        sequence: T1: ``"auto"`` (no sequence known: STONE, with a log line) or one of
            :data:`quantification.t1_sequences.T1_SEQUENCES`; T2: ``"auto"`` or ``"t2prep"``.
        t2_model: ``"t2_shared_offset"`` (default) or ``"t2_3p"``.
        noise_floor_correction: remove the Rician noise floor before the fit.

    Returns:
        :class:`WholeSliceMap` in the images' [H, W].

    Raises:
        ValueError: bad shapes, quantity, sequence or model.

    Example:
        >>> ti = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])
        >>> t1 = np.full((4, 5), 1000.0)
        >>> images = np.abs(800 * (1 - 2 * np.exp(-ti[:, None, None] / t1)))
        >>> result = whole_slice_map(images, ti, "t1", "stone")
        >>> float(np.round(result.map_ms, 3).max()), result.map_ms.dtype.name
        (1000.0, 'float32')
    """
    y = np.asarray(images, dtype=np.float64)
    times = np.asarray(times_ms, dtype=np.float64)
    if y.ndim != 3 or times.shape != y.shape[:1]:
        raise ValueError(f"images must be [N, H, W] with N = len(times_ms); got {y.shape} and "
                         f"{times.shape}")  # fmt: skip
    if quantity not in ("t1", "t2"):
        raise ValueError(f"quantity must be 't1' or 't2', got {quantity!r}")
    if t2_model not in T2_MODELS:
        raise ValueError(f"t2_model must be one of {T2_MODELS}, got {t2_model!r}")
    noise = slice_noise(
        y, lambda curves: _fit(curves, times, quantity, sequence, t2_model),
        free_parameters(quantity, sequence, t2_model),
    )  # fmt: skip
    sigma = noise.sigma
    removed = noise_floor_correction and noise.measured
    if removed:
        y = remove_noise_floor(y, sigma)
    fitted = _signal_pixels(y, sigma)
    map_ms = np.full(y.shape[1:], np.nan, dtype=np.float32)
    r_squared = np.full(y.shape[1:], np.nan, dtype=np.float32)
    if fitted.any():
        fit = _fit(y[:, fitted], times, quantity, sequence, t2_model)
        map_ms[fitted] = fit.t_ms
        r_squared[fitted] = np.where(fit.valid, fit.r_squared, np.nan)
    return WholeSliceMap(map_ms, r_squared, noise, removed)
