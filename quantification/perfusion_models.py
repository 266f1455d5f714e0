"""Tracer-kinetic models of myocardial perfusion, written as bases of the AIF
(docs/method.md §P2).

Every model here gives the tissue gadolinium concentration ``C(t)`` (mmol/L) as a linear
combination of one or two *bases*, functions of the blood AIF ``Cb(t)`` (mmol/L) shaped by a few
non-linear parameters ``theta``::

    C(t) = a1 * G1(t; theta) + a2 * G2(t; theta)

so the amplitudes ``a`` follow in closed form for a fixed ``theta`` (the look-up stage of
:mod:`quantification.perfusion_fit`) and the Jacobian of ``C`` is cheap (the refinement stage).
All flows are per ml of tissue and per second inside this module (``Fb``, ml/s/ml); the
conversion to ml/min/g happens only in :func:`physiological_parameters`.

Models (``delay_s`` = the bolus delay of the tissue after the AIF, per pixel):

- ``"bte"``: the adiabatic approximation to the tissue-homogeneity model (AATH; St Lawrence & Lee
  1998), the closed-form member of the blood-tissue-exchange (BTEX) class: plug flow through the
  capillary for the capillary transit time ``Tc = Vb / Fb``, then extraction ``E = 1 - exp(-PS /
  Fp)`` into the interstitium, which washes out with rate ``k = E Fp / Visf``::

      C(t) = Fb [I(t') - I(t' - Tc)] + Fb E X_k(t' - Tc),     t' = t - delay_s

  with ``I(u) = int_{-inf}^u Cb`` and ``X_k(u) = int_{-inf}^u Cb(v) exp(-k (u - v)) dv``.
  Amplitudes ``a1 = Fb``, ``a2 = Fb E``; ``theta = (Tc_s, log k, delay_s)``.
- ``"fermi"``: Fermi-constrained deconvolution (Jerosch-Herold et al. 1998): the impulse response
  is ``Fb (1 + exp(-tau0/w)) / (1 + exp((t - tau0)/w))`` (``Fb`` at lag 0), one amplitude ``Fb``
  and ``theta = (tau0_s, log w, delay_s)``; it gives MBF and the delay only. Its table holds
  the AIF convolved (FFT, trapezoid rule) with the response for 41 shoulders x 24 widths;
  values in between are trilinear interpolations.
- ``"2cxm"``: the two-compartment exchange model (Brix et al. 2004; Sourbron & Buckley 2011),
  a bi-exponential impulse response::

      C(t) = b+ X_{K+}(t') + b- X_{K-}(t'),      Fb = b+ + b-

  ``theta = (log K+, log K-, delay_s)``; the physiological parameters follow in closed form.

Hematocrit: the AIF is whole blood; only plasma exchanges, so ``Fp = Fb (1 - Hct)`` enters the
extraction, and ``Fp Cp = Fb Cb`` (plasma flow times plasma concentration equals blood flow times
blood concentration) lets both models take the blood AIF directly.

The tables :class:`AIFTables` hold ``Cb``, ``I`` and ``X_k`` (for ``n_rates`` log-spaced rates) on
a fine uniform grid; the AIF between its samples is linear, and ``X_k`` is computed with the exact
recursion for a piecewise-linear input. Values at any time and rate are linear interpolations.

Pure NumPy/SciPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

__all__ = [
    "MODELS",
    "AIFTables",
    "PerfusionModel",
    "aif_tables",
    "model_bases",
    "model_curves",
    "perfusion_model",
    "physiological_parameters",
]

MODELS = ("bte", "2cxm", "fermi")
"""Kinetic models fitted by the look-up + Levenberg-Marquardt solver."""
AMPLITUDES = {"bte": 2, "2cxm": 2, "fermi": 1}
"""Number of linear amplitudes of each model (the rest of its parameters are ``theta``)."""


@dataclass(frozen=True)
class AIFTables:
    """The AIF and its integrals on a fine uniform grid (absolute time, seconds).

    Attributes:
        start_s: time of the first grid node, s.
        step_s: grid spacing, s.
        cb: float64 [M] blood AIF, mmol/L.
        integral: float64 [M] ``I(u)``, mmol/L * s.
        log_rates: float64 [K] natural logs of the rates ``k`` (1/s) of the rows of ``expconv``.
        expconv: float64 [K, M] ``X_k(u)``, mmol/L * s.
        fermi_shoulders_s: float64 [A] shoulders ``tau0`` (s) of the rows of ``fermi``.
        fermi_log_widths: float64 [B] natural logs of the widths ``w`` (s) of its columns.
        fermi: float64 [A, B, M] the AIF convolved with the normalised Fermi response, mmol/L*s
            (empty [0, 0, M] unless the tables were made with ``fermi=True``).
    """

    start_s: float
    step_s: float
    cb: np.ndarray
    integral: np.ndarray
    log_rates: np.ndarray
    expconv: np.ndarray
    fermi_shoulders_s: np.ndarray
    fermi_log_widths: np.ndarray
    fermi: np.ndarray


def aif_tables(
    aif_gd: np.ndarray,
    times_s: np.ndarray,
    step_s: float = 0.05,
    pad_before_s: float = 30.0,
    pad_after_s: float = 5.0,
    rate_range_per_s: tuple[float, float] = (1e-3, 20.0),
    n_rates: int = 384,
    fermi: bool = False,
) -> AIFTables:
    """Tables of ``Cb``, ``I`` and ``X_k`` for a blood AIF ``aif_gd`` [T] sampled at ``times_s``.

    The grid runs from ``times_s[0] - pad_before_s`` to ``times_s[-1] + pad_after_s``; outside the
    sampled range the AIF is held at its first and last value (0 before the bolus for a
    baseline-subtracted AIF). The Fermi table (about 0.3 s to compute) is made only with
    ``fermi=True``.
    """
    t = np.asarray(times_s, dtype=np.float64)
    c = np.asarray(aif_gd, dtype=np.float64)
    start = t[0] - pad_before_s
    n = int(np.ceil((t[-1] + pad_after_s - start) / step_s)) + 1
    u = start + step_s * np.arange(n)
    cb = np.interp(u, t, c)
    integral = np.concatenate([[0.0], np.cumsum(0.5 * step_s * (cb[1:] + cb[:-1]))])
    log_rates = np.linspace(*np.log(rate_range_per_s), n_rates)
    expconv = np.empty((n_rates, n))
    for row, k in enumerate(np.exp(log_rates)):
        decay = np.exp(-k * step_s)
        w_new = 1.0 / k - (1.0 - decay) / (k * k * step_s)  # weight of Cb at the step's end
        w_old = (1.0 - decay) / k - w_new  # weight of Cb at the step's start
        expconv[row] = lfilter([w_new, w_old], [1.0, -decay], cb)
    shoulders = np.linspace(0.0, 20.0, 41) if fermi else np.zeros(0)
    log_widths = np.linspace(np.log(0.1), np.log(20.0), 24) if fermi else np.zeros(0)
    lag = step_s * np.arange(n)
    response = fermi_response(lag, shoulders[:, None, None], np.exp(log_widths)[None, :, None])
    weights = np.full(n, step_s)
    weights[0] = 0.5 * step_s  # trapezoid rule over the lag
    table = (
        fftconvolve(cb[None, None, :], response * weights, axes=2)[:, :, :n]
        if fermi
        else np.zeros((0, 0, n))
    )
    return AIFTables(float(start), float(step_s), cb, integral, log_rates, expconv, shoulders,
                     log_widths, table)  # fmt: skip


def fermi_response(lag_s: np.ndarray, shoulder_s: np.ndarray, width_s: np.ndarray) -> np.ndarray:
    """Fermi impulse response normalised to 1 at lag 0 (Jerosch-Herold et al. 1998):
    ``(1 + exp(-tau0 / w)) / (1 + exp((t - tau0) / w))``."""
    with np.errstate(over="ignore"):  # exp overflows to inf far past the shoulder: response 0
        return (1.0 + np.exp(-shoulder_s / width_s)) / (
            1.0 + np.exp((lag_s - shoulder_s) / width_s)
        )


def _position(tables: AIFTables, u: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the grid node at or before each time ``u`` and the fraction to the next one."""
    x = np.clip((u - tables.start_s) * (1.0 / tables.step_s), 0.0, size - 1.000001)
    i = x.astype(np.intp)
    return i, x - i


def _lerp(values: np.ndarray, i: np.ndarray, f: np.ndarray) -> np.ndarray:
    lower = values[i]
    return lower + f * (values[i + 1] - lower)


def _expconv_at(
    tables: AIFTables, log_rate: np.ndarray, i: np.ndarray, f: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``X_k`` and ``dX_k / dlog k`` at per-curve rates ``log_rate`` [P, 1] and grid positions
    ``i, f`` [P, T] (bilinear in log k and time)."""
    lr = tables.log_rates
    n_rates, n = tables.expconv.shape
    step_lr = lr[1] - lr[0]
    y = np.clip((log_rate - lr[0]) / step_lr, 0.0, n_rates - 1.000001)
    j = y.astype(np.intp)
    g = y - j
    flat = tables.expconv.ravel()
    base = j * n + i
    lower = _lerp(flat, base, f)
    upper = _lerp(flat, base + n, f)
    return lower + g * (upper - lower), (upper - lower) * (1.0 / step_lr)


def _fermi_at(
    tables: AIFTables, shoulder: np.ndarray, log_width: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Fermi convolution at per-curve ``shoulder`` and ``log_width`` [P, 1] and times
    ``u`` [P, T] (trilinear), and its derivatives by shoulder, log width and time."""
    if tables.fermi.shape[0] == 0:
        raise ValueError("the Fermi model needs tables made with aif_tables(..., fermi=True)")
    a_axis, b_axis = tables.fermi_shoulders_s, tables.fermi_log_widths
    n_a, n_b, n = tables.fermi.shape
    step_a, step_b = a_axis[1] - a_axis[0], b_axis[1] - b_axis[0]
    ya = np.clip((shoulder - a_axis[0]) / step_a, 0.0, n_a - 1.000001)
    yb = np.clip((log_width - b_axis[0]) / step_b, 0.0, n_b - 1.000001)
    a, b = ya.astype(np.intp), yb.astype(np.intp)
    ga, gb = ya - a, yb - b
    i, f = _position(tables, u, n)
    flat = tables.fermi.ravel()
    corners, slopes = [], []
    for da, db in ((0, 0), (0, 1), (1, 0), (1, 1)):
        base = ((a + da) * n_b + b + db) * n + i
        low, high = flat[base], flat[base + 1]
        corners.append(low + f * (high - low))
        slopes.append(high - low)
    c00, c01, c10, c11 = corners
    s00, s01, s10, s11 = slopes
    lower_a = c00 + gb * (c01 - c00)
    upper_a = c10 + gb * (c11 - c10)
    value = lower_a + ga * (upper_a - lower_a)
    d_width = ((1.0 - ga) * (c01 - c00) + ga * (c11 - c10)) / step_b
    slope = (1.0 - ga) * (s00 + gb * (s01 - s00)) + ga * (s10 + gb * (s11 - s10))
    return value, (upper_a - lower_a) / step_a, d_width, slope / tables.step_s


def model_curves(
    model: str, tables: AIFTables, params: np.ndarray, times_s: np.ndarray, jacobian: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model curves and their Jacobian for parameters ``params`` [P, L + 3] = (the L linear
    amplitudes of :data:`AMPLITUDES`, then theta).

    Returns the curves float64 [P, T] (mmol/L) at ``times_s`` [T] and, with ``jacobian``, the
    derivatives [P, L + 3, T] with respect to the parameters (else None).
    """
    t = np.asarray(times_s, dtype=np.float64)[None, :]
    a1, a2 = params[:, 0:1], params[:, 1:2]
    n = tables.cb.size
    if model == "bte":
        tc, log_k, delay = params[:, 2:3], params[:, 3:4], params[:, 4:5]
        i0, f0 = _position(tables, t - delay, n)
        i1, f1 = _position(tables, t - delay - tc, n)
        g1 = _lerp(tables.integral, i0, f0) - _lerp(tables.integral, i1, f1)
        g2, dg2_dlogk = _expconv_at(tables, log_k, i1, f1)
        curves = a1 * g1 + a2 * g2
        if not jacobian:
            return curves, None
        cb0, cb1 = _lerp(tables.cb, i0, f0), _lerp(tables.cb, i1, f1)
        d_tc = a1 * cb1 - a2 * (cb1 - np.exp(log_k) * g2)  # d curve / d Tc
        jac = np.stack([g1, g2, d_tc, a2 * dg2_dlogk, d_tc - a1 * cb0], axis=1)
        return curves, jac
    if model == "2cxm":
        log_fast, log_slow, delay = params[:, 2:3], params[:, 3:4], params[:, 4:5]
        i, f = _position(tables, t - delay, n)
        fast, d_fast = _expconv_at(tables, log_fast, i, f)
        slow, d_slow = _expconv_at(tables, log_slow, i, f)
        curves = a1 * fast + a2 * slow
        if not jacobian:
            return curves, None
        cb = _lerp(tables.cb, i, f)
        d_delay = -a1 * (cb - np.exp(log_fast) * fast) - a2 * (cb - np.exp(log_slow) * slow)
        jac = np.stack([fast, slow, a1 * d_fast, a2 * d_slow, d_delay], axis=1)
        return curves, jac
    if model == "fermi":
        flow = params[:, 0:1]
        shoulder, log_width, delay = params[:, 1:2], params[:, 2:3], params[:, 3:4]
        value, d_shoulder, d_log_width, d_time = _fermi_at(tables, shoulder, log_width, t - delay)
        curves = flow * value
        if not jacobian:
            return curves, None
        jac = np.stack([value, flow * d_shoulder, flow * d_log_width, -flow * d_time], axis=1)
        return curves, jac
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def model_bases(
    model: str, tables: AIFTables, theta: np.ndarray, times_s: np.ndarray
) -> np.ndarray:
    """The L bases [C, L, T] of ``model`` at non-linear parameters ``theta`` [C, 3]."""
    n_amplitudes = AMPLITUDES[model]
    bases = []
    for unit in np.eye(n_amplitudes):
        params = np.hstack([np.broadcast_to(unit, (theta.shape[0], n_amplitudes)), theta])
        bases.append(model_curves(model, tables, params, times_s, False)[0])
    return np.stack(bases, axis=1)


@dataclass(frozen=True)
class PerfusionModel:
    """Search ranges of one model's non-linear parameters ``theta`` and its look-up grid.

    Attributes:
        name: "bte" or "2cxm".
        lower, upper: float64 [3] bounds of theta (log rates as natural logs of 1/s).
        grid: float64 [C, 3] the candidates of the look-up stage: the product of ``shape``
            values per parameter, the first parameter varying slowest.
        shape: number of grid values of each parameter.
        valid: bool [C] candidates that are allowed (2cxm: fast rate > slow rate).
        starts: refinements started per curve (from the best candidates of distinct values of
            the first parameter).
    """

    name: str
    lower: np.ndarray
    upper: np.ndarray
    grid: np.ndarray
    shape: tuple[int, int, int]
    valid: np.ndarray
    starts: int

    @property
    def n_amplitudes(self) -> int:
        """Linear amplitudes of the model (:data:`AMPLITUDES`)."""
        return AMPLITUDES[self.name]


def perfusion_model(
    name: str, delay_range_s: tuple[float, float] = (0.0, 6.0), delay_step_s: float = 0.5
) -> PerfusionModel:
    """The parameter ranges and look-up grid of a model (docs/method.md §P2)."""
    delays = np.arange(delay_range_s[0], delay_range_s[1] + 1e-9, delay_step_s)
    if name == "bte":
        tcs = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 13.0, 18.0])
        log_ks = np.log(np.geomspace(0.003, 1.0, 6))
        grid = np.stack(np.meshgrid(tcs, log_ks, delays, indexing="ij"), -1).reshape(-1, 3)
        lower = np.array([0.3, np.log(1e-3), delay_range_s[0]])
        upper = np.array([25.0, np.log(5.0), delay_range_s[1]])
        shape = (tcs.size, log_ks.size, delays.size)
        return PerfusionModel(name, lower, upper, grid, shape, np.ones(len(grid), bool), 2)
    if name == "2cxm":
        fast = np.log(np.geomspace(0.03, 15.0, 14))
        slow = np.log(np.geomspace(0.002, 0.5, 9))
        grid = np.stack(np.meshgrid(fast, slow, delays, indexing="ij"), -1).reshape(-1, 3)
        lower = np.array([np.log(1e-3), np.log(1e-3), delay_range_s[0]])
        upper = np.array([np.log(20.0), np.log(20.0), delay_range_s[1]])
        shape = (fast.size, slow.size, delays.size)
        return PerfusionModel(name, lower, upper, grid, shape, grid[:, 0] > grid[:, 1], 2)
    if name == "fermi":
        shoulders = np.array([0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 11.0, 15.0])
        log_widths = np.log(np.geomspace(0.2, 10.0, 6))
        grid = np.stack(np.meshgrid(shoulders, log_widths, delays, indexing="ij"), -1)
        grid = grid.reshape(-1, 3)
        lower = np.array([0.0, np.log(0.1), delay_range_s[0]])
        upper = np.array([20.0, np.log(20.0), delay_range_s[1]])
        shape = (shoulders.size, log_widths.size, delays.size)
        return PerfusionModel(name, lower, upper, grid, shape, np.ones(len(grid), bool), 2)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def physiological_parameters(
    model: str,
    amplitudes: np.ndarray,
    theta: np.ndarray,
    hematocrit: float,
    tissue_density_g_per_ml: float,
) -> dict[str, np.ndarray]:
    """Fitted amplitudes [P, L] and theta [P, 3] -> MBF, PS, Vb, Visf per gram of tissue.

    Returns float64 [P] arrays ``mbf_ml_min_g``, ``ps_ml_min_g``, ``vb_ml_g``, ``visf_ml_g``,
    ``delay_s`` and ``extraction`` (E, 0-1). Non-physical combinations give NaN (the solver then
    flags the pixel); Fermi deconvolution gives MBF and delay only (the others NaN).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        a1 = amplitudes[:, 0]
        a2 = amplitudes[:, 1] if amplitudes.shape[1] > 1 else np.zeros_like(a1)
        if model == "fermi":
            fb = a1
            ps = vb = visf = extraction = np.full_like(a1, np.nan)
        elif model == "bte":
            fb = a1
            extraction = a2 / a1
            fp = fb * (1.0 - hematocrit)
            ps = -fp * np.log1p(-extraction)
            vb = fb * theta[:, 0]
            visf = extraction * fp / np.exp(theta[:, 1])
        elif model == "2cxm":
            fb = a1 + a2
            fp = fb * (1.0 - hematocrit)
            k_fast, k_slow = np.exp(theta[:, 0]), np.exp(theta[:, 1])
            e_fast, e_slow = a1 / fb, a2 / fb
            vp = fp / (e_fast * k_fast + e_slow * k_slow)
            visf = fp * (e_fast / k_fast + e_slow / k_slow) - vp
            ps = k_fast * k_slow * vp * visf / fp
            vb = vp / (1.0 - hematocrit)
            extraction = 1.0 - np.exp(-ps / fp)
        else:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    per_gram = 1.0 / tissue_density_g_per_ml
    return {
        "mbf_ml_min_g": 60.0 * fb * per_gram,
        "ps_ml_min_g": 60.0 * ps * per_gram,
        "vb_ml_g": vb * per_gram,
        "visf_ml_g": visf * per_gram,
        "delay_s": theta[:, 2].copy(),
        "extraction": extraction,
    }
