"""Signal models of the mapping sequences (maps in, images out), used by the phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic.sequence_signals import (
    beat_intervals_ms,
    look_locker_schedule,
    look_locker_signal,
    parse_scheme,
    sasha_times,
    saturation_recovery_signal,
)


def test_molli_inversion_times_follow_the_heart():
    slow = look_locker_schedule("5(3)3", np.full(11, 1000.0))
    fast = look_locker_schedule("5(3)3", np.full(11, 750.0))
    assert slow.ti_ms.tolist() == [100, 1100, 2100, 3100, 4100, 180, 1180, 2180]
    assert fast.ti_ms.tolist() == [100, 850, 1600, 2350, 3100, 180, 930, 1680]
    post = look_locker_schedule("4(1)3(1)2", np.full(11, 800.0))
    assert post.ti_ms.size == 9 and sorted(post.ti_ms)[:3] == [100, 180, 260]
    irregular = beat_intervals_ms(np.random.default_rng(0), 70.0, 11, variability=0.05)
    ti = look_locker_schedule("5(3)3", irregular).ti_ms
    np.testing.assert_allclose(np.diff(ti[:5]), irregular[:4])  # one beat apart
    assert parse_scheme("5(1)1(1)1") == ([5, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="scheme '5-3-3'"):
        parse_scheme("5-3-3")
    with pytest.raises(ValueError, match="spans 11 beats"):
        look_locker_schedule("5(3)3", np.full(8, 900.0))


def test_look_locker_readout_gives_the_apparent_t1_and_the_correction_holds():
    schedule = look_locker_schedule("5(3)3", np.full(11, 900.0))
    t1 = np.array([400.0, 1000.0, 1600.0])
    rate = 1 / 3000.0
    signal = look_locker_signal(schedule, t1, rate, m0=2.0)
    t1_star = 1 / (1 / t1 + rate)
    a = 2.0 * t1_star / t1  # the readout's steady state
    first = schedule.inversion_of_image == 0
    expected = a - (a + 2.0) * np.exp(-schedule.ti_ms[first, None] / t1_star)
    np.testing.assert_allclose(signal[first], expected, rtol=1e-12)
    assert np.allclose(t1_star * ((a + 2.0) / a - 1), t1)  # T1 = T1* (B/A - 1)
    # the second inversion starts from incompletely recovered magnetisation: less inverted,
    # the more so the longer T1 (the heart-rate dependence of MOLLI)
    second = ~first
    full = a - (a + 2.0) * np.exp(-schedule.ti_ms[second, None] / t1_star)
    shortfall = (signal[second] - full)[0] / 2.0
    assert 0 < shortfall[0] < 1e-3 and shortfall[0] < shortfall[1] < shortfall[2] < 0.1


def test_sasha_starts_with_the_non_saturated_image():
    ts = sasha_times(900.0)
    assert ts[0] == np.inf and ts[1] == 100.0 and ts[-1] == pytest.approx(700.0)
    signal = saturation_recovery_signal(ts, np.array([1000.0]), m0=3.0, efficiency=0.97)
    assert signal[0, 0] == 3.0
    np.testing.assert_allclose(signal[1:, 0], 3.0 * (1 - 0.97 * np.exp(-ts[1:] / 1000.0)))
