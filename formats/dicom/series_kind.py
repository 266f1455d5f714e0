"""What a DICOM series is: perfusion AIF, T1 or T2 mapping; native or post-contrast; which T1
sequence; and which of its images are the scanner's own maps rather than weighted images.

Names are read from ``SeriesDescription``, ``ProtocolName`` and ``SequenceName`` together
(case-insensitive). Rules (docs/dicom.md):

- task: ``aif`` / ``perf`` / ``first pass`` / ``mpi`` -> perfusion; a T1 sequence name (below)
  or ``T1 map`` -> T1; ``T2 map`` / ``T2 prep`` / ``T2p`` -> T2. Without a telling name the
  import falls back on the times found (:mod:`formats.dicom.timing`), else asks for ``--task``.
- perfusion: the AIF series of a dual-sequence acquisition, or its imaging series (the frames
  that are mapped; :func:`perfusion_role`). A name saying ``aif`` -> AIF series; otherwise a
  series at several slice positions, or whose matrix exceeds :data:`AIF_MAX_MATRIX` pixels
  both ways, is the imaging series (Siemens ``tfl_perf_sax``, Philips ``Perfusion SA``, GE
  ``MPI stress`` with 3 slices of 192 x 111 px); a one-slice low-resolution series is an AIF
  series.
- T1 sequence: ``shmolli``, ``molli``, ``sasha``, ``stone``, ``look-locker`` / ``LL`` in the
  name; otherwise the pattern of the inversion times in acquisition order, split into runs at
  each new inversion (where the TI grows by less than 100 ms, or drops): runs of 5, 1, 1
  images -> ShMOLLI; 2-3 runs of at least 2 images, 7-17 images in all (5(3)3, 3(3)3(3)5,
  4(1)3(1)2 ...) -> MOLLI; one run of 10 or more evenly spaced TIs -> Look-Locker; anything
  else stays unknown.
- post-contrast T1: ``post``, ``pc``, ``gd``, ``gado`` in the name, or a ``ContrastBolusAgent``
  when the name does not say ``pre`` / ``native``.
- the scanner's maps: an ``ImageType`` value naming a map (``T1 MAP``, ``T2MAP``, ``ECV MAP``,
  ``MAP``) or a standard-deviation image (``STDDEV``); ``DERIVED`` alone is not enough (Siemens
  motion-corrected weighted images are ``DERIVED``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

__all__ = [
    "derived_map_kind",
    "is_post_contrast",
    "perfusion_role",
    "sequence_from_inversion_pattern",
    "sequence_from_name",
    "series_text",
    "task_from_name",
]

SEQUENCE_NAMES = (
    ("shmolli", re.compile(r"shmolli")),
    ("molli", re.compile(r"molli")),
    ("sasha", re.compile(r"sasha")),
    ("stone", re.compile(r"\bstone\b")),
    ("look_locker", re.compile(r"look[\s_-]*locker|(^|[\s_-])ll([\s_-]|$)")),
    ("t2prep", re.compile(r"t2[\s_-]*prep|\bt2p\b")),
)
TASK_NAMES = (
    ("aif", re.compile(r"\baif\b|_aif|aif_|perf|first[\s_-]*pass|\bmpi\b")),
    ("t2", re.compile(r"t2[\s_-]*(map|prep)|\bt2p\b")),
    (
        "t1",
        re.compile(
            r"t1[\s_-]*map|shmolli|molli|sasha|\bstone\b|look[\s_-]*locker|(^|[\s_-])ll([\s_-]|$)"
        ),
    ),
)
AIF_NAMES = re.compile(r"\baif\b|_aif|aif_")
AIF_MAX_MATRIX = 64
"""Largest phase-encoding matrix of an AIF series (the AIF network takes E1 40-64); an imaging
series of a perfusion acquisition has more pixels along both axes (e.g. 192 x 111)."""
POST_NAMES = re.compile(r"\bpost|\bpc\b|_pc\b|\bgd\b|gado")
PRE_NAMES = re.compile(r"\bpre\b|_pre\b|native")
MAP_TYPE = re.compile(r"MAP|STDDEV|STD[\s_]DEV")
NEW_INVERSION_BELOW_MS = 100.0
"""In acquisition order, a TI that grows by less than this starts a new inversion: images of one
inversion are one RR interval (> 250 ms) apart, successive inversions of MOLLI / ShMOLLI start
about 80 ms later than the previous one."""


def series_text(header: Dataset) -> str:
    """Series description, protocol and sequence name, lower case, one string."""
    keys = ("SeriesDescription", "ProtocolName", "SequenceName")
    return " ".join(str(header.get(k, "")) for k in keys).lower()


def task_from_name(text: str) -> str | None:
    """``aif`` | ``t1`` | ``t2`` from a series' names (:func:`series_text`), or None.

    Example:
        >>> task_from_name("myomaps molli 5(3)3 b"), task_from_name("t2map_flash")
        ('t1', 't2')
        >>> task_from_name("cine_retro_sax") is None
        True
    """
    for task, pattern in TASK_NAMES:
        if pattern.search(text):
            return task
    return None


def sequence_from_name(text: str) -> str | None:
    """The preparation sequence named in a series' names, or None.

    Example:
        >>> sequence_from_name("shmolli_192i"), sequence_from_name("t1map_ll_sax")
        ('shmolli', 'look_locker')
    """
    for sequence, pattern in SEQUENCE_NAMES:
        if pattern.search(text):
            return sequence
    return None


def sequence_from_inversion_pattern(times_in_acquisition_order: Sequence[float]) -> str | None:
    """MOLLI, ShMOLLI or Look-Locker from the inversion times in acquisition order (module
    docstring); None when the pattern is not one of them.

    Example:
        >>> sequence_from_inversion_pattern([120, 1120, 2120, 3120, 4120, 200, 1200, 2200])
        'molli'
        >>> sequence_from_inversion_pattern([100, 1100, 2100, 3100, 4100, 180, 260])
        'shmolli'
    """
    times = np.asarray(times_in_acquisition_order, dtype=np.float64)
    if times.size < 3:
        return None
    starts = np.flatnonzero(np.diff(times) < NEW_INVERSION_BELOW_MS) + 1
    lengths = [len(run) for run in np.split(times, starts)]
    if lengths == [5, 1, 1]:
        return "shmolli"
    if 2 <= len(lengths) <= 3 and min(lengths) >= 2 and 7 <= times.size <= 17:
        return "molli"
    if len(lengths) == 1 and times.size >= 10:
        steps = np.diff(times)
        if steps.min() > 0 and steps.std() <= 0.1 * steps.mean():
            return "look_locker"
    return None


def perfusion_role(text: str, n_positions: int, matrix: tuple[int, int]) -> str:
    """``aif`` (the AIF series) or ``perfusion`` (the imaging series) of a series whose names
    say perfusion (module docstring).

    Args:
        text: the series' names (:func:`series_text`).
        n_positions: how many slice positions its images have.
        matrix: rows, columns of its images.

    Example:
        >>> perfusion_role("tfl_perf_sax", 3, (192, 111)), perfusion_role("perf_aif", 1, (64, 48))
        ('perfusion', 'aif')
        >>> perfusion_role("firstpass", 1, (48, 40)), perfusion_role("perfusion sa", 1, (144, 144))
        ('aif', 'perfusion')
    """
    if AIF_NAMES.search(text):
        return "aif"
    if n_positions > 1 or min(matrix) > AIF_MAX_MATRIX:
        return "perfusion"
    return "aif"


def is_post_contrast(header: Dataset) -> bool:
    """Whether a T1 series was acquired after contrast (module docstring).

    Example:
        >>> from pydicom import Dataset
        >>> ds = Dataset()
        >>> ds.SeriesDescription = "MOLLI post 15min"
        >>> is_post_contrast(ds)
        True
    """
    text = series_text(header)
    if POST_NAMES.search(text):
        return True
    agent = str(header.get("ContrastBolusAgent", "")).strip()
    return bool(agent) and not PRE_NAMES.search(text)


def derived_map_kind(header: Dataset) -> str | None:
    """``t1`` / ``t2`` for the scanner's T1 / T2 map, ``other`` for another derived map
    (ECV, standard deviation, ...), None for a weighted image (module docstring).

    Example:
        >>> from pydicom import Dataset
        >>> t1_map, moco = Dataset(), Dataset()
        >>> t1_map.ImageType = ["DERIVED", "PRIMARY", "T1 MAP", "ND"]
        >>> moco.ImageType = ["DERIVED", "PRIMARY", "M", "ND", "MOCO"]
        >>> derived_map_kind(t1_map), derived_map_kind(moco)
        ('t1', None)
    """
    values = [str(v).upper() for v in header.get("ImageType", [])]
    naming = [v for v in values if MAP_TYPE.search(v)]
    if not naming:
        return None
    if any(re.search(r"STD", v) for v in naming):
        return "other"
    joined = " ".join(values)
    if re.search(r"ECV|T2\s*\*|T2STAR|R2", joined):
        return "other"
    if re.search(r"\bT1", joined):
        return "t1"
    if re.search(r"\bT2", joined):
        return "t2"
    return "other"
