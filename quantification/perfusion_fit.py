"""Pixel-wise and per-region fits of the perfusion models (docs/method.md §P3).

:func:`fit_perfusion` fits every tissue curve of an array at once (no Python loop over pixels),
in two stages, like the published inline method (a look-up table, then a local refinement):

1. **Look-up.** For each candidate ``theta`` of the model's grid (:func:`perfusion_model`:
   capillary transit time or rates, and the bolus delay) the bases are orthonormalised once
   (QR); one float32 matrix product projects all curves onto all candidates, the amplitudes follow
   from the triangular factor. Among the candidates whose amplitudes are physical (``Fb > 0``,
   ``0 <= E <= 1``) the best for each value of the first parameter (Tc, or the fast rate) are
   ranked, and the ``starts`` best of them (2: at high flow the transit time, the delay and
   the flow trade off and the RSS has several minima) start the refinement; the lowest RSS
   wins. The second start runs only where the first finds more than 1.5 ml/min/g.
2. **Refinement.** Batched Levenberg-Marquardt on all parameters (the logs of the amplitudes,
   which straightens the curved valley where a fast rate trades off against its amplitude, and
   ``theta``) with the analytic Jacobian of :func:`model_curves`, bounds enforced by
   projection; a step is kept only where it lowers the residual sum of squares, and a pixel
   stops when its RSS changes (or could change, by the linearised model) by less than
   ``tolerance`` (1e-4) times its noise variance ``RSS / (T - 5)`` (later iterations run only
   on the pixels still moving).

Failure reasons (``failure``, uint8; the maps are NaN wherever it is not 0), see
:data:`FAILURE_REASONS`. ``rmse_mmol_l`` and ``r_squared`` report the fit quality of every
fitted pixel.

Pure NumPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantification.perfusion_models import (
    AIFTables,
    PerfusionModel,
    aif_tables,
    model_bases,
    model_curves,
    perfusion_model,
    physiological_parameters,
)

__all__ = [
    "FAILURE_REASONS",
    "FIT_OK",
    "NO_ENHANCEMENT",
    "NO_FEASIBLE_START",
    "NONFINITE",
    "NONPHYSICAL",
    "PARAMETER_NAMES",
    "PerfusionFit",
    "fit_perfusion",
]

FIT_OK = 0
NONFINITE = 1
NO_ENHANCEMENT = 2
NO_FEASIBLE_START = 3
NONPHYSICAL = 4
FAILURE_REASONS = {
    FIT_OK: "fitted",
    NONFINITE: "a sample of the curve is NaN or infinite",
    NO_ENHANCEMENT: "no enhancement: the curve's peak is below min_enhancement_fraction x AIF peak",
    NO_FEASIBLE_START: "no look-up candidate with physical amplitudes (Fb > 0, 0 <= E <= 1)",
    NONPHYSICAL: "the fitted MBF is not a finite positive number",
}
"""Per-pixel failure reason codes and their meaning."""

MULTI_START_MIN_MBF_ML_MIN_G = 1.5
"""Only curves whose first refinement finds a flow above this get the further starts: below it
the RSS had one minimum on the phantoms (the same bias with one start or two up to 2 ml/min/g)."""

PARAMETER_NAMES = ("mbf_ml_min_g", "ps_ml_min_g", "vb_ml_g", "visf_ml_g", "delay_s")


@dataclass(frozen=True)
class PerfusionFit:
    """Result of :func:`fit_perfusion`; maps have the shape ``S`` of the input without time.

    Attributes:
        model: "bte" or "2cxm".
        mbf_ml_min_g, ps_ml_min_g: float32 [*S] myocardial blood flow and permeability-surface
            product, ml/min/g.
        vb_ml_g, visf_ml_g: float32 [*S] blood and interstitial volume, ml/g.
        delay_s: float32 [*S] bolus delay of the tissue after the AIF, s.
        rmse_mmol_l: float32 [*S] root-mean-square residual, mmol/L.
        r_squared: float32 [*S] coefficient of determination of the fit.
        failure: uint8 [*S] reason code (:data:`FAILURE_REASONS`), 0 = fitted.
        at_bound: bool [*S] a fitted pixel whose parameters ended on a bound of the search
            (E = 0 or 1, or theta on its range's edge): its maps are kept, but that parameter
            (and often MBF) is less certain. A PS or Visf that is not finite there is NaN.
        fitted_gd: float32 [*S, T] the fitted curves, mmol/L (NaN where not fitted).
        hematocrit, tissue_density_g_per_ml: the constants used.
    """

    model: str
    mbf_ml_min_g: np.ndarray
    ps_ml_min_g: np.ndarray
    vb_ml_g: np.ndarray
    visf_ml_g: np.ndarray
    delay_s: np.ndarray
    rmse_mmol_l: np.ndarray
    r_squared: np.ndarray
    failure: np.ndarray
    at_bound: np.ndarray
    fitted_gd: np.ndarray
    hematocrit: float
    tissue_density_g_per_ml: float


def _feasible(model: str, a1: np.ndarray, a2: np.ndarray | None) -> np.ndarray:
    """Physical amplitudes: bte ``a1 > 0, 0 <= a2 <= a1``; 2cxm ``a1 > 0, a2 >= 0``; fermi
    ``a1 > 0``."""
    if a2 is None:
        return a1 > 0
    if model == "bte":
        return (a1 > 0) & (a2 >= 0) & (a2 <= a1)
    return (a1 > 0) & (a2 >= 0)


def _lookup(
    model: PerfusionModel, tables: AIFTables, times_s: np.ndarray, curves: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Starts of the refinement: the best physical grid candidate for each value of the first
    non-linear parameter, and of those the ``model.starts`` best; returns parameters
    [starts, P, L + 3] and found [P] (some candidate was physical)."""
    bases = model_bases(model.name, tables, model.grid, times_s)  # [C, L, T]
    q, r = np.linalg.qr(bases.transpose(0, 2, 1))  # [C, T, L], [C, L, L]
    n_cand, n_amp = q.shape[0], q.shape[2]
    diagonal = np.abs(np.diagonal(r, axis1=1, axis2=2))
    degenerate = diagonal.min(1) <= 1e-9 * diagonal.max()  # a basis is (almost) zero or repeated
    r = np.where(degenerate[:, None, None], np.eye(n_amp), r).astype(np.float32)
    basis = q.transpose(1, 2, 0).reshape(q.shape[1], n_amp * n_cand).astype(np.float32)
    projection = curves.astype(np.float32) @ basis  # [P, L C]: all first, then all second
    z1 = projection[:, :n_cand]
    if n_amp == 2:
        z2 = projection[:, n_cand:]
        a2 = z2 * (1.0 / r[:, 1, 1])
        a1 = (z1 - r[:, 0, 1] * a2) * (1.0 / r[:, 0, 0])
        fit_score = z1 * z1 + z2 * z2
        amplitudes = [a1, a2]
    else:
        a1, a2 = z1 * (1.0 / r[:, 0, 0]), None
        fit_score = z1 * z1
        amplitudes = [a1]
    allowed = _feasible(model.name, a1, a2) & (model.valid & ~degenerate)
    score = np.where(allowed, fit_score, -np.inf)
    n_first = model.shape[0]
    per_first = score.reshape(score.shape[0], n_first, -1)
    best_rest = np.argmax(per_first, axis=2)  # [P, n_first]
    best_score = np.take_along_axis(per_first, best_rest[:, :, None], 2)[:, :, 0]
    order = np.argsort(-best_score, axis=1)[:, : model.starts]  # [P, starts]
    chosen = order * (n_cand // n_first) + np.take_along_axis(best_rest, order, 1)
    rows = np.arange(curves.shape[0])[:, None]
    starts = np.concatenate(
        [a[rows, chosen][..., None] for a in amplitudes] + [model.grid[chosen]], axis=2
    )
    found = np.isfinite(score[rows[:, 0], chosen[:, 0]])
    return starts.transpose(1, 0, 2).astype(np.float64), found


LOG_AMPLITUDE_RANGE = (-30.0, 3.0)
"""Bounds of the log amplitudes in the refinement (exp(-30) ~ 1e-13: an amplitude of zero)."""


def _clip(model: PerfusionModel, q: np.ndarray) -> np.ndarray:
    """Project internal parameters [P, L + 3] = (log amplitudes, theta) onto their bounds."""
    n = model.n_amplitudes
    q = q.copy()
    q[:, n:] = np.clip(q[:, n:], model.lower, model.upper)
    q[:, :n] = np.clip(q[:, :n], *LOG_AMPLITUDE_RANGE)
    if model.name == "bte":  # E = a2 / a1 < 1
        q[:, 1] = np.minimum(q[:, 1], q[:, 0] - 1e-9)
    return q


def _internal(model: PerfusionModel, p: np.ndarray) -> np.ndarray:
    """Linear amplitudes [P, L + 3] -> internal parameters (log amplitudes), projected."""
    n = model.n_amplitudes
    with np.errstate(divide="ignore"):
        logs = np.log(np.maximum(p[:, :n], 0.0))
    return _clip(model, np.concatenate([logs, p[:, n:]], axis=1))


def _linear(model: PerfusionModel, q: np.ndarray) -> np.ndarray:
    n = model.n_amplitudes
    return np.concatenate([np.exp(q[:, :n]), q[:, n:]], axis=1)


def _at_bound(model: PerfusionModel, q: np.ndarray) -> np.ndarray:
    """Curves whose internal parameters sit on a bound (E = 0 or 1, theta range)."""
    n = model.n_amplitudes
    span = model.upper - model.lower
    theta = q[:, n:]
    on = (((theta - model.lower) < 1e-6 * span) | ((model.upper - theta) < 1e-6 * span)).any(1)
    if n == 2:
        on |= q[:, 1] <= LOG_AMPLITUDE_RANGE[0] + 1e-6
    if model.name == "bte":
        on |= q[:, 1] >= q[:, 0] - 1e-6
    return on


def _evaluate(
    model: PerfusionModel, tables: AIFTables, times_s: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Curves [P, T] and Jacobian [P, L + 3, T] with respect to the internal parameters."""
    p = _linear(model, q)
    curves, jac = model_curves(model.name, tables, p, times_s)
    assert jac is not None
    n = model.n_amplitudes
    jac[:, :n] *= p[:, :n, None]  # d / d log a = a d / d a
    return curves, jac


def _refine(
    model: PerfusionModel,
    tables: AIFTables,
    times_s: np.ndarray,
    curves: np.ndarray,
    start: np.ndarray,
    max_iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched Levenberg-Marquardt from ``start`` [P, L + 3] (linear amplitudes, theta) on the log
    amplitudes and theta: returns the internal parameters, fitted curves and RSS."""
    q = _internal(model, start)
    fitted, jac = _evaluate(model, tables, times_s, q)
    rss = ((curves - fitted) ** 2).sum(1)
    damping = np.full(q.shape[0], 1e-3)
    active = np.arange(q.shape[0])
    eye = np.eye(q.shape[1])
    dof = max(curves.shape[1] - q.shape[1], 1)  # rss / dof estimates the noise variance
    for _ in range(max_iterations):
        if active.size == 0:
            break
        j = jac[active]
        residual = curves[active] - fitted[active]
        h = j @ j.transpose(0, 2, 1)
        g = (j @ residual[:, :, None])[:, :, 0]
        diag = np.einsum("pii->pi", h)[:, :, None] * eye + 1e-12 * eye
        step = np.linalg.solve(h + damping[active, None, None] * diag, g[:, :, None])[:, :, 0]
        trial = _clip(model, q[active] + step)
        step = trial - q[active]  # the step as projected onto the bounds
        predicted = 2.0 * (step * g).sum(1) - np.einsum("pi,pij,pj->p", step, h, step)
        threshold = tolerance * rss[active] / dof
        trial_fit, trial_jac = _evaluate(model, tables, times_s, trial)
        trial_rss = ((curves[active] - trial_fit) ** 2).sum(1)
        better = trial_rss < rss[active]
        kept = active[better]
        change = rss[kept] - trial_rss[better]
        q[kept], fitted[kept], jac[kept] = trial[better], trial_fit[better], trial_jac[better]
        rss[kept] = trial_rss[better]
        damping[active] = np.where(better, damping[active] * 0.3, damping[active] * 10.0)
        done = predicted <= threshold  # converged: no step can lower the RSS noticeably
        done[better] |= change <= threshold[better]
        done |= damping[active] > 1e8
        active = active[~done]
    return q, fitted, rss


def fit_perfusion(
    aif_gd: np.ndarray,
    tissue_gd: np.ndarray,
    times_s: np.ndarray,
    model: str = "bte",
    hematocrit: float = 0.42,
    tissue_density_g_per_ml: float = 1.05,
    delay_range_s: tuple[float, float] = (0.0, 6.0),
    min_enhancement_fraction: float = 0.02,
    max_iterations: int = 50,
    tolerance: float = 1e-4,
    chunk_pixels: int = 8192,
) -> PerfusionFit:
    """Fit a kinetic model to every tissue curve (docs/method.md §P2, §P3).

    Args:
        aif_gd: float [T] blood AIF, mmol/L, baseline 0 (whole blood, not plasma).
        tissue_gd: float [*S, T] tissue curves (pixels or region means), mmol/L, baseline 0.
        times_s: float [T] acquisition times of the frames, s, strictly increasing.
        model: "bte" (BTEX class, AATH) or "2cxm" (:mod:`quantification.perfusion_models`).
        hematocrit: blood hematocrit, fraction (0-1).
        tissue_density_g_per_ml: converts per-ml to per-gram values (myocardium ~1.05 g/ml).
        delay_range_s: range of the per-pixel bolus delay after the AIF, s.
        min_enhancement_fraction: curves whose peak (3-frame mean) stays below this fraction of
            the AIF peak are not fitted (failure ``NO_ENHANCEMENT``).
        max_iterations: Levenberg-Marquardt iterations at most.
        tolerance: a curve stops once an iteration lowers its RSS, or the linearised model
            predicts it could lower it, by less than this fraction of the noise variance
            estimated from its residuals (``RSS / (T - 5)``): the parameters then move by far
            less than their standard error.
        chunk_pixels: curves fitted together (bounds the memory to ~100 MB).

    Returns:
        :class:`PerfusionFit` with maps of shape ``S``.
    """
    aif = np.asarray(aif_gd, dtype=np.float64)
    times = np.asarray(times_s, dtype=np.float64)
    y_all = np.asarray(tissue_gd, dtype=np.float64)
    if aif.ndim != 1 or times.shape != aif.shape or y_all.shape[-1:] != aif.shape:
        raise ValueError(
            f"expected aif_gd [T], times_s [T] and tissue_gd [..., T] with the same T; found "
            f"{aif.shape}, {times.shape}, {y_all.shape}"
        )
    if not (np.isfinite(aif).all() and np.isfinite(times).all() and np.all(np.diff(times) > 0)):
        raise ValueError("aif_gd and times_s must be finite and times_s strictly increasing")
    if not 0.0 <= hematocrit < 1.0:
        raise ValueError(f"hematocrit must be a fraction in [0, 1), got {hematocrit}")
    spatial = y_all.shape[:-1]
    y_all = y_all.reshape(-1, times.size)
    spec = perfusion_model(model, delay_range_s)
    tables = aif_tables(aif, times, fermi=model == "fermi")

    n = y_all.shape[0]
    maps = {name: np.full(n, np.nan) for name in PARAMETER_NAMES}
    rmse = np.full(n, np.nan)
    r_squared = np.full(n, np.nan)
    fitted_all = np.full((n, times.size), np.nan, dtype=np.float32)
    failure = np.zeros(n, dtype=np.uint8)
    at_bound = np.zeros(n, dtype=bool)

    finite = np.isfinite(y_all).all(1)
    failure[~finite] = NONFINITE
    clean = np.where(finite[:, None], y_all, 0.0)
    smooth_peak = ((clean[:, :-2] + clean[:, 1:-1] + clean[:, 2:]) / 3.0).max(1)
    enhancing = smooth_peak >= min_enhancement_fraction * aif.max()
    failure[finite & ~enhancing] = NO_ENHANCEMENT
    todo = np.flatnonzero(finite & enhancing)

    for first in range(0, todo.size, chunk_pixels):
        idx = todo[first : first + chunk_pixels]
        y = y_all[idx]
        starts, found = _lookup(spec, tables, times, y)
        q, fitted, rss = _refine(spec, tables, times, y, starts[0], max_iterations, tolerance)
        flow = _linear(spec, q)[:, : spec.n_amplitudes].sum(1) * 60.0 / tissue_density_g_per_ml
        high = np.flatnonzero(flow > MULTI_START_MIN_MBF_ML_MIN_G)
        for start in starts[1:]:
            other = _refine(spec, tables, times, y[high], start[high], max_iterations, tolerance)
            better = high[other[2] < rss[high]]
            kept = other[2] < rss[high]
            q[better], fitted[better], rss[better] = (v[kept] for v in other)
        p = _linear(spec, q)
        params = physiological_parameters(
            model,
            p[:, : spec.n_amplitudes],
            p[:, spec.n_amplitudes :],
            hematocrit,
            tissue_density_g_per_ml,
        )
        physical = np.isfinite(params["mbf_ml_min_g"]) & (params["mbf_ml_min_g"] > 0)
        code = np.where(~found, NO_FEASIBLE_START, np.where(physical, FIT_OK, NONPHYSICAL))
        failure[idx] = code
        ok = code == FIT_OK
        for name in PARAMETER_NAMES:
            value = params[name][ok]
            maps[name][idx[ok]] = np.where(np.isfinite(value) & (value >= 0), value, np.nan)
        at_bound[idx] = _at_bound(spec, q) & ok
        rmse[idx] = np.sqrt(rss / times.size)
        total = ((y - y.mean(1, keepdims=True)) ** 2).sum(1)
        r_squared[idx] = 1.0 - rss / np.where(total > 0, total, np.nan)
        fitted_all[idx] = fitted

    def shaped(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32).reshape(spatial)

    return PerfusionFit(
        model=model,
        **{name: shaped(maps[name]) for name in PARAMETER_NAMES},
        rmse_mmol_l=shaped(rmse),
        r_squared=shaped(r_squared),
        failure=failure.reshape(spatial),
        at_bound=at_bound.reshape(spatial),
        fitted_gd=fitted_all.reshape(spatial + (times.size,)),
        hematocrit=float(hematocrit),
        tissue_density_g_per_ml=float(tissue_density_g_per_ml),
    )
