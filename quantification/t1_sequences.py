"""T1 models of the sequences sites acquire, on the vectorised solver of
:mod:`quantification.relaxometry` (every pixel at once; times in ms, signals in scanner units).

- ``stone``: ``|A (1 - 2 exp(-TI/T1))|``, two parameters, ideal inversion, magnitude data with
  polarity restoration (method.md §B2; the STONE sequence: Weingaertner S, Roujol S, Akcakaya M,
  Basha TA, Nezafat R. Free-breathing multislice native myocardial T1 mapping using the
  slice-interleaved T1 (STONE) sequence. Magn Reson Med 2015;74:115-124). ``stone_model="t1_3p"``
  fits ``|A - B exp(-TI/T1)|`` instead (imperfect inversion, T1 of the exponential).
- ``molli``: ``|A - B exp(-TI/T1*)|`` with polarity restoration (the samples before the signal
  minimum, or up to and including it, are negated; the lower residual wins), then the
  Look-Locker correction ``T1 = T1* (B/A - 1)`` (Messroghli DR, Radjenovic A, Kozerke S,
  Higgins DM, Sivananthan MU, Ridgway JP. Modified Look-Locker inversion recovery (MOLLI) for
  high-resolution T1 mapping of the heart. Magn Reson Med 2004;52:141-146; the correction:
  Deichmann R, Haase A. Quantification of T1 values by SNAPSHOT-FLASH NMR imaging. J Magn Reson
  1992;96:608-612). The readouts after each inversion make the magnetisation recover with the
  apparent ``T1* < T1`` towards the reduced steady state ``A = M0 T1*/T1``, from
  ``A - B = -M0``, so ``B/A - 1 = T1/T1*``. Any scheme, e.g. 5(3)3 native and 4(1)3(1)2
  post-contrast (Kellman P, Hansen MS. T1-mapping in the heart: accuracy and precision. J
  Cardiovasc Magn Reson 2014;16:2): the images of all inversions, sorted by TI, are fitted as
  one curve. Also used for a single-inversion ``look_locker`` series.
- ``shmolli``: MOLLI's model on the 5(1)1(1)1 scheme (7 images in 9 heartbeats) with its
  conditional use of the later inversions (Piechnik SK, Ferreira VM, Dall'Armellina E, Cochlin
  LE, Greiser A, Neubauer S, Robson MD. Shortened Modified Look-Locker Inversion recovery
  (ShMOLLI) for clinical myocardial T1-mapping at 1.5 and 3 T within a 9 heartbeat breathhold.
  J Cardiovasc Magn Reson 2010;12:69). Sorted by TI, the first inversion's images are samples
  0, 3, 4, 5, 6 (TI0, TI0 + RR, ... TI0 + 4 RR) and the second and third inversion's single
  images are samples 1 and 2 (TI0 + 80 and + 160 ms: the shortest TIs after TI0). Three fits per
  pixel: IR1 alone (5 samples), IR1 + IR2 (6), all (7). The magnetisation before IR2 and IR3
  has recovered for only ~1-2 RR, which is complete only for short T1, so, with RR the mean
  beat interval (``(TI[6] - TI[0]) / 4``) and ``chi = sqrt(RSS / (n - 1))`` of each fit:
  the 5-sample fit is used; if its T1 <= RR (or it failed, or the 6-sample T1 <= 0.4 RR, the
  safeguard of the open reference implementation, Werys K et al., Tomato) the 6-sample fit
  replaces it when ``chi6 T1_6 < chi5 RR``, and the 7-sample fit replaces that when
  ``chi7 T1_7 < 0.4 chi5 RR`` and the current T1 < RR. Pixels record 5, 6 or 7 in
  ``samples_used``.
- ``sasha``: three-parameter saturation recovery ``A (1 - B exp(-TS/T1))`` (Chow K, Flewitt JA,
  Green JD, Pagano JJ, Friedrich MG, Thompson RB. Saturation recovery single-shot acquisition
  (SASHA) for myocardial T1 mapping. Magn Reson Med 2014;71:2082-2095); B < 1 absorbs an
  imperfect saturation. No sign change, so no polarity restoration. The non-saturated image has
  ``TS = +inf`` (its signal is A). In the returned fit ``offset`` is ``A B`` (signal units) as
  for the other three-parameter models.

All models give a :class:`~quantification.relaxometry.RelaxometryFit` whose ``model`` is the
sequence name and ``t_ms`` the T1 (for MOLLI and ShMOLLI the corrected T1; the apparent T1* is in
``t_apparent_ms``). Pixels whose preparation amplitude is not positive (``B/A <= 1`` after an
inversion: the correction is undefined; ``B <= 0`` for a saturation) are flagged
:data:`FLAG_NO_PREPARATION` and NaN.

Pure NumPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quantification.relaxometry import RelaxometryFit, fit_t1

__all__ = [
    "FLAG_NO_PREPARATION",
    "SHMOLLI_IR1_SAMPLES",
    "T1_SEQUENCES",
    "SEQUENCE_FOR_ATTR",
    "fit_t1_sequence",
    "look_locker_t1",
    "resolve_t1_sequence",
    "shmolli_heart_interval_ms",
]

T1_SEQUENCES = ("stone", "molli", "shmolli", "sasha")
"""The T1 sequence models (``--t1-sequence``)."""
SEQUENCE_FOR_ATTR = {
    "stone": "stone", "molli": "molli", "shmolli": "shmolli", "sasha": "sasha",
    "look_locker": "molli",
}  # fmt: skip
"""Model used for each value of the mapping contract's slice attr ``sequence`` (a single
Look-Locker series is fitted like MOLLI: the same three-parameter model and correction)."""
FLAG_NO_PREPARATION = 32
"""The fitted preparation is not there: ``B/A <= 1`` after an inversion (the Look-Locker
correction is undefined) or ``B <= 0`` after a saturation."""
SHMOLLI_IR1_SAMPLES = (0, 3, 4, 5, 6)
"""Samples (sorted by TI) of ShMOLLI's first inversion; 1 and 2 come from the second and third."""
_SHMOLLI_IR12_SAMPLES = (0, 1, 3, 4, 5, 6)


def resolve_t1_sequence(requested: str, attr: str | None) -> tuple[str, str]:
    """The T1 model of a slice and where the choice came from.

    Args:
        requested: ``"auto"`` or one of :data:`T1_SEQUENCES` (the ``--t1-sequence`` flag).
        attr: the slice's ``sequence`` attr (None when absent).

    Returns:
        (model, source): source ``"flag"`` (given explicitly), ``"file"`` (from the attr) or
        ``"fallback"`` (auto without an attr: STONE, docs/method.md §B2).

    Raises:
        ValueError: an unknown request, or ``auto`` on a slice whose attr names no T1 sequence
        (``t2prep``).

    Example:
        >>> resolve_t1_sequence("auto", "look_locker"), resolve_t1_sequence("auto", None)
        (('molli', 'file'), ('stone', 'fallback'))
    """
    if requested != "auto":
        if requested not in T1_SEQUENCES:
            raise ValueError(f"T1 sequence {requested!r}; expected 'auto' or one of {T1_SEQUENCES}")
        return requested, "flag"
    if attr is None or attr == "":
        return "stone", "fallback"
    if attr not in SEQUENCE_FOR_ATTR:
        raise ValueError(
            f"slice attr sequence={attr!r} is not a T1 sequence; expected one of "
            f"{tuple(SEQUENCE_FOR_ATTR)} (or pass --t1-sequence)"
        )
    return SEQUENCE_FOR_ATTR[attr], "file"


def look_locker_t1(t_star_ms: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Look-Locker correction ``T1 = T1* (B/A - 1)`` element-wise (NaN where ``B/A <= 1``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.asarray(b, dtype=np.float64) / np.asarray(a, dtype=np.float64)
        return np.where(ratio > 1.0, np.asarray(t_star_ms) * (ratio - 1.0), np.nan)


def shmolli_heart_interval_ms(ti_ms: np.ndarray) -> float:
    """Mean beat interval RR (ms) of a ShMOLLI series: its first inversion's samples are one RR
    apart, ``(TI[6] - TI[0]) / 4`` with the 7 TIs sorted."""
    ti = np.sort(np.asarray(ti_ms, dtype=np.float64))
    if ti.size != 7:
        raise ValueError(f"ShMOLLI needs its 7 images (5(1)1(1)1); got {ti.size} times")
    return float((ti[6] - ti[0]) / 4.0)


def _with_flags(fit: RelaxometryFit, model: str, t1: np.ndarray, bad: np.ndarray,
                **extra: Any) -> RelaxometryFit:  # fmt: skip
    """The fit renamed to ``model`` with T1 ``t1``, ``bad`` pixels flagged and NaN."""
    flags = fit.flags | np.where(bad & (fit.flags == 0), FLAG_NO_PREPARATION, 0).astype(np.uint8)
    nan_where = flags != 0
    arrays = {
        "t_ms": np.where(nan_where, np.nan, t1),
        "amplitude": np.where(nan_where, np.nan, fit.amplitude),
        "offset": np.where(nan_where, np.nan, fit.offset),
    }
    return dataclasses.replace(fit, model=model, flags=flags, **arrays, **extra)


def _molli(signals: np.ndarray, ti_ms: np.ndarray, solver: dict[str, Any]) -> RelaxometryFit:
    fit = fit_t1(signals, ti_ms, model="t1_3p", **solver)
    t1 = look_locker_t1(fit.t_ms, fit.amplitude, fit.offset)
    return _with_flags(fit, "molli", t1, ~np.isfinite(t1), t_apparent_ms=fit.t_ms.copy())


def _sasha(signals: np.ndarray, ts_ms: np.ndarray, solver: dict[str, Any]) -> RelaxometryFit:
    fit = fit_t1(signals, ts_ms, model="t1_3p", restore_polarity=False, **solver)
    with np.errstate(invalid="ignore"):
        bad = ~(fit.offset > 0)
    return _with_flags(fit, "sasha", fit.t_ms, bad)


def _shmolli(signals: np.ndarray, ti_ms: np.ndarray, solver: dict[str, Any]) -> RelaxometryFit:
    rr = shmolli_heart_interval_ms(ti_ms)
    order = np.argsort(np.asarray(ti_ms, dtype=np.float64), kind="stable")
    y = np.asarray(signals, dtype=np.float64)[order]
    ti = np.asarray(ti_ms, dtype=np.float64)[order]
    subsets = (list(SHMOLLI_IR1_SAMPLES), list(_SHMOLLI_IR12_SAMPLES), list(range(7)))
    fits = [_molli(y[s], ti[s], solver) for s in subsets]
    t5, t6, t7 = (f.t_ms for f in fits)
    chi5, chi6, chi7 = (np.sqrt(f.rss / (len(s) - 1)) for f, s in zip(fits, subsets, strict=True))
    v5, v6, v7 = (f.flags == 0 for f in fits)
    chi5 = np.where(v5, chi5, np.inf)
    with np.errstate(invalid="ignore"):
        consider = ~v5 | (t5 <= rr) | (v6 & (t6 <= 0.4 * rr))
        take6 = consider & v6 & (chi6 * t6 < chi5 * rr)
        current = np.where(take6, t6, np.where(v5, t5, np.nan))
        take7 = consider & v7 & (chi7 * t7 < 0.4 * chi5 * rr) & (current < rr)
    used = np.where(take7, 7, np.where(take6, 6, 5)).astype(np.int8)
    chosen = {}
    for field in ("t_ms", "amplitude", "offset", "rss", "r_squared", "flags", "t_apparent_ms"):
        values = [getattr(f, field) for f in fits]
        chosen[field] = np.where(used == 7, values[2], np.where(used == 6, values[1], values[0]))
    # signs of every sample (also the unused ones) from the chosen curve
    with np.errstate(invalid="ignore", over="ignore"):
        model = chosen["amplitude"] - chosen["offset"] * np.exp(
            -ti.reshape((-1,) + (1,) * np.ndim(t5)) / chosen["t_apparent_ms"]
        )
    polarity = np.where(model < 0, -1, 1).astype(np.int8)[np.argsort(order)]
    return dataclasses.replace(
        fits[0], model="shmolli", polarity=polarity, samples_used=used, **chosen
    )


def fit_t1_sequence(
    signals: np.ndarray,
    times_ms: np.ndarray,
    sequence: str,
    *,
    stone_model: str = "t1_2p",
    **solver: Any,
) -> RelaxometryFit:
    """Pixel-wise T1 of a stack of images with the model of ``sequence`` (module docstring).

    Args:
        signals: float [N, *S] magnitude images (signed values are taken as magnitudes, except
            for SASHA, fitted as they are).
        times_ms: float [N] inversion (STONE, MOLLI, ShMOLLI) or saturation (SASHA; ``+inf`` for
            the non-saturated image) times in ms, any order (ShMOLLI: its 7 images).
        sequence: one of :data:`T1_SEQUENCES`.
        stone_model: STONE's model, ``"t1_2p"`` (docs/method.md §B2) or ``"t1_3p"``.
        **solver: passed to :func:`quantification.relaxometry.fit_t1` (``t_min_ms``,
            ``t_max_ms``, ``n_grid``, ``n_refine``, ``flat_tolerance``, ``chunk``); the search
            range is that of the fitted exponential (T1* for MOLLI and ShMOLLI).

    Returns:
        :class:`~quantification.relaxometry.RelaxometryFit` with T1 (ms) in ``t_ms``.

    Example:
        >>> ti = np.array([100, 180, 260, 1100, 1180, 1260, 2100, 3100.0])  # MOLLI 5(3)3, RR 1 s
        >>> t1, t1_star = 1000.0, 750.0  # continuous Look-Locker readout: A = M0 T1*/T1
        >>> s = np.abs(0.75 - 1.75 * np.exp(-ti / t1_star))[:, None]
        >>> round(float(fit_t1_sequence(s, ti, "molli").t_ms[0]), 2)
        1000.0
    """
    if sequence == "stone":
        if stone_model not in ("t1_2p", "t1_3p"):
            raise ValueError(f"stone_model must be 't1_2p' or 't1_3p', got {stone_model!r}")
        fit = fit_t1(signals, times_ms, model=stone_model, **solver)  # type: ignore[arg-type]
        return dataclasses.replace(fit, model="stone")
    if sequence == "molli":
        return _molli(signals, times_ms, solver)
    if sequence == "shmolli":
        return _shmolli(signals, times_ms, solver)
    if sequence == "sasha":
        return _sasha(signals, times_ms, solver)
    raise ValueError(f"T1 sequence {sequence!r}; expected one of {T1_SEQUENCES}")
