"""Quantitative-perfusion phantoms with known MBF, PS, Vb and Visf (docs/perfusion.md).

The tissue curves come from a forward model that shares no code with the fitting
(:mod:`quantification.perfusion_models`): the adiabatic tissue-homogeneity (AATH) impulse
response written out on a fine time grid (``FINE_STEP_S`` = 0.01 s) and convolved numerically
with the AIF, then sampled at the frame times. The AIF between frames is linear: the measured AIF
(its samples) is all that any fit knows, so a phantom that used a finer AIF would test the
sampling of the bolus, not the fit; :func:`tissue_curves` takes ``aif_fine`` to study that error
separately.

Cases (``simulate_case``): S short-axis slices of H x W pixels, T frames at heart-beat times
(irregular RR), a gamma-variate first pass with recirculation (peak 4-7 mmol/L in blood), the
myocardium as a ring of 6 segments each with its own MBF (rest 0.5-1.5, stress 1.5-5 ml/min/g;
``ischaemic`` segments at 0.4-1.0 under stress), PS, Vb, Visf and bolus delay (0.5-2.5 s), a
low-flow body (0.1-0.2 ml/min/g), the LV blood pool and air. Noise: Gaussian in mmol/L for the
gadolinium form; for the dual-sequence form the frames are simulated through a pulse-by-pulse
Bloch recursion of the saturation-recovery FLASH readout (written here, independent of
:mod:`quantification.saturation_recovery`), with PD frames first and Rician noise.

``python -m datamodules.synthetic.perfusion_phantom --output phantoms.h5`` writes a small file
(two gadolinium cases, rest and stress, and one dual-sequence case) for the README example.

NumPy and h5py only (imports nothing of the training stack).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from datamodules.synthetic.rician_noise import add_rician_noise
from formats.atomic_file import atomic_write
from formats.perfusion_contract import write_dual_sequence_case, write_gd_case

__all__ = [
    "AIF_TIMING",
    "FINE_STEP_S",
    "IMAGING_TIMING",
    "PerfusionPhantom",
    "aath_tissue_curve",
    "bolus_aif",
    "frame_times",
    "simulate_case",
    "sr_signal_bloch",
    "tissue_curves",
    "write_perfusion_phantoms",
]

FINE_STEP_S = 0.01
HEMATOCRIT = 0.42
TISSUE_DENSITY_G_PER_ML = 1.05
AIF_TIMING = {
    "saturation_time_ms": 23.8,
    "echo_spacing_ms": 2.45,
    "flip_angle_deg": 5.0,
    "pd_flip_angle_deg": 5.0,
    "lines_to_centre": 8,
    "relaxivity_l_mmol_s": 4.5,
}
"""AIF readout of the dual sequence: short saturation time (low-resolution, the AIF stays in the
sensitive range of the signal), 2.45 ms spacing, 5 degrees."""
IMAGING_TIMING = {
    "saturation_time_ms": 100.0,
    "echo_spacing_ms": 2.5,
    "flip_angle_deg": 14.0,
    "pd_flip_angle_deg": 5.0,
    "lines_to_centre": 36,
    "relaxivity_l_mmol_s": 4.5,
}
"""High-resolution imaging readout: saturation time 100 ms, 14 degrees, PD frames at 5 degrees."""
R1_NATIVE_PER_S = {"blood": 1.0 / 1.55, "myocardium": 1.0 / 1.0, "body": 1.0 / 0.9}
"""Pre-contrast R1 at 1.5 T (blood T1 1550 ms, myocardium 1000 ms, skeletal muscle 900 ms)."""


def frame_times(rng: np.random.Generator, n_frames: int, heart_rate_bpm: float) -> np.ndarray:
    """Frame times (s): one frame per beat, RR varying by 5 % (irregular, as acquired)."""
    rr = 60.0 / heart_rate_bpm * (1.0 + 0.05 * rng.standard_normal(n_frames))
    return np.cumsum(np.clip(rr, 0.3, None)) - rr[0]


def bolus_aif(times_s: np.ndarray, arrival_s: float, peak_mmol_l: float,
              width_s: float) -> np.ndarray:  # fmt: skip
    """Blood AIF (mmol/L) at ``times_s``: gamma-variate first pass plus a dispersed recirculation
    and a slow tail (about 10 % of the peak)."""

    def gamma(t0: float, alpha: float, beta: float) -> np.ndarray:
        x = np.clip(times_s - t0, 0.0, None)
        g = x**alpha * np.exp(-x / beta)
        return g / (alpha * beta) ** alpha / np.exp(-alpha)

    first = gamma(arrival_s, 3.0, width_s / 3.0)
    second = 0.25 * gamma(arrival_s + 2.2 * width_s, 3.0, width_s / 1.5)
    tail = 0.08 * (1.0 - np.exp(-np.clip(times_s - arrival_s - width_s, 0.0, None) / 8.0))
    return peak_mmol_l * (first + second + tail)


def aath_tissue_curve(aif_fine: np.ndarray, mbf_ml_min_g: float, ps_ml_min_g: float,
                      vb_ml_g: float, visf_ml_g: float, delay_s: float,
                      hematocrit: float = HEMATOCRIT,
                      density_g_per_ml: float = TISSUE_DENSITY_G_PER_ML) -> np.ndarray:  # fmt: skip
    """Tissue Gd (mmol/L) on the fine grid: the AATH impulse response, integrated exactly over
    each cell of ``FINE_STEP_S``, convolved numerically with the blood AIF ``aif_fine`` sampled
    on that grid (starting at the first frame)."""
    fb = mbf_ml_min_g * density_g_per_ml / 60.0  # ml/s per ml of tissue
    fp = fb * (1.0 - hematocrit)
    extraction = 1.0 - np.exp(-ps_ml_min_g * density_g_per_ml / 60.0 / fp)
    transit_s = vb_ml_g * density_g_per_ml / fb
    washout = extraction * fp / (visf_ml_g * density_g_per_ml)
    # the response integrated exactly over each cell [tau - h/2, tau + h/2] (the first: [0, h/2])
    centres = FINE_STEP_S * np.arange(aif_fine.size)
    lo = np.clip(centres - 0.5 * FINE_STEP_S, 0.0, None)
    hi = centres + 0.5 * FINE_STEP_S
    plug = np.clip(np.minimum(hi, transit_s) - lo, 0.0, None)
    start = np.maximum(lo, transit_s)
    exchange = np.where(
        hi > transit_s,
        extraction
        / washout
        * (np.exp(-washout * (start - transit_s)) - np.exp(-washout * (hi - transit_s))),
        0.0,
    )
    curve = fb * np.convolve(aif_fine, plug + exchange)[: aif_fine.size]
    shift = int(round(delay_s / FINE_STEP_S))
    return np.concatenate([np.zeros(shift), curve[: curve.size - shift]])


def tissue_curves(aif_gd: np.ndarray, times_s: np.ndarray, params: np.ndarray,
                  aif_fine: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Noise-free tissue curves [N, T] for parameter rows [N, 5] = (MBF ml/min/g, PS ml/min/g,
    Vb ml/g, Visf ml/g, delay s); the AIF is linear between the frames unless ``aif_fine``
    (the AIF on the fine grid from ``times_s[0]``) is given."""
    t = np.asarray(times_s, dtype=np.float64)
    fine_t = t[0] + FINE_STEP_S * np.arange(int((t[-1] - t[0]) / FINE_STEP_S) + 2)
    fine = np.interp(fine_t, t, aif_gd) if aif_fine is None else aif_fine[: fine_t.size]
    return np.stack([np.interp(t, fine_t, aath_tissue_curve(fine, *row)) for row in params])


def sr_signal_bloch(r1_per_s: np.ndarray, timing: dict, proton_density: bool) -> np.ndarray:
    """Centre-line signal (M0 = 1) of a saturation-recovery (or PD) FLASH readout, by an explicit
    pulse-by-pulse recursion: relax, then flip, until the centre line."""
    r1 = np.asarray(r1_per_s, dtype=np.float64)
    flip = np.deg2rad(timing["pd_flip_angle_deg" if proton_density else "flip_angle_deg"])
    tr_s = timing["echo_spacing_ms"] * 1e-3
    first_s = timing["saturation_time_ms"] * 1e-3 - timing["lines_to_centre"] * tr_s
    mz = np.ones_like(r1) if proton_density else 1.0 - np.exp(-first_s * r1)
    for _ in range(int(timing["lines_to_centre"])):
        mz = mz * np.cos(flip)
        mz = 1.0 - (1.0 - mz) * np.exp(-tr_s * r1)
    return mz * np.sin(flip)


@dataclass(frozen=True)
class PerfusionPhantom:
    """One simulated case with its truth.

    Attributes:
        times_s: float64 [T] frame times (without PD frames).
        aif_gd: float64 [T] blood AIF, mmol/L.
        perfusion_gd: float32 [S, T, H, W] tissue Gd with noise, mmol/L.
        truth: dict of float32 [S, H, W] maps (mbf_ml_min_g, ps_ml_min_g, vb_ml_g, visf_ml_g,
            delay_s; NaN outside tissue), ``labels`` uint8 [S, H, W] (0 air, 1 body, 2 LV,
            3 myocardium) and ``segments`` uint8 [S, H, W] (myocardial segment 1-6, 0 elsewhere:
            the file's ``myocardium_mask``).
        segment_params: float64 [S, 6, 5] parameters of the myocardial segments.
        stress: whether it is a stress scan.
    """

    times_s: np.ndarray
    aif_gd: np.ndarray
    perfusion_gd: np.ndarray
    truth: dict
    segment_params: np.ndarray
    stress: bool


def _labels(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    cy, cx = h / 2 + rng.uniform(-2, 2), w / 2 + rng.uniform(-2, 2)
    r = np.hypot(y - cy, x - cx)
    body = ((y - h / 2) / (0.46 * h)) ** 2 + ((x - w / 2) / (0.48 * w)) ** 2 <= 1.0
    inner, outer = 0.12 * min(h, w), 0.2 * min(h, w)
    labels = np.where(body, 1, 0).astype(np.uint8)
    labels[r < outer] = 3
    labels[r < inner] = 2
    segment = (np.floor(np.mod(np.arctan2(y - cy, x - cx), 2 * np.pi) / (np.pi / 3))).astype(int)
    return labels, np.clip(segment, 0, 5)


def simulate_case(rng: np.random.Generator, n_slices: int = 3, shape: tuple[int, int] = (48, 48),
                  n_frames: int = 60, stress: bool = True, ischaemic: int = 1,
                  noise_mmol_l: float = 0.02) -> PerfusionPhantom:  # fmt: skip
    """One case in gadolinium units (module docstring)."""
    hr = rng.uniform(75, 100) if stress else rng.uniform(55, 75)
    times = frame_times(rng, n_frames, hr)
    aif = bolus_aif(times, rng.uniform(6, 10), rng.uniform(4, 7), rng.uniform(5, 8))
    mbf_range = (1.5, 5.0) if stress else (0.5, 1.5)
    segments = np.empty((n_slices, 6, 5))
    segments[..., 0] = rng.uniform(*mbf_range, (n_slices, 6))
    if stress and ischaemic:
        for s in range(n_slices):
            segments[s, rng.choice(6, ischaemic, replace=False), 0] = rng.uniform(0.4, 1.0)
    segments[..., 1] = rng.uniform(0.8, 2.0, (n_slices, 6))
    segments[..., 2] = rng.uniform(0.08, 0.14, (n_slices, 6))
    segments[..., 3] = rng.uniform(0.15, 0.3, (n_slices, 6))
    segments[..., 4] = rng.uniform(0.5, 2.5, (n_slices, 6))
    body_params = np.array([[rng.uniform(0.1, 0.2), 0.3, 0.04, 0.2, 2.0]])
    body_curve = tissue_curves(aif, times, body_params)[0]
    images = np.zeros((n_slices, n_frames) + shape)
    names = ("mbf_ml_min_g", "ps_ml_min_g", "vb_ml_g", "visf_ml_g", "delay_s")
    truth = {name: np.full((n_slices,) + shape, np.nan, np.float32) for name in names}
    all_labels = np.zeros((n_slices,) + shape, np.uint8)
    segment_labels = np.zeros((n_slices,) + shape, np.uint8)
    for s in range(n_slices):
        labels, segment = _labels(shape, rng)
        all_labels[s] = labels
        curves = tissue_curves(aif, times, segments[s])
        images[s][:, labels == 1] = body_curve[:, None]
        images[s][:, labels == 2] = aif[:, None]
        myo = labels == 3
        segment_labels[s][myo] = segment[myo] + 1
        images[s][:, myo] = curves[segment[myo]].T
        for k, name in enumerate(names):
            truth[name][s][myo] = segments[s, segment[myo], k]
            truth[name][s][labels == 1] = body_params[0, k]
    images += rng.normal(0.0, noise_mmol_l, images.shape)
    truth["labels"] = all_labels
    truth["segments"] = segment_labels
    return PerfusionPhantom(times, aif, images.astype(np.float32), truth, segments, stress)


def _dual_sequence(rng: np.random.Generator, case: PerfusionPhantom, n_pd: int, snr: float):
    """Signal frames (PD frames first) of the AIF series and the imaging slices of a case."""
    pd_times = case.times_s[0] - (n_pd - np.arange(n_pd)) * np.diff(case.times_s[:2])
    times = np.concatenate([pd_times, case.times_s])
    labels = case.truth["labels"]
    r1_native = np.select([labels == 1, labels == 2, labels == 3],
                          [R1_NATIVE_PER_S["body"], R1_NATIVE_PER_S["blood"],
                           R1_NATIVE_PER_S["myocardium"]], 0.0)[:, None]  # fmt: skip
    r1 = r1_native + IMAGING_TIMING["relaxivity_l_mmol_s"] * np.clip(case.perfusion_gd, 0, None)
    m0 = np.where(labels > 0, 100.0, 0.0)[:, None]
    sr = m0 * sr_signal_bloch(r1, IMAGING_TIMING, False)
    pd = m0 * sr_signal_bloch(r1_native * np.ones((1, n_pd, 1, 1)), IMAGING_TIMING, True)
    sigma = 100.0 * sr_signal_bloch(np.array(R1_NATIVE_PER_S["myocardium"]), IMAGING_TIMING,
                                    True) / snr  # fmt: skip
    frames = add_rician_noise(rng, np.concatenate([pd, sr], axis=1), float(sigma))
    # AIF series: 32 x 24 frames, LV blood pool disc of radius 5 px, myocardium around it
    y, x = np.mgrid[:32, :24]
    r = np.hypot(y - 16, x - 12)
    lv, myo = r < 5, (r >= 5) & (r < 8)
    r1_blood = R1_NATIVE_PER_S["blood"] + AIF_TIMING["relaxivity_l_mmol_s"] * case.aif_gd
    aif_sr = sr_signal_bloch(r1_blood, AIF_TIMING, False)
    aif_pd = sr_signal_bloch(np.full(n_pd, R1_NATIVE_PER_S["blood"]), AIF_TIMING, True)
    myo_sr = sr_signal_bloch(np.full(case.times_s.size, R1_NATIVE_PER_S["myocardium"]),
                             AIF_TIMING, False)  # fmt: skip
    myo_pd = sr_signal_bloch(np.full(n_pd, R1_NATIVE_PER_S["myocardium"]), AIF_TIMING, True)
    series = np.zeros((times.size, 32, 24))
    series[:, lv] = 100.0 * np.concatenate([aif_pd, aif_sr])[:, None]
    series[:, myo] = 100.0 * np.concatenate([myo_pd, myo_sr])[:, None]
    aif_sigma = 100.0 * sr_signal_bloch(np.array(R1_NATIVE_PER_S["blood"]), AIF_TIMING,
                                        True) / (4 * snr)  # fmt: skip
    series = add_rician_noise(rng, series, float(aif_sigma))
    return times, series.astype(np.float32), lv, frames.astype(np.float32)


def _write_truth(group: h5py.Group, case: PerfusionPhantom) -> None:
    for name, values in case.truth.items():
        group.create_dataset(f"truth/{name}", data=values, compression="gzip", compression_opts=1)
    group.create_dataset("truth/segment_params", data=case.segment_params)
    group.create_dataset("truth/aif_gd", data=case.aif_gd)


def write_perfusion_phantoms(path: str | Path, seed: int = 0, shape: tuple[int, int] = (48, 48),
                             n_frames: int = 60, noise_mmol_l: float = 0.02,
                             dual_snr: float = 40.0) -> Path:  # fmt: skip
    """Write ``rest`` and ``stress`` gadolinium cases and a ``stress_dual`` dual-sequence case
    (3 slices each), with their ``truth`` groups, atomically; returns the path."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5:
        for name, stress in (("rest", False), ("stress", True)):
            case = simulate_case(rng, shape=shape, n_frames=n_frames, stress=stress,
                                 noise_mmol_l=noise_mmol_l)  # fmt: skip
            group = write_gd_case(h5, name, case.aif_gd, case.perfusion_gd, case.times_s,
                                  HEMATOCRIT, case.truth["segments"])  # fmt: skip
            _write_truth(group, case)
        case = simulate_case(rng, shape=shape, n_frames=n_frames, stress=True, noise_mmol_l=0.0)
        n_pd = 3
        times, series, lv, frames = _dual_sequence(rng, case, n_pd, dual_snr)
        group = write_dual_sequence_case(
            h5,
            "stress_dual",
            series,
            lv,
            AIF_TIMING,
            frames,
            IMAGING_TIMING,
            times,
            n_pd,
            "phantom_dual",
            HEMATOCRIT,
            case.truth["segments"],
        )
        _write_truth(group, case)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write perfusion phantoms (HDF5 contract).")
    parser.add_argument("--output", required=True, type=Path, help="the .h5 file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.02, help="Gd noise SD, mmol/L")
    args = parser.parse_args(argv)
    print(write_perfusion_phantoms(args.output, args.seed, noise_mmol_l=args.noise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
