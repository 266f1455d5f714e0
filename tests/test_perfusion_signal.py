"""Saturation-recovery signal -> gadolinium, and the bolus foot found from the data."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic.perfusion_phantom import IMAGING_TIMING, sr_signal_bloch
from quantification.bolus_timing import bolus_foot_peak, pre_contrast_frames
from quantification.saturation_recovery import (
    MissingSequenceAttribute,
    SaturationRecoveryTiming,
    gd_from_ratio,
    r1_from_ratio,
    sr_to_pd_ratio,
)

TIMING = SaturationRecoveryTiming.from_attrs(IMAGING_TIMING, "test")


def test_closed_form_ratio_matches_a_pulse_by_pulse_bloch_simulation():
    r1 = np.geomspace(0.5, 60.0, 50)
    bloch = sr_signal_bloch(r1, IMAGING_TIMING, False) / sr_signal_bloch(r1, IMAGING_TIMING, True)
    np.testing.assert_allclose(sr_to_pd_ratio(r1, TIMING), bloch, rtol=1e-10)
    np.testing.assert_allclose(r1_from_ratio(bloch, TIMING), r1, rtol=1e-4)


def test_gadolinium_is_recovered_from_signals_with_the_pre_contrast_r1_measured():
    gd = np.concatenate([np.zeros(5), np.linspace(0.0, 1.5, 20)])[:, None] * [1.0, 0.5]
    r1 = np.array([1.0, 1 / 1.2]) + IMAGING_TIMING["relaxivity_l_mmol_s"] * gd
    m0 = np.array([300.0, 80.0])  # coil gain and proton density differ per pixel
    ratio = (m0 * sr_signal_bloch(r1, IMAGING_TIMING, False)) / (
        m0 * sr_signal_bloch(r1[:1], IMAGING_TIMING, True)
    )
    baseline = np.arange(gd.shape[0]) < 5
    np.testing.assert_allclose(gd_from_ratio(ratio, TIMING, baseline), gd, atol=1e-3)


def test_a_missing_sequence_attribute_is_named_never_defaulted():
    attrs = dict(IMAGING_TIMING)
    del attrs["flip_angle_deg"]
    with pytest.raises(MissingSequenceAttribute, match="'flip_angle_deg'.*no default"):
        SaturationRecoveryTiming.from_attrs(attrs, "cases.h5: case 'c1', key 'perfusion'")
    bad = dict(IMAGING_TIMING, saturation_time_ms=20.0)  # shorter than the readout to the centre
    with pytest.raises(MissingSequenceAttribute, match="saturation time"):
        SaturationRecoveryTiming.from_attrs(bad, "cases.h5")


def test_bolus_foot_from_irregular_frame_times():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.7, 1.1, 50))
    arrival = times[0] + 9.3
    x = np.clip(times - arrival, 0.0, None)
    curve = 5.0 * (x / 2.0) ** 2 * np.exp(-x / 2.0) + rng.normal(0.0, 0.02, times.size)
    foot, peak = bolus_foot_peak(curve, times)
    assert arrival - 0.5 < foot < arrival + 2.0
    assert abs(peak - (arrival + 4.0)) < 1.2
    baseline = pre_contrast_frames(times, foot)
    assert baseline[0] and not baseline[times > foot].any()
