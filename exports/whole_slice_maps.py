"""Whole-slice T1 and T2 maps: a pixel-wise fit of every pixel of the weighted images.

What the scanner shows without a myocardium model: every pixel fitted, no segmentation. Fits are
those of :mod:`quantification.relaxometry` (vectorised variable projection):

============================  ====================================================  ==========
``quantity``, ``sequence``    model                                                 T reported
============================  ====================================================  ==========
t1, ``auto`` / ``stone``      ``|A (1 - 2 exp(-TI/T1))|`` (ideal inversion,          T1
                              ``t1_2p``)
t1, ``molli`` / ``shmolli``   ``|A - B exp(-TI/T1*)|`` (``t1_3p``), then the         T1* (B/A - 1)
/ ``look_locker``             Look-Locker correction
t1, ``sasha``                 ``|A - B exp(-TS/T1)|`` (saturation recovery,          T1
                              ``t1_3p``, B ~ A)
t2, ``auto`` / ``t2prep``     ``A exp(-TE/T2) + B`` (``t2_3p``)                      T2
============================  ====================================================  ==========

Pixels whose fit fails (flat background, no interior minimum, non-physical amplitudes, a
Look-Locker ratio B/A <= 1) are NaN in ``map_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantification.relaxometry import fit_t1, fit_t2

__all__ = ["SEQUENCES", "WholeSliceMap", "whole_slice_map"]

SEQUENCES = {
    "t1": ("auto", "stone", "molli", "shmolli", "look_locker", "sasha"),
    "t2": ("auto", "t2prep"),
}
"""Accepted ``sequence`` per ``quantity``."""
_MIN_IMAGES = {"t1_2p": 3, "t1_3p": 4, "t2_3p": 4}
"""Images a fit needs: one more than its parameters."""


@dataclass(frozen=True)
class WholeSliceMap:
    """A whole-slice relaxation map.

    Attributes:
        map_ms: float32 [H, W] T1 or T2 in ms, NaN where the fit failed.
        r_squared: float32 [H, W] coefficient of determination of each pixel's fit.
    """

    map_ms: np.ndarray
    r_squared: np.ndarray


def whole_slice_map(
    images: np.ndarray, times_ms: np.ndarray, quantity: str, sequence: str = "auto"
) -> WholeSliceMap:
    """Fit every pixel of a slice's weighted images.

    Args:
        images: float [N, H, W] weighted images of one slice.
        times_ms: float [N] inversion / saturation times (T1) or T2-prep durations (T2), ms.
        quantity: ``"t1"`` or ``"t2"``.
        sequence: the preparation (module docstring); ``"auto"``: STONE-like ideal inversion
            for T1, T2-prep for T2.

    Raises:
        ValueError: unknown quantity or sequence, shapes that do not match, or fewer images
            than the model needs.

    Example:
        >>> te = np.array([0.0, 25, 35, 45, 55, 60])
        >>> images = 900 * np.exp(-te / 50)[:, None, None] + np.zeros((6, 2, 3))
        >>> np.round(whole_slice_map(images, te, "t2").map_ms, 1).tolist()
        [[50.0, 50.0, 50.0], [50.0, 50.0, 50.0]]
    """
    if quantity not in SEQUENCES:
        raise ValueError(f"quantity {quantity!r}; expected one of {sorted(SEQUENCES)}")
    if sequence not in SEQUENCES[quantity]:
        raise ValueError(f"{quantity} sequence {sequence!r}; expected one of {SEQUENCES[quantity]}")
    images = np.asarray(images, dtype=np.float64)
    times = np.asarray(times_ms, dtype=np.float64)
    if images.ndim != 3 or times.shape != images.shape[:1]:
        raise ValueError(
            f"images must be [N, H, W] with times [N]; got {images.shape} and {times.shape}"
        )
    model = "t2_3p" if quantity == "t2" else ("t1_2p" if sequence in ("auto", "stone") else "t1_3p")
    if len(times) < _MIN_IMAGES[model]:
        raise ValueError(
            f"{len(times)} images; a {quantity.upper()} fit ({model}) needs at least "
            f"{_MIN_IMAGES[model]}"
        )
    if model == "t2_3p":
        fit = fit_t2(images, times)
    else:
        fit = fit_t1(images, times, model=model)  # type: ignore[arg-type]
    t_ms = fit.t_ms
    if sequence in ("molli", "shmolli", "look_locker"):
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = fit.offset / fit.amplitude
            t_ms = np.where(ratio > 1.0, t_ms * (ratio - 1.0), np.nan)
    return WholeSliceMap(map_ms=t_ms.astype(np.float32), r_squared=fit.r_squared.astype(np.float32))
