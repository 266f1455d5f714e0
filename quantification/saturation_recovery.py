"""Saturation-recovery signal -> gadolinium concentration with proton-density frames
(docs/method.md §P1).

The dual-sequence perfusion acquisition images every heartbeat after a saturation pulse with a
FLASH readout, and starts with a few proton-density (PD) frames: the same readout without the
saturation pulse (often at a lower flip angle). Their ratio removes the receive-coil gain and
the proton density, and depends only on the longitudinal relaxation rate ``R1`` (1/s):

    Mz before readout pulse n (0-based):  M_n = Mss + (M_0 - Mss) (cos(a) E1)^n,
    E1 = exp(-TR R1),  Mss = (1 - E1) / (1 - cos(a) E1)
    SR frames:  M_0 = 1 - exp(-TD0 R1),  TD0 = TS - n_c TR   (saturation to the first pulse)
    PD frames:  M_0 = 1 (fully relaxed)
    S_SR(R1) = sin(a) M_{n_c},   S_PD(R1) = sin(a_pd) M^PD_{n_c}

with the saturation time ``TS`` (saturation pulse to the centre line of k-space), the readout
spacing ``TR``, the flip angles ``a`` and ``a_pd`` and ``n_c`` readout pulses before the centre
line (linear phase-encoding order). The PD frames precede the contrast, so the ratio of a frame
is ``S_SR(R1(t)) / S_PD(R1_pre)``. The pre-contrast ``R1_pre`` of every pixel is measured, not
assumed: the mean ratio of the frames before the bolus foot is ``S_SR(R1_pre) / S_PD(R1_pre)``,
which rises monotonically with R1 and is inverted on a fine table (linear interpolation); then
each frame's ``S_SR = ratio * S_PD(R1_pre)`` is inverted the same way for ``R1(t)``, and

    [Gd](t) = (R1(t) - R1_pre) / r1        (mmol/L, r1 = relaxivity in L/(mmol s))

Every timing value is read from the file: a missing one raises
:class:`MissingSequenceAttribute` naming it; nothing has a default.

Pure NumPy; importable without Lightning, Hydra or W&B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SEQUENCE_ATTRS",
    "MissingSequenceAttribute",
    "SaturationRecoveryTiming",
    "gd_from_ratio",
    "pd_signal",
    "r1_from_ratio",
    "sr_signal",
    "sr_to_pd_ratio",
]

SEQUENCE_ATTRS = {
    "saturation_time_ms": "saturation pulse to the centre line of k-space (TS), ms",
    "echo_spacing_ms": "spacing of the FLASH readout pulses (TR), ms",
    "flip_angle_deg": "flip angle of the saturation-recovery frames, degrees",
    "pd_flip_angle_deg": "flip angle of the proton-density frames, degrees",
    "lines_to_centre": "readout pulses before the centre line of k-space (int)",
    "relaxivity_l_mmol_s": "T1 relaxivity of the contrast agent at this field, L/(mmol s)",
}
"""Attributes the conversion needs (name: meaning and unit)."""


class MissingSequenceAttribute(KeyError):
    """A sequence attribute needed for signal -> Gd is absent or not a usable number."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class SaturationRecoveryTiming:
    """Timing of one saturation-recovery readout (attributes: :data:`SEQUENCE_ATTRS`)."""

    saturation_time_ms: float
    echo_spacing_ms: float
    flip_angle_deg: float
    pd_flip_angle_deg: float
    lines_to_centre: int
    relaxivity_l_mmol_s: float

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str) -> SaturationRecoveryTiming:
        """Read the timing from HDF5-like attributes; ``where`` names them in errors."""
        values = {}
        for name, meaning in SEQUENCE_ATTRS.items():
            if name not in attrs:
                raise MissingSequenceAttribute(
                    f"{where}: missing attribute {name!r} ({meaning}); it is needed to convert "
                    "the saturation-recovery signal to gadolinium and has no default"
                )
            value = np.asarray(attrs[name])
            if value.size != 1 or not np.isfinite(value.astype(float)) or float(value) <= 0:
                raise MissingSequenceAttribute(
                    f"{where}: attribute {name!r} ({meaning}): expected one number > 0; "
                    f"found {value.tolist()!r}"
                )
            values[name] = float(value)
        values["lines_to_centre"] = int(round(values["lines_to_centre"]))
        timing = cls(**values)
        if timing.lines_to_centre * timing.echo_spacing_ms >= timing.saturation_time_ms:
            raise MissingSequenceAttribute(
                f"{where}: attributes 'saturation_time_ms' = {timing.saturation_time_ms} and "
                f"'lines_to_centre' x 'echo_spacing_ms' = "
                f"{timing.lines_to_centre * timing.echo_spacing_ms}: expected the saturation "
                "time to exceed the readout time before the centre line"
            )
        return timing


def _centre_mz(r1_per_s: np.ndarray, start: np.ndarray, flip_deg: float,
               timing: SaturationRecoveryTiming) -> np.ndarray:  # fmt: skip
    e1 = np.exp(-timing.echo_spacing_ms * 1e-3 * r1_per_s)
    cos_a = np.cos(np.deg2rad(flip_deg))
    steady = (1.0 - e1) / (1.0 - cos_a * e1)
    return steady + (start - steady) * (cos_a * e1) ** timing.lines_to_centre


def sr_signal(r1_per_s: np.ndarray, timing: SaturationRecoveryTiming) -> np.ndarray:
    """Centre-line signal of a saturation-recovery frame (M0 = 1) at relaxation rate R1 (1/s)."""
    r1 = np.asarray(r1_per_s, dtype=np.float64)
    delay_s = (timing.saturation_time_ms - timing.lines_to_centre * timing.echo_spacing_ms) * 1e-3
    mz = _centre_mz(r1, 1.0 - np.exp(-delay_s * r1), timing.flip_angle_deg, timing)
    return np.sin(np.deg2rad(timing.flip_angle_deg)) * mz


def pd_signal(r1_per_s: np.ndarray, timing: SaturationRecoveryTiming) -> np.ndarray:
    """Centre-line signal of a proton-density frame (M0 = 1, fully relaxed before it)."""
    r1 = np.asarray(r1_per_s, dtype=np.float64)
    mz = _centre_mz(r1, np.ones_like(r1), timing.pd_flip_angle_deg, timing)
    return np.sin(np.deg2rad(timing.pd_flip_angle_deg)) * mz


def sr_to_pd_ratio(r1_per_s: np.ndarray, timing: SaturationRecoveryTiming) -> np.ndarray:
    """SR / PD signal ratio of a tissue whose R1 (1/s) was the same in both frames (the
    pre-contrast frames)."""
    return sr_signal(r1_per_s, timing) / pd_signal(r1_per_s, timing)


def _invert(function, values: np.ndarray, timing: SaturationRecoveryTiming,
            r1_range_per_s: tuple[float, float] = (0.1, 200.0),
            n_table: int = 8192) -> np.ndarray:  # fmt: skip
    r1_table = np.geomspace(*r1_range_per_s, n_table)
    return np.interp(np.asarray(values, dtype=np.float64), function(r1_table, timing), r1_table)


def r1_from_ratio(ratio: np.ndarray, timing: SaturationRecoveryTiming) -> np.ndarray:
    """Invert :func:`sr_to_pd_ratio`: R1 (1/s) of pre-contrast frames, clamped to 0.1-200 1/s."""
    return _invert(sr_to_pd_ratio, ratio, timing)


def gd_from_ratio(
    ratio: np.ndarray, timing: SaturationRecoveryTiming, baseline: np.ndarray
) -> np.ndarray:
    """Gadolinium (mmol/L) from SR/PD ratios [T, ...]; ``baseline`` bool [T] marks the
    pre-contrast frames.

    The PD frames were acquired before the contrast: the mean ratio of the baseline frames gives
    the pre-contrast R1 of each pixel, hence its PD signal; every frame's SR signal is then its
    ratio times that PD signal, inverted for R1 on a table of :func:`sr_signal`.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    r1_pre = r1_from_ratio(ratio[np.asarray(baseline, dtype=bool)].mean(axis=0), timing)
    r1 = _invert(sr_signal, ratio * pd_signal(r1_pre, timing), timing)
    return (r1 - r1_pre) / timing.relaxivity_l_mmol_s
