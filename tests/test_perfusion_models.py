"""The perfusion kinetic models and their vectorised fit, on curves from independent forward models:
the phantom's fine-grid AATH convolution and dcmri's two-compartment exchange model."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic.perfusion_phantom import bolus_aif, frame_times, tissue_curves
from quantification.perfusion_fit import (
    FIT_OK,
    NO_ENHANCEMENT,
    NONFINITE,
    fit_perfusion,
)

# rows: MBF ml/min/g, PS ml/min/g, Vb ml/g, Visf ml/g, delay s (rest, stress, ischaemic)
TRUTH = np.array([
    (0.5, 1.0, 0.10, 0.20, 1.0),
    (1.2, 1.2, 0.10, 0.22, 0.5),
    (2.5, 1.5, 0.11, 0.22, 1.5),
    (5.0, 2.0, 0.12, 0.25, 2.0),
])  # fmt: skip


@pytest.fixture(scope="module")
def acquisition() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    times = frame_times(rng, 60, 70.0)
    return times, bolus_aif(times, arrival_s=8.0, peak_mmol_l=5.0, width_s=6.0)


def test_bte_recovers_the_parameters_of_the_independent_aath_phantom(acquisition):
    times, aif = acquisition
    fit = fit_perfusion(aif, tissue_curves(aif, times, TRUTH), times, model="bte")
    assert (fit.failure == FIT_OK).all()
    found = np.stack([fit.mbf_ml_min_g, fit.ps_ml_min_g, fit.vb_ml_g, fit.visf_ml_g], 1)
    np.testing.assert_allclose(found, TRUTH[:, :4], rtol=0.01)
    np.testing.assert_allclose(fit.delay_s, TRUTH[:, 4], atol=0.02)
    assert fit.r_squared.min() > 0.9999


def test_2cxm_recovers_the_parameters_of_dcmri_two_compartment_curves(acquisition):
    dcmri = pytest.importorskip("dcmri")
    times, aif = acquisition
    step = 0.01
    fine_t = times[0] + step * np.arange(int((times[-1] - times[0]) / step) + 1)
    fine_aif = np.interp(fine_t, times, aif)
    rho = 1.05  # the fit's default tissue density: dcmri works per ml
    curves = []
    for mbf, ps, vb, visf, delay in TRUTH:
        c = dcmri.conc_tissue(fine_aif, dt=step, kinetics="2CX", H=0.42, vb=vb * rho,
                              vi=visf * rho, Fb=mbf * rho / 60, PS=ps * rho / 60)  # fmt: skip
        curves.append(np.interp(times - delay, fine_t, c, left=0.0))
    fit = fit_perfusion(aif, np.array(curves), times, model="2cxm")
    assert (fit.failure == FIT_OK).all()
    np.testing.assert_allclose(fit.mbf_ml_min_g, TRUTH[:, 0], rtol=0.02)
    np.testing.assert_allclose(fit.ps_ml_min_g, TRUTH[:, 1], rtol=0.05)
    np.testing.assert_allclose(fit.visf_ml_g, TRUTH[:, 3], rtol=0.05)


def test_fermi_deconvolution_recovers_the_flow_of_independent_fermi_curves(acquisition):
    times, aif = acquisition
    step = 0.01
    fine_t = times[0] + step * np.arange(int((times[-1] - times[0]) / step) + 1)
    fine_aif = np.interp(fine_t, times, aif)
    lag = step * np.arange(fine_t.size)
    truth = np.array([(0.5, 4.0, 1.5, 1.0), (1.2, 3.0, 1.0, 0.5), (5.0, 1.5, 0.5, 2.0)])
    curves = []
    for mbf, shoulder, width, delay in truth:  # MBF ml/min/g, tau0 s, w s, delay s
        response = (1 + np.exp(-shoulder / width)) / (1 + np.exp((lag - shoulder) / width))
        tissue = mbf * 1.05 / 60 * np.convolve(fine_aif, response)[: fine_t.size] * step
        curves.append(np.interp(times - delay, fine_t, tissue, left=0.0))
    fit = fit_perfusion(aif, np.array(curves), times, model="fermi")
    assert (fit.failure == FIT_OK).all()
    np.testing.assert_allclose(fit.mbf_ml_min_g, truth[:, 0], rtol=0.02)
    np.testing.assert_allclose(fit.delay_s, truth[:, 3], atol=0.05)
    assert np.isnan(fit.ps_ml_min_g).all()  # Fermi deconvolution gives the flow only


def test_hematocrit_moves_the_exchange_not_the_blood_flow(acquisition):
    times, aif = acquisition
    curves = tissue_curves(aif, times, TRUTH[1:2])
    low = fit_perfusion(aif, curves, times, hematocrit=0.35)
    high = fit_perfusion(aif, curves, times, hematocrit=0.50)
    np.testing.assert_allclose(low.mbf_ml_min_g, high.mbf_ml_min_g, rtol=1e-4)
    # PS = -Fp ln(1 - E) with Fp = Fb (1 - Hct): the same curve means PS scales with 1 - Hct
    np.testing.assert_allclose(low.ps_ml_min_g / high.ps_ml_min_g, 0.65 / 0.50, rtol=1e-3)


def test_maps_keep_the_image_shape_and_name_why_a_pixel_failed(acquisition):
    times, aif = acquisition
    images = np.zeros((2, 3, 4, times.size))  # [S, H, W, T]: background, no enhancement
    images[0, 1, 2] = tissue_curves(aif, times, TRUTH[:1])[0]
    images[1, 0, 0, 5] = np.nan
    fit = fit_perfusion(aif, images, times)
    assert fit.mbf_ml_min_g.shape == (2, 3, 4) and fit.fitted_gd.shape == (2, 3, 4, times.size)
    assert fit.failure[0, 1, 2] == FIT_OK
    assert fit.failure[1, 0, 0] == NONFINITE
    assert fit.failure[0, 0, 0] == NO_ENHANCEMENT
    assert np.isnan(fit.mbf_ml_min_g[fit.failure != FIT_OK]).all()
    assert abs(fit.mbf_ml_min_g[0, 1, 2] - 0.5) < 0.005


def test_bad_input_is_refused_with_what_was_expected(acquisition):
    times, aif = acquisition
    with pytest.raises(ValueError, match="same T"):
        fit_perfusion(aif, np.zeros((3, times.size - 1)), times)
    with pytest.raises(ValueError, match="hematocrit"):
        fit_perfusion(aif, np.zeros((3, times.size)), times, hematocrit=42.0)
    with pytest.raises(ValueError, match="model must be one of"):
        fit_perfusion(aif, np.zeros((3, times.size)), times, model="fermi2")
