"""Case and slice names of imported series, and the short-axis level of each mapping slice.

AIF: one case per slice of a perfusion series, ``<patient>_<study>_s<SeriesNumber>`` (plus
``_z<k>`` when the series has several slices).

Mapping: one case per patient and study, ``<patient>_<study>``, in every modality's file, so that
the native and post-contrast files of a study pair up for ECV. The slices of all mapping series of
a study are laid out together: parallel slices (normals within 10 degrees) form a stack; in each
stack, positions along the normal (signed towards the apex) within 2 mm are one slice location,
numbered base -> apex: ``slice_<k>`` (``stack<j>_slice_<k>`` when a study has several stacks).
So the native, post-contrast and T2 images of one location share a slice id. The level is the
series name's ``base`` / ``mid`` / ``apex`` when it says one, else the location's third of the
stack (:func:`formats.dicom.geometry.level_of_rank`; a single location: ``mid``); the slice attr
``level_source`` says which. Two series of one modality at one location (a repeated breath-hold):
the later ``SeriesNumber`` is kept, the other is reported.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np

from formats.dicom.geometry import apex_sign, level_of_rank
from formats.dicom.series_kind import series_text
from formats.dicom.series_plan import PlannedSeries, PlannedSlice
from formats.dicom.timing import float_of

__all__ = [
    "aif_case_ids",
    "group_by_study",
    "lay_out_mapping_slices",
    "level_from_name",
    "study_tag",
]

STACK_ANGLE_COS = float(np.cos(np.deg2rad(10.0)))
LOCATION_TOLERANCE_MM = 2.0
LEVEL_NAMES = (
    ("basal", re.compile(r"(^|[\s_-])(base|basal|bas)([\s_\d-]|$)")),
    ("mid", re.compile(r"(^|[\s_-])(mid|middle)([\s_\d-]|$)")),
    ("apical", re.compile(r"(^|[\s_-])(apex|apical|api)([\s_\d-]|$)")),
)


def study_tag(study_instance_uid: str) -> str:
    """Six hex digits naming a study in case ids (from its UID).

    Example:
        >>> study_tag("1.2.3")
        '6f9f33'
    """
    return hashlib.sha1(study_instance_uid.encode()).hexdigest()[:6]


def level_from_name(text: str) -> str | None:
    """``basal`` | ``mid`` | ``apical`` when a series name says it.

    Example:
        >>> level_from_name("molli_sax_base"), level_from_name("t2map mid"), level_from_name("sax")
        ('basal', 'mid', None)
    """
    for level, pattern in LEVEL_NAMES:
        if pattern.search(text):
            return level
    return None


def _series_number(series: PlannedSeries) -> float:
    number = float_of(series.header, "SeriesNumber")
    return -1.0 if number is None else number


def aif_case_ids(series: PlannedSeries, patient: str) -> list[str]:
    """Case id of each slice of a perfusion series (module docstring)."""
    study = study_tag(str(series.header.get("StudyInstanceUID", "")))
    base = f"{patient}_{study}_s{int(_series_number(series))}"
    if len(series.slices) == 1:
        return [base]
    return [f"{base}_z{k}" for k in range(len(series.slices))]


def _stacks(items: list[tuple[PlannedSeries, PlannedSlice]]) -> list[list[int]]:
    stacks: list[list[int]] = []
    for index, (_, planned) in enumerate(items):
        normal = planned.geometry.normal
        for stack in stacks:
            if abs(items[stack[0]][1].geometry.normal @ normal) >= STACK_ANGLE_COS:
                stack.append(index)
                break
        else:
            stacks.append([index])
    return stacks


def _locations(distances: np.ndarray) -> np.ndarray:
    """Location number (0 = most basal) of each distance, clustering within the tolerance."""
    order = np.argsort(distances, kind="stable")
    location = np.zeros(len(distances), np.int64)
    current, anchor = 0, distances[order[0]]
    for i in order:
        if distances[i] - anchor > LOCATION_TOLERANCE_MM:
            current, anchor = current + 1, distances[i]
        location[i] = current
    return location


def lay_out_mapping_slices(
    series: list[PlannedSeries],
) -> list[tuple[PlannedSeries, PlannedSlice, str]]:
    """Name and level the slices of the mapping series of ONE study (module docstring).

    Sets ``slice_id``, ``level`` and ``level_source`` of every kept slice.

    Returns:
        The slices dropped as repeats: (series, slice, reason).
    """
    items = [(s, p) for s in series for p in s.slices]
    if not items:
        return []
    stacks = _stacks(items)
    dropped = []
    for j, stack in enumerate(stacks):
        reference = items[stack[0]][1].geometry
        sign = apex_sign(reference)
        distances = np.array(
            [sign * items[i][1].geometry.position @ reference.normal for i in stack]
        )
        location = _locations(distances)
        n_locations = int(location.max()) + 1
        prefix = "" if len(stacks) == 1 else f"stack{j}_"
        kept: dict[tuple[str, int], tuple[PlannedSeries, PlannedSlice]] = {}
        for i, loc in zip(stack, location, strict=True):
            owner, planned = items[i]
            named = level_from_name(series_text(owner.header))
            planned.slice_id = f"{prefix}slice_{loc}"
            planned.level = named or level_of_rank(int(loc), n_locations)
            planned.level_source = (
                "series name" if named else f"location {loc + 1} of {n_locations} base to apex"
            )
            key = (owner.kind, int(loc))
            if key in kept:
                other_series, other_slice = kept[key]
                later = _series_number(owner) > _series_number(other_series)
                loser, winner = ((other_series, other_slice), (owner, planned)) if later else (
                    (owner, planned), (other_series, other_slice))  # fmt: skip
                kept[key] = winner
                reason = (
                    f"repeated at {planned.slice_id} (kept series {int(_series_number(winner[0]))})"
                )
                dropped.append((*loser, reason))
            else:
                kept[key] = (owner, planned)
    return dropped


def group_by_study(series: list[PlannedSeries]) -> dict[str, list[PlannedSeries]]:
    """Mapping series by StudyInstanceUID."""
    studies: dict[str, list[PlannedSeries]] = defaultdict(list)
    for s in series:
        studies[str(s.header.get("StudyInstanceUID", ""))].append(s)
    return dict(studies)
