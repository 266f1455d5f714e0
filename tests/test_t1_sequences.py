"""T1 sequence models: exact on analytic signals, the same answers as a per-pixel
``scipy.optimize.curve_fit`` on noisy phantom pixels, ShMOLLI's conditional sample use."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import OptimizeWarning, curve_fit

from datamodules.synthetic.mapping_phantom import simulate_mapping_patient
from datamodules.synthetic.sequence_signals import look_locker_schedule, look_locker_signal
from quantification.t1_sequences import (
    SHMOLLI_IR1_SAMPLES,
    fit_t1_sequence,
    resolve_t1_sequence,
    shmolli_heart_interval_ms,
)

T1_MS = np.array([250.0, 400.0, 650.0, 900.0, 1000.0, 1150.0, 1400.0, 1700.0])
STONE_TI = np.array([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500.0])
SASHA_TS = np.array([100, 160, 220, 280, 340, 400, 460, 520, 580, 640, np.inf])
RR_MS = 950.0
GRID_MS = np.geomspace(20.0, 5000.0, 200)
"""Relaxation times searched for the reference fits' starting point."""


def _molli_ti(scheme: str) -> np.ndarray:
    return np.sort(look_locker_schedule(scheme, np.full(12, RR_MS)).ti_ms)


def _look_locker(ti: np.ndarray, t1: np.ndarray, t1_star: np.ndarray, m0: float = 700.0):
    """One inversion, continuous Look-Locker readout: A - B exp(-TI/T1*), A = M0 T1*/T1,
    B = A + M0."""
    a = m0 * t1_star / t1
    return np.abs(a - (a + m0) * np.exp(-ti[:, None] / t1_star))


@pytest.mark.parametrize("scheme", ["5(3)3", "4(1)3(1)2", "5(1)1(1)1"])
def test_look_locker_sequences_recover_t1_exactly_on_analytic_signals(scheme):
    ti = _molli_ti(scheme)
    t1_star = 1.0 / (1.0 / T1_MS + 1.0 / 3000.0)  # readout rate 1/3000 per ms
    sequence = "shmolli" if scheme == "5(1)1(1)1" else "molli"
    fit = fit_t1_sequence(_look_locker(ti, T1_MS, t1_star), ti, sequence)
    np.testing.assert_allclose(fit.t_ms, T1_MS, rtol=1e-3)
    np.testing.assert_allclose(fit.t_apparent_ms, t1_star, rtol=1e-3)
    assert fit.model == sequence and fit.valid.all()


def test_stone_and_sasha_recover_t1_exactly_on_analytic_signals():
    stone = np.abs(800.0 * (1 - 2 * np.exp(-STONE_TI[:, None] / T1_MS)))
    np.testing.assert_allclose(fit_t1_sequence(stone, STONE_TI, "stone").t_ms, T1_MS, rtol=1e-3)
    efficiency = 0.96  # imperfect saturation: B < 1
    sasha = 800.0 * (1 - efficiency * np.exp(-SASHA_TS[:, None] / T1_MS))  # +inf: A
    fit = fit_t1_sequence(sasha, SASHA_TS, "sasha")
    np.testing.assert_allclose(fit.t_ms, T1_MS, rtol=1e-3)
    np.testing.assert_allclose(fit.offset / fit.amplitude, efficiency, rtol=1e-3)
    np.testing.assert_allclose(fit.amplitude, 800.0, rtol=1e-3)


def test_shmolli_uses_the_later_inversions_only_for_short_t1():
    """5(1)1(1)1 simulated through the whole scheme: before IR2 and IR3 the magnetisation has
    recovered for about 1-2 RR only, complete for short T1 (all 7 samples are used) and not for
    long T1 (only the first inversion's 5)."""
    rr = np.full(9, 800.0)
    schedule = look_locker_schedule("5(1)1(1)1", rr)
    order = np.argsort(schedule.ti_ms)
    ti = schedule.ti_ms[order]
    t1 = np.array([250.0, 1300.0])
    clean = np.abs(700.0 * look_locker_signal(schedule, t1, 1 / 3000.0))[order]
    noisy = clean[:, None] + np.random.default_rng(0).normal(0, 0.7, (7, 400, 2))  # SNR 1000
    fit = fit_t1_sequence(noisy, ti, "shmolli")
    assert shmolli_heart_interval_ms(ti) == pytest.approx(800.0)
    short, long = fit.samples_used[:, 0], fit.samples_used[:, 1]
    assert (short >= 6).mean() > 0.9 and (short == 7).mean() > 0.5 and (long == 5).all()
    np.testing.assert_allclose(np.median(fit.t_ms, axis=0), t1, rtol=2e-3)
    # with all 7 samples the long T1 is biased: IR2 and IR3 started from M < M0
    seven = fit_t1_sequence(clean[:, 1:], ti, "molli")
    assert seven.t_ms[0] < 0.99 * t1[1]
    assert list(SHMOLLI_IR1_SAMPLES) == [0, 3, 4, 5, 6]


def _reference_fit(sequence: str, times: np.ndarray, y: np.ndarray) -> float:
    """T1 of one pixel by scipy's curve_fit, started in the basin of the global minimum (the
    magnitude models have several local ones): the best point of a dense T1 grid with the
    amplitudes solved by least squares for every sign-change position."""
    if sequence == "shmolli":
        rr = shmolli_heart_interval_ms(times)
        fits = [_reference_three_parameter(times[s], y[s]) for s in
                (list(SHMOLLI_IR1_SAMPLES), [0, 1, 3, 4, 5, 6], list(range(7)))]  # fmt: skip
        (t5, c5), (t6, c6), (t7, c7) = fits
        t1 = t5
        if t5 <= rr or t6 <= 0.4 * rr:
            if c6 * t6 < c5 * rr:
                t1 = t6
            if c7 * t7 < 0.4 * c5 * rr and t1 < rr:
                t1 = t7
        return t1
    if sequence == "molli":
        return _reference_three_parameter(times, y)[0]
    if sequence == "sasha":
        model = lambda t, a, b, t1: a * (1 - b * np.exp(-t / t1))  # noqa: E731
        a, b, t1 = _seed_three_parameter(times, y, restore=False)
        return _polish(model, times, y, (a, b / a, t1))[0][2]
    model = lambda t, a, t1: np.abs(a * (1 - 2 * np.exp(-t / t1)))  # noqa: E731
    basis = np.abs(1 - 2 * np.exp(-times[:, None] / GRID_MS))
    amplitude = y @ basis / np.einsum("ng,ng->g", basis, basis)
    g = np.argmin(np.sum((y[:, None] - amplitude * basis) ** 2, axis=0))
    return _polish(model, times, y, (amplitude[g], GRID_MS[g]))[0][1]


def _seed_three_parameter(times: np.ndarray, y: np.ndarray, restore: bool = True):
    """(A, B, T) of ``A - B exp(-t/T)`` at the best grid point over all sign-change positions
    (straight-line least squares of the signed samples against ``exp(-t/T)``)."""
    decay = np.exp(-times[:, None] / GRID_MS)  # [N, G]
    n = times.size
    se, see = decay.sum(0), np.einsum("ng,ng->g", decay, decay)
    best = (np.inf, None)
    for b in range(n + 1) if restore else [0]:
        signed = np.where(np.arange(n) < b, -y, y)
        sy = signed.sum()
        slope = (signed @ decay - se * sy / n) / (see - se**2 / n)
        intercept = (sy - slope * se) / n
        rss = np.sum((signed[:, None] - intercept - slope * decay) ** 2, axis=0)
        g = int(np.argmin(rss))
        if rss[g] < best[0]:
            best = (rss[g], (intercept[g], -slope[g], GRID_MS[g]))
    return best[1]


def _reference_three_parameter(times: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """MOLLI by curve_fit: (Look-Locker-corrected T1, sqrt(RSS / (n - 1)))."""
    model = lambda t, a, b, t_star: np.abs(a - b * np.exp(-t / t_star))  # noqa: E731
    (a, b, t_star), rss = _polish(model, times, y, _seed_three_parameter(times, y))
    return t_star * (b / a - 1), float(np.sqrt(rss / (times.size - 1)))


def _polish(model, times, y, p0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
        p, _ = curve_fit(model, times, y, p0=p0, maxfev=4000, check_finite=False)
    return p, float(np.sum((model(times, *p) - y) ** 2))


@pytest.mark.parametrize("sequence", ["stone", "molli", "shmolli", "sasha"])
def test_same_t1_as_a_per_pixel_curve_fit_on_noisy_phantom_pixels(sequence):
    """Myocardium and blood pixels of a noisy phantom slice (Rician noise, SNR 10-60)."""
    patient = simulate_mapping_patient(4, 0, slices_per_patient=1, motion=False,
                                       sequence=sequence)  # fmt: skip
    acquisition = patient.slices[0].acquisitions["t1_native"]
    labels = patient.slices[0].labels
    rows, cols = np.nonzero((labels == 1) | (labels == 2))
    pick = np.linspace(0, rows.size - 1, 300).astype(int)
    curves = acquisition.images[:, rows[pick], cols[pick]].astype(np.float64)
    times = acquisition.times_ms.astype(np.float64)
    fit = fit_t1_sequence(curves, times, sequence)
    reference = np.array([_reference_fit(sequence, times, y) for y in curves.T])
    same = np.abs(fit.t_ms / reference - 1) <= 0.005
    assert same.mean() >= 0.99, (sequence, np.flatnonzero(~same), fit.t_ms[~same],
                                 reference[~same])  # fmt: skip


def test_the_sequence_comes_from_the_flag_the_file_or_falls_back_to_stone():
    assert resolve_t1_sequence("sasha", "molli") == ("sasha", "flag")
    assert resolve_t1_sequence("auto", "shmolli") == ("shmolli", "file")
    assert resolve_t1_sequence("auto", "look_locker") == ("molli", "file")
    assert resolve_t1_sequence("auto", None) == ("stone", "fallback")
    with pytest.raises(ValueError, match="sequence='t2prep' is not a T1 sequence"):
        resolve_t1_sequence("auto", "t2prep")
    with pytest.raises(ValueError, match="expected 'auto' or one of"):
        resolve_t1_sequence("flash", None)
    with pytest.raises(ValueError, match="ShMOLLI needs its 7 images"):
        fit_t1_sequence(np.ones((8, 3)), _molli_ti("5(3)3"), "shmolli")
