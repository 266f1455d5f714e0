"""Signal models of the mapping sequences, separate from any geometry: relaxation-time and M0
maps (any shape ``S``) in, weighted images ``[N, *S]`` out (signed; take the magnitude for a
magnitude image). The mapping phantoms (:mod:`datamodules.synthetic.mapping_phantom`) call these
once per tissue and sum the partial volumes; any other anatomy can do the same.

- :func:`inversion_recovery_signal`: STONE-like ideal inversion recovery
  ``M0 (1 - 2 exp(-TI/T1))`` (docs/method.md §B2, the phantoms' default).
- :func:`look_locker_signal` on a :func:`look_locker_schedule`: MOLLI and ShMOLLI. Each
  inversion is followed by single-shot readouts in consecutive heartbeats; the scheme
  ``"5(3)3"`` means 5 images after the first inversion, 3 beats of rest, 3 images after the
  second (Kellman & Hansen, JCMR 2014;16:2: 5(3)3 native, 4(1)3(1)2 post-contrast; ShMOLLI
  5(1)1(1)1, Piechnik et al., JCMR 2010;12:69). The image in beat b is taken at a fixed delay
  after that beat's R wave, so the inversion times depend on the heart rate: inversion j comes
  ``TI_j = ti_first_ms + j ti_step_ms`` before its first image and its later images follow at
  the actual beat intervals (RR varies from beat to beat). The magnetisation is simulated
  through the whole scheme: from M0 (rested), an ideal inversion ``Mz -> -Mz``; while an
  inversion's images are read, a continuous Look-Locker readout (Deichmann & Haase, J Magn
  Reson 1992;96:608) makes it recover with the apparent ``T1* = 1 / (1/T1 + R_ro)`` towards
  ``M0 T1*/T1`` (``R_ro``: the readout's extra relaxation rate, from its flip angles); in the
  rest beats, and between an inversion's last image and the next inversion, it recovers freely
  with T1. So the first inversion's images follow ``A - B exp(-TI/T1*)`` with
  ``T1 = T1* (B/A - 1)`` exactly, and a later inversion, which starts from incompletely
  recovered magnetisation when T1 is long against the rest period, carries the heart-rate
  dependence MOLLI has. Not modelled: inversion efficiency < 1, the bSSFP readout's T2 and
  off-resonance dependence, magnetisation transfer (the known MOLLI biases against spin-echo T1).
- :func:`saturation_recovery_signal` with :func:`sasha_times`: SASHA (Chow et al., MRM
  2014;71:2082): one non-saturated image (``TS = +inf``, acquired first) and saturation
  recovery images ``M0 (1 - eta exp(-TS/T1))`` at TS spread over the beat (up to RR minus the
  readout), ``eta`` <= 1 the saturation efficiency.
- :func:`t2prep_signal`: T2-prepared ``M0 (exp(-TE/T2) + b)``, b the offset fraction from the
  T1 recovery after the preparation.

Pure NumPy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MOLLI_SCHEMES",
    "SHMOLLI_SCHEME",
    "LookLockerSchedule",
    "beat_intervals_ms",
    "inversion_recovery_signal",
    "look_locker_schedule",
    "look_locker_signal",
    "parse_scheme",
    "sasha_times",
    "saturation_recovery_signal",
    "t2prep_signal",
]

MOLLI_SCHEMES = {"t1_native": "5(3)3", "post_contrast": "4(1)3(1)2"}
"""MOLLI scheme per modality (Kellman & Hansen 2014)."""
SHMOLLI_SCHEME = "5(1)1(1)1"
"""ShMOLLI's scheme (Piechnik et al. 2010), native and post-contrast."""


def _times(times_ms: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Times [N] in ``like``'s dtype, shaped to broadcast against it: [N, 1, ..., 1]."""
    return np.asarray(times_ms, dtype=like.dtype).reshape((-1,) + (1,) * np.ndim(like))


def _map(values_ms: np.ndarray) -> np.ndarray:
    """A relaxation-time map as a float array (float32 stays float32: the phantoms' precision)."""
    values = np.asarray(values_ms)
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def inversion_recovery_signal(ti_ms: np.ndarray, t1_ms: np.ndarray, m0: np.ndarray | float = 1.0
                              ) -> np.ndarray:  # fmt: skip
    """Ideal inversion recovery ``M0 (1 - 2 exp(-TI/T1))``: times [N], maps [*S] -> [N, *S]."""
    t1 = _map(t1_ms)
    return m0 * (1.0 - 2.0 * np.exp(-_times(ti_ms, t1) / t1))


def t2prep_signal(te_ms: np.ndarray, t2_ms: np.ndarray, m0: np.ndarray | float = 1.0,
                  offset_fraction: float = 0.0) -> np.ndarray:  # fmt: skip
    """T2-prepared ``M0 (exp(-TE/T2) + b)``: times [N], maps [*S] -> [N, *S]."""
    t2 = _map(t2_ms)
    return m0 * (np.exp(-_times(te_ms, t2) / t2) + offset_fraction)


def saturation_recovery_signal(ts_ms: np.ndarray, t1_ms: np.ndarray,
                               m0: np.ndarray | float = 1.0, efficiency: float = 1.0
                               ) -> np.ndarray:  # fmt: skip
    """Saturation recovery ``M0 (1 - eta exp(-TS/T1))``; ``TS = +inf`` gives M0 (SASHA's
    non-saturated image). Times [N], maps [*S] -> [N, *S]."""
    t1 = _map(t1_ms)
    return m0 * (1.0 - efficiency * np.exp(-_times(ts_ms, t1) / t1))


def sasha_times(rr_ms: float, n_saturated: int = 10, ts_first_ms: float = 100.0,
                readout_ms: float = 200.0) -> np.ndarray:  # fmt: skip
    """SASHA's times in acquisition order: ``+inf`` (the non-saturated image) then
    ``n_saturated`` saturation times evenly from ``ts_first_ms`` to ``RR - readout_ms`` (the
    saturation pulse follows the previous beat's readout), ms."""
    ts_last = max(rr_ms - readout_ms, ts_first_ms + 10.0 * (n_saturated - 1))
    return np.concatenate([[np.inf], np.linspace(ts_first_ms, ts_last, n_saturated)])


def parse_scheme(scheme: str) -> tuple[list[int], list[int]]:
    """Images per inversion and rest beats between inversions of a scheme like ``"5(3)3"``.

    Example:
        >>> parse_scheme("4(1)3(1)2")
        ([4, 3, 2], [1, 1])
    """
    if not re.fullmatch(r"\d+(\(\d+\)\d+)*", scheme):
        raise ValueError(f"scheme {scheme!r}; expected e.g. '5(3)3' or '4(1)3(1)2'")
    numbers = [int(v) for v in re.findall(r"\d+", scheme)]
    images, rests = numbers[0::2], numbers[1::2]
    if min(images) < 1:
        raise ValueError(f"scheme {scheme!r}: every inversion needs at least one image")
    return images, rests


def beat_intervals_ms(rng: np.random.Generator, heart_rate_bpm: float, n_beats: int,
                      variability: float = 0.03) -> np.ndarray:  # fmt: skip
    """Beat-to-beat RR intervals [n_beats] (ms): the mean interval of ``heart_rate_bpm`` with
    Gaussian relative variability (SD ``variability``, clipped to +-15 %)."""
    mean = 60_000.0 / heart_rate_bpm
    return mean * (1.0 + np.clip(rng.normal(0.0, variability, n_beats), -0.15, 0.15))


@dataclass(frozen=True)
class LookLockerSchedule:
    """Timing of a multi-inversion Look-Locker acquisition (ms from the first R wave).

    Attributes:
        scheme: e.g. ``"5(3)3"``.
        inversion_ms: float64 [J] time of each inversion pulse.
        image_ms: float64 [N] acquisition time of each image, in acquisition order.
        inversion_of_image: int [N] which inversion each image follows.
    """

    scheme: str
    inversion_ms: np.ndarray
    image_ms: np.ndarray
    inversion_of_image: np.ndarray

    @property
    def ti_ms(self) -> np.ndarray:
        """float64 [N] inversion time of each image (acquisition order)."""
        return self.image_ms - self.inversion_ms[self.inversion_of_image]


def look_locker_schedule(scheme: str, rr_ms: np.ndarray, ti_first_ms: float = 100.0,
                         ti_step_ms: float = 80.0, trigger_delay_ms: float | None = None
                         ) -> LookLockerSchedule:  # fmt: skip
    """Inversion and image times of ``scheme`` over the beats ``rr_ms``.

    Args:
        scheme: images and rest beats, e.g. ``"5(3)3"`` (:func:`parse_scheme`).
        rr_ms: float [>= beats of the scheme] beat intervals (:func:`beat_intervals_ms`).
        ti_first_ms, ti_step_ms: inversion j comes ``ti_first_ms + j ti_step_ms`` before its
            first image.
        trigger_delay_ms: image delay after the R wave (default 0.7 of the mean RR: diastole).

    Example:
        >>> s = look_locker_schedule("5(3)3", np.full(11, 1000.0))
        >>> s.ti_ms.tolist()
        [100.0, 1100.0, 2100.0, 3100.0, 4100.0, 180.0, 1180.0, 2180.0]
    """
    images, rests = parse_scheme(scheme)
    rr = np.asarray(rr_ms, dtype=np.float64)
    n_beats = sum(images) + sum(rests)
    if rr.size < n_beats:
        raise ValueError(f"scheme {scheme} spans {n_beats} beats; got {rr.size} RR intervals")
    delay = 0.7 * float(rr[:n_beats].mean()) if trigger_delay_ms is None else trigger_delay_ms
    r_waves = np.concatenate([[0.0], np.cumsum(rr)])
    beat, image_ms, inversion_ms, inversion_of_image = 0, [], [], []
    for j, n_images in enumerate(images):
        beats = r_waves[beat : beat + n_images] + delay
        inversion_ms.append(beats[0] - (ti_first_ms + j * ti_step_ms))
        image_ms.extend(beats)
        inversion_of_image.extend([j] * n_images)
        beat += n_images + (rests[j] if j < len(rests) else 0)
    return LookLockerSchedule(
        scheme=scheme,
        inversion_ms=np.array(inversion_ms),
        image_ms=np.array(image_ms),
        inversion_of_image=np.array(inversion_of_image),
    )


def look_locker_signal(schedule: LookLockerSchedule, t1_ms: np.ndarray,
                       readout_rate_per_ms: float, m0: np.ndarray | float = 1.0
                       ) -> np.ndarray:  # fmt: skip
    """Signed longitudinal magnetisation at each image of the schedule (module docstring).

    Args:
        schedule: :func:`look_locker_schedule`.
        t1_ms: float [*S] true T1 map, ms.
        readout_rate_per_ms: the readout's extra relaxation rate ``R_ro`` (1/ms):
            ``1/T1* = 1/T1 + R_ro``.
        m0: [*S] or scalar equilibrium magnetisation.

    Returns:
        float64 [N, *S] in acquisition order (``schedule.ti_ms`` gives each image's TI).
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)
    t1_star = 1.0 / (1.0 / t1 + readout_rate_per_ms)
    m0 = np.broadcast_to(np.asarray(m0, dtype=np.float64), t1.shape)
    steady = m0 * t1_star / t1
    out = np.empty((schedule.image_ms.size, *t1.shape))
    mz, last_image = m0, None
    for j, t_inv in enumerate(schedule.inversion_ms):
        if last_image is not None:  # free recovery since the previous inversion's last image
            mz = m0 - (m0 - mz) * np.exp(-(t_inv - last_image) / t1)
        start = -mz  # ideal inversion
        mine = np.flatnonzero(schedule.inversion_of_image == j)
        dt = _times(schedule.image_ms[mine] - t_inv, t1)
        out[mine] = steady - (steady - start) * np.exp(-dt / t1_star)
        last_image = float(schedule.image_ms[mine].max())
        mz = steady - (steady - start) * np.exp(-(last_image - t_inv) / t1_star)
    return out
