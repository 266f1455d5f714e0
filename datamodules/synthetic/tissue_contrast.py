"""Tissue label map -> clean MR image: random per-tissue intensities (SynthSeg style) or
physically simulated weighted images.

Two ways to give every label of a :mod:`datamodules.synthetic.short_axis_anatomy` map an
intensity, mixed at random per image (``physical_p``):

* **random contrast** (Billot et al., SynthSeg, 2023): each tissue group gets a mean drawn
  uniformly in [0, 1] and a within-tissue SD in ``texture_sd``; tissues of one kind (blood
  pools, the muscular walls, the fats, the skeletal muscles) share their mean with probability
  ``group_p``, as they do in any real contrast. The myocardium and the LV blood pool differ by at
  least ``min_myo_blood_contrast`` so that every image holds the boundary the network learns.
* **physical**: 1.5 T tissue properties (native T1, T2, proton density, ECV; the fat, muscle,
  lung and liver values and the myocardium / blood proton densities of
  :mod:`datamodules.synthetic.mapping_phantom`), each jittered per image, post-contrast T1 from
  the ECV and a blood post-contrast T1 of 260-420 ms, then one weighted image of a readout of
  :data:`READOUTS`: native T1 (inversion times of the native STONE list), post-contrast T1 or
  T2-prep, with the signal models of :mod:`quantification.relaxometry` (magnitude for T1).

New readouts (MOLLI, ShMOLLI, SASHA, ...) plug in as one more entry of :data:`READOUTS`: a
function ``(rng, t1_ms [L], t2_ms [L], pd [L]) -> float [L]`` giving each label's signal for one
randomly chosen image of that sequence (e.g. ``look_locker_signal`` of a MOLLI schedule at one of
its inversion times). The mix draws the readout uniformly among ``readouts``.

Both return a float32 image [H, W] (texture included, no blur, noise or bias: those are
:class:`datamodules.mapping_transforms.AcquisitionArtefacts`) and the myocardium's mean
intensity (the reference of the noise level).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.mapping_transforms import gaussian_blur
from datamodules.synthetic import short_axis_anatomy as sa
from datamodules.synthetic.mapping_phantom import (
    FAT,
    LIVER,
    LUNG,
    MUSCLE,
    NOMINAL,
    PD_BLOOD,
    PD_MYO,
    TE_T2_MS,
    TI_NATIVE_MS,
    TI_POST_MS,
)
from quantification.relaxometry import t1_signal, t2_signal

N_LABELS = len(sa.LABEL_NAMES)
# tissues of one kind: with probability group_p they share one random mean (as in any real
# contrast: the myocardium looks like the other muscles, the blood pools like each other)
GROUPS = (
    (sa.LV_BLOOD, sa.RV_BLOOD, sa.AORTA, sa.LUNG_VESSEL),
    (sa.MYOCARDIUM, sa.RV_MYOCARDIUM, sa.PAPILLARY, sa.MUSCLE, sa.DIAPHRAGM),
    (sa.EPICARDIAL_FAT, sa.SUBCUTANEOUS_FAT),
)


def _properties() -> np.ndarray:
    """Nominal (native T1 ms, T2 ms, proton density, ECV fraction) per label [L, 4] at 1.5 T."""
    table = np.zeros((N_LABELS, 4))
    table[sa.BACKGROUND] = (1000.0, 50.0, 0.0, 0.0)
    myo, blood = (1000.0, 50.0, PD_MYO, 0.26), (1550.0, 230.0, PD_BLOOD, 0.58)
    for label in (sa.MYOCARDIUM, sa.RV_MYOCARDIUM, sa.PAPILLARY):
        table[label] = myo
    for label in (sa.LV_BLOOD, sa.RV_BLOOD, sa.AORTA, sa.LUNG_VESSEL):
        table[label] = blood
    for label in (sa.EPICARDIAL_FAT, sa.SUBCUTANEOUS_FAT):
        table[label] = NOMINAL[FAT]
    for label in (sa.MUSCLE, sa.DIAPHRAGM):
        table[label] = NOMINAL[MUSCLE]
    table[sa.LUNG], table[sa.LIVER] = NOMINAL[LUNG], NOMINAL[LIVER]
    table[sa.STOMACH] = (2500.0, 250.0, 0.9, 0.0)  # fluid contents
    table[sa.BONE] = (550.0, 50.0, 0.6, 0.15)  # vertebral marrow, cortical rims darker via texture
    table[sa.SOFT_TISSUE] = (900.0, 50.0, 0.75, 0.25)
    table[sa.CSF] = (4000.0, 2000.0, 1.0, 0.0)
    return table


TISSUE_PROPERTIES = _properties()
"""[L, 4] nominal native T1 (ms), T2 (ms), proton density, ECV (fraction) of every label."""


def _choose(rng: np.random.Generator, times: tuple[float, ...]) -> float:
    """One of the sequence's times, jittered by +-3 %."""
    return float(rng.choice(times)) * float(rng.uniform(0.97, 1.03))


def _native_t1(rng, t1_ms, t2_ms, pd) -> np.ndarray:
    return np.abs(t1_signal(np.array([_choose(rng, TI_NATIVE_MS)]), pd, t1_ms))[0]


def _post_t1(rng, t1_ms, t2_ms, pd) -> np.ndarray:
    ecv = TISSUE_PROPERTIES[:, 3] * rng.uniform(0.8, 1.2, N_LABELS)
    hct = rng.uniform(0.35, 0.5)
    blood = TISSUE_PROPERTIES[sa.LV_BLOOD, 0]
    delta_r1_blood = 1 / rng.uniform(260, 420) - 1 / blood
    t1_post = 1 / (1 / t1_ms + ecv / (1 - hct) * delta_r1_blood)
    return np.abs(t1_signal(np.array([_choose(rng, TI_POST_MS)]), pd, t1_post))[0]


def _t2_prep(rng, t1_ms, t2_ms, pd) -> np.ndarray:
    offset = rng.uniform(0.0, 0.04) * pd
    return t2_signal(np.array([_choose(rng, TE_T2_MS)]), pd, t2_ms, offset)[0]


Readout = Callable[..., np.ndarray]
READOUTS: dict[str, Readout] = {
    "t1_native": _native_t1,
    "post_contrast": _post_t1,
    "t2": _t2_prep,
}
"""Physical readouts: name -> ``(rng, t1_ms [L], t2_ms [L], pd [L]) -> signal [L]``."""


@dataclass(frozen=True)
class ContrastSettings:
    """How tissue intensities are drawn (``data.synthesis.contrast``).

    Attributes:
        physical_p: probability that an image is a physical weighted image (else random).
        readouts: physical readouts drawn from (keys of :data:`READOUTS`).
        property_jitter: relative +- jitter of every tissue's T1, T2 and proton density.
        group_p: probability that the tissues of one kind (:data:`GROUPS`) share a mean.
        min_myo_blood_contrast: least |mean myocardium - mean LV blood| of a random contrast.
        texture_sd: (low, high) within-tissue SD, fraction of the image's range.
        texture_smooth_p: probability that the texture is smooth (correlated over a few
            pixels) rather than white.
    """

    physical_p: float = 0.4
    readouts: tuple[str, ...] = ("t1_native", "post_contrast", "t2")
    property_jitter: float = 0.1
    group_p: float = 0.8
    min_myo_blood_contrast: float = 0.1
    texture_sd: tuple[float, float] = (0.0, 0.08)
    texture_smooth_p: float = 0.5

    def __post_init__(self) -> None:
        unknown = sorted(set(self.readouts) - set(READOUTS))
        if unknown or not self.readouts:
            raise ValueError(f"readouts {list(self.readouts)}: expected some of {sorted(READOUTS)}")


def random_means(rng: np.random.Generator, settings: ContrastSettings) -> np.ndarray:
    """SynthSeg-style tissue means [L] in [0, 1] (module docstring)."""
    while True:
        means = rng.uniform(0, 1, N_LABELS)
        for group in GROUPS:
            if rng.random() < settings.group_p:
                means[list(group)] = np.clip(
                    means[group[0]] + rng.normal(0, 0.02, len(group)), 0, 1
                )
        if abs(means[sa.MYOCARDIUM] - means[sa.LV_BLOOD]) >= settings.min_myo_blood_contrast:
            return means


def physical_means(
    rng: np.random.Generator, settings: ContrastSettings, readout: str
) -> np.ndarray:
    """Signal per label [L] of one weighted image of ``readout``, scaled to a maximum of 1."""
    j = settings.property_jitter
    t1, t2, pd = (TISSUE_PROPERTIES[:, i] * rng.uniform(1 - j, 1 + j, N_LABELS) for i in range(3))
    signal = np.asarray(READOUTS[readout](rng, t1, t2, pd), np.float64)
    return signal / max(float(signal.max()), 1e-6)


def tissue_image(
    labels: np.ndarray, rng: np.random.Generator, settings: ContrastSettings
) -> tuple[np.ndarray, float, str]:
    """A clean image of a label map (module docstring).

    Args:
        labels: uint8 [H, W] short-axis labels.
        rng: random stream (the image depends only on it and the labels).
        settings: the contrast mix.

    Returns:
        image float32 [H, W] (about 0-1), the myocardium's mean intensity, and the contrast
        kind (``random`` or the readout name).
    """
    if rng.random() < settings.physical_p:
        kind = str(rng.choice(list(settings.readouts)))
        means = physical_means(rng, settings, kind)
    else:
        kind, means = "random", random_means(rng, settings)
    sds = rng.uniform(*settings.texture_sd, N_LABELS)
    noise = torch.from_numpy(rng.standard_normal(labels.shape, dtype=np.float32))
    if rng.random() < settings.texture_smooth_p:
        sigma = float(rng.uniform(0.7, 2.5))
        noise = gaussian_blur(noise, (sigma, sigma))
        noise = noise / noise.std().clamp_min(1e-6)
    noise = noise.numpy()
    image = means.astype(np.float32)[labels] + sds.astype(np.float32)[labels] * noise
    return np.clip(image, 0, None), float(means[sa.MYOCARDIUM]), kind
