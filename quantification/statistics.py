"""Agreement statistics of the source papers (method.md §A7, B4): paired tests, correlation,
regression,
Bland-Altman, sensitivity/specificity. NumPy + SciPy only.

Tests, correlation and regression come from ``scipy.stats``; only Bland-Altman (which SciPy does
not have) is computed here. All functions take paired 1-D arrays ``auto`` (the method under test)
and ``ref`` (the reference) of equal length, in any one unit (ms, %, s, Dice...), and refuse
mismatched, too short or non-finite input with a ``ValueError`` that says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "BlandAltman",
    "DiagnosticAccuracy",
    "PairedAgreement",
    "Regression",
    "bland_altman",
    "diagnostic_accuracy",
    "mean_percent_difference",
    "mean_sd",
    "paired_agreement",
    "paired_t_test",
    "pearson_r",
    "regression",
    "wilcoxon_signed_rank",
]


def _pair(auto: np.ndarray, ref: np.ndarray, min_n: int, what: str) -> tuple[np.ndarray, ...]:
    a, r = np.asarray(auto, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.ndim != 1 or a.shape != r.shape:
        raise ValueError(
            f"{what}: need paired 1-D arrays of equal length, got {a.shape}, {r.shape}"
        )
    if a.size < min_n:
        raise ValueError(f"{what}: need at least {min_n} pairs, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(r).all()):
        raise ValueError(f"{what}: values must be finite (found NaN or Inf)")
    return a, r


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample SD (ddof = 1; SD 0 for a single value) of finite values [N >= 1]."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"mean_sd: need >= 1 finite value, got {v.size} values")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_t_test(auto: np.ndarray, ref: np.ndarray) -> float:
    """Two-sided paired t-test P (``scipy.stats.ttest_rel``); 1.0 when all differences are 0."""
    a, r = _pair(auto, ref, 2, "paired t-test")
    if np.all(a == r):
        return 1.0
    return float(stats.ttest_rel(a, r).pvalue)


def wilcoxon_signed_rank(auto: np.ndarray, ref: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank P (``scipy.stats.wilcoxon``, zero differences dropped as in
    ``zero_method="wilcox"``); 1.0 when all differences are 0."""
    a, r = _pair(auto, ref, 1, "Wilcoxon signed-rank test")
    if np.all(a == r):
        return 1.0
    return float(stats.wilcoxon(a, r).pvalue)


def pearson_r(
    auto: np.ndarray, ref: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Pearson correlation (``scipy.stats.pearsonr``).

    Returns:
        ``(r, p, ci_low, ci_high)``: the two-sided P of r = 0 and the ``confidence`` interval of r
        (Fisher z; needs N >= 4, else NaN bounds). A constant input gives r = NaN.
    """
    a, r = _pair(auto, ref, 2, "Pearson R")
    if np.ptp(a) == 0 or np.ptp(r) == 0:
        return float("nan"), float("nan"), float("nan"), float("nan")
    result = stats.pearsonr(a, r)
    low = high = float("nan")
    if a.size >= 4:
        ci = result.confidence_interval(confidence)
        low, high = float(ci.low), float(ci.high)
    return float(result.statistic), float(result.pvalue), low, high


@dataclass(frozen=True)
class Regression:
    """Least-squares line ``auto = slope * ref + intercept`` with t-based confidence intervals."""

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    r: float
    p: float  # two-sided P of slope = 0
    n: int


def regression(auto: np.ndarray, ref: np.ndarray, confidence: float = 0.95) -> Regression:
    """Regress ``auto`` on ``ref`` (``scipy.stats.linregress``); CIs = estimate ± t(n-2) · stderr.

    Needs N >= 3 and a non-constant ``ref``.
    """
    a, r = _pair(auto, ref, 3, "regression")
    if np.ptp(r) == 0:
        raise ValueError("regression: the reference values are all equal; no slope is defined")
    fit = stats.linregress(r, a)
    t = float(stats.t.ppf(0.5 + confidence / 2, a.size - 2))
    return Regression(
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        slope_ci=(float(fit.slope - t * fit.stderr), float(fit.slope + t * fit.stderr)),
        intercept_ci=(
            float(fit.intercept - t * fit.intercept_stderr),
            float(fit.intercept + t * fit.intercept_stderr),
        ),
        r=float(fit.rvalue),
        p=float(fit.pvalue),
        n=int(a.size),
    )


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement: differences ``auto - ref``, in the unit of the inputs."""

    bias: float  # mean difference
    sd: float  # SD of the differences (ddof = 1)
    lower: float  # bias - k * sd
    upper: float  # bias + k * sd
    n: int


def bland_altman(auto: np.ndarray, ref: np.ndarray, k: float = 1.96) -> BlandAltman:
    """Bias ± SD of ``auto - ref`` and limits of agreement ``bias ± k·SD`` (k = 1.96: 95 %).

    Needs N >= 2 (for the SD).
    """
    a, r = _pair(auto, ref, 2, "Bland-Altman")
    d = a - r
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    return BlandAltman(bias=bias, sd=sd, lower=bias - k * sd, upper=bias + k * sd, n=int(d.size))


def mean_percent_difference(auto: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute percentage difference ``100 · mean(|auto - ref| / |ref|)`` (%).

    Pairs with ``ref == 0`` are skipped (both 0: no difference; only ref 0: undefined); NaN when
    no pair is left.
    """
    a, r = _pair(auto, ref, 1, "mean % difference")
    ok = r != 0
    if not ok.any():
        return float("nan")
    return float(100.0 * np.mean(np.abs(a[ok] - r[ok]) / np.abs(r[ok])))


@dataclass(frozen=True)
class DiagnosticAccuracy:
    """Classification of ``value >= threshold`` by the method against the reference."""

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: float  # tp / (tp + fn); NaN without reference positives
    specificity: float  # tn / (tn + fp); NaN without reference negatives


def diagnostic_accuracy(auto: np.ndarray, ref: np.ndarray, threshold: float) -> DiagnosticAccuracy:
    """Sensitivity and specificity of ``auto >= threshold`` for ``ref >= threshold`` (method.md §B4:
    T2 >= 58 ms, ECV >= 29 %)."""
    a, r = _pair(auto, ref, 1, "sensitivity/specificity")
    pos_a, pos_r = a >= threshold, r >= threshold
    tp, fn = int((pos_a & pos_r).sum()), int((~pos_a & pos_r).sum())
    tn, fp = int((~pos_a & ~pos_r).sum()), int((pos_a & ~pos_r).sum())
    return DiagnosticAccuracy(
        threshold=float(threshold),
        tp=tp,
        fn=fn,
        tn=tn,
        fp=fp,
        sensitivity=tp / (tp + fn) if tp + fn else float("nan"),
        specificity=tn / (tn + fp) if tn + fp else float("nan"),
    )


@dataclass(frozen=True)
class PairedAgreement:
    """Everything the papers report for one paired comparison (auto vs reference)."""

    n: int
    auto_mean: float
    auto_sd: float
    ref_mean: float
    ref_sd: float
    p_value: float  # of the paired test named in ``test``
    test: str  # "wilcoxon" or "t-test"
    r: float
    r_ci: tuple[float, float]
    regression: Regression | None  # None with fewer than 3 pairs or a constant reference
    bland_altman: BlandAltman
    mean_percent_difference: float


def paired_agreement(auto: np.ndarray, ref: np.ndarray, test: str = "wilcoxon") -> PairedAgreement:
    """Mean ± SD of both, the paired test P (``"wilcoxon"`` as in method.md §B4, or ``"t-test"`` as
    in
    A7), Pearson R with 95 % CI, regression slope with 95 % CI, Bland-Altman, mean % difference.

    Needs N >= 2.
    """
    a, r = _pair(auto, ref, 2, "paired agreement")
    if test not in ("wilcoxon", "t-test"):
        raise ValueError(f"test must be 'wilcoxon' or 't-test', got {test!r}")
    p = wilcoxon_signed_rank(a, r) if test == "wilcoxon" else paired_t_test(a, r)
    rho, _, low, high = pearson_r(a, r)
    fit = regression(a, r) if a.size >= 3 and np.ptp(r) > 0 else None
    (am, asd), (rm, rsd) = mean_sd(a), mean_sd(r)
    return PairedAgreement(
        n=int(a.size),
        auto_mean=am,
        auto_sd=asd,
        ref_mean=rm,
        ref_sd=rsd,
        p_value=p,
        test=test,
        r=rho,
        r_ci=(low, high),
        regression=fit,
        bland_altman=bland_altman(a, r),
        mean_percent_difference=mean_percent_difference(a, r),
    )
