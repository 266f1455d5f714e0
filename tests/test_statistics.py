"""Agreement statistics against values computed by hand (closed forms, small examples)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantification.statistics import (
    bland_altman,
    diagnostic_accuracy,
    mean_percent_difference,
    mean_sd,
    paired_agreement,
    paired_t_test,
    pearson_r,
    regression,
    wilcoxon_signed_rank,
)

# x = reference, y = method: mean 3 and 4, sum dx dy = 6, sum dx^2 = 10, sum dy^2 = 6
REF = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
AUTO = np.array([2.0, 4.0, 5.0, 4.0, 5.0])


def test_bland_altman_by_hand():
    auto, ref = np.array([10.0, 12.0, 14.0, 16.0]), np.array([9.0, 12.0, 15.0, 14.0])
    ba = bland_altman(auto, ref)  # differences 1, 0, -1, 2
    sd = math.sqrt((0.5**2 + 0.5**2 + 1.5**2 + 1.5**2) / 3)  # = sqrt(5/3)
    assert ba.bias == pytest.approx(0.5)
    assert ba.sd == pytest.approx(sd)
    assert (ba.lower, ba.upper) == pytest.approx((0.5 - 1.96 * sd, 0.5 + 1.96 * sd))
    assert (ba.lower, ba.upper) == pytest.approx((-2.030349, 3.030349), abs=1e-6)
    assert ba.n == 4


def test_paired_t_test_matches_the_closed_form_for_3_degrees_of_freedom():
    auto, ref = np.array([10.0, 12.0, 14.0, 16.0]), np.array([9.0, 12.0, 15.0, 14.0])
    t = 0.5 / (math.sqrt(5 / 3) / 2)
    x = t / math.sqrt(3)  # Student t CDF with 3 dof: 1/2 + (x/(1+x^2) + atan x) / pi
    p = 1 - 2 / math.pi * (x / (1 + x * x) + math.atan(x))
    assert paired_t_test(auto, ref) == pytest.approx(p, rel=1e-9)
    assert paired_t_test(ref, ref) == 1.0


def test_wilcoxon_exact_p_when_all_differences_are_positive():
    # n = 5, every difference > 0: exact two-sided P = 2 / 2^5
    assert wilcoxon_signed_rank(np.arange(5.0) + [1, 2, 3, 4, 5], np.arange(5.0)) == 0.0625
    assert wilcoxon_signed_rank(REF, REF) == 1.0


def test_pearson_r_and_its_fisher_interval_by_hand():
    r, p, low, high = pearson_r(AUTO, REF)
    assert r == pytest.approx(6 / math.sqrt(60))
    z, se = math.atanh(6 / math.sqrt(60)), 1 / math.sqrt(5 - 3)
    assert (low, high) == pytest.approx(
        (math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se))
    )
    assert 0 < p < 1


def test_regression_slope_and_t_interval_by_hand():
    fit = regression(AUTO, REF)  # auto = 0.6 ref + 2.2; SSE 2.4, s^2 = 0.8
    stderr = math.sqrt(0.8 / 10)
    t975_3dof = 3.182446305284263
    assert (fit.slope, fit.intercept) == pytest.approx((0.6, 2.2))
    assert fit.slope_ci == pytest.approx((0.6 - t975_3dof * stderr, 0.6 + t975_3dof * stderr))
    assert fit.n == 5 and fit.r == pytest.approx(6 / math.sqrt(60))


def test_identical_measurements_agree_perfectly():
    values = np.array([48.0, 51.0, 55.0, 60.0, 62.0])
    agreement = paired_agreement(values, values)
    assert agreement.p_value == 1.0
    assert agreement.r == pytest.approx(1.0)
    assert agreement.regression.slope == pytest.approx(1.0)
    assert agreement.bland_altman.bias == 0 and agreement.bland_altman.sd == 0
    assert agreement.mean_percent_difference == 0


def test_a_systematic_offset_is_found():
    rng = np.random.default_rng(0)
    ref = rng.normal(52, 6, 200)
    auto = ref + 1.5 + rng.normal(0, 0.5, 200)
    agreement = paired_agreement(auto, ref, test="t-test")
    assert agreement.p_value < 1e-6
    assert agreement.bland_altman.bias == pytest.approx(1.5, abs=0.1)
    lo, hi = agreement.regression.slope_ci
    assert lo < 1.0 < hi


def test_sensitivity_and_specificity_by_counting():
    ref = np.array([60.0, 62.0, 50.0, 57.9, 59.0, 45.0])  # positives: 60, 62, 59
    auto = np.array([57.0, 63.0, 58.0, 50.0, 61.0, 46.0])
    acc = diagnostic_accuracy(auto, ref, threshold=58.0)
    assert (acc.tp, acc.fn, acc.tn, acc.fp) == (2, 1, 2, 1)
    assert acc.sensitivity == pytest.approx(2 / 3) and acc.specificity == pytest.approx(2 / 3)


def test_mean_percent_difference_and_mean_sd():
    assert mean_percent_difference(np.array([11.0, 9.0]), np.array([10.0, 10.0])) == 10.0
    assert mean_sd(np.array([1.0, 2.0, 3.0])) == (2.0, 1.0)


@pytest.mark.parametrize(
    "auto, ref, message",
    [
        (np.ones(3), np.ones(4), "equal length"),
        (np.ones((2, 2)), np.ones((2, 2)), "1-D"),
        (np.array([1.0, np.nan]), np.ones(2), "finite"),
        (np.ones(1), np.ones(1), "at least 2"),
    ],
)
def test_mismatched_or_bad_pairs_are_refused(auto, ref, message):
    with pytest.raises(ValueError, match=message):
        bland_altman(auto, ref)
