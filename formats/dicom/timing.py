"""Where each vendor writes the preparation time of a mapping image and the time of a perfusion
frame, and the rules that read them (documented in the README, "Your own data (DICOM)").

Every rule works on a whole series: a source is used only when it gives a finite value for every
image and the values tell the images apart (strictly increasing once sorted); otherwise the next
source of the vendor's list is tried. When none works, :class:`TimingError` says which sources were
tried and what each held; the series is then skipped, never imported with guessed times.

Inversion times (T1 series), first usable source wins:
    Siemens: ``TI <ms>`` in ``ImageComments`` (written per image by MOLLI/ShMOLLI), then the
        standard ``InversionTime`` (0018,0082).
    Philips: ``InversionTime``; Look-Locker series then ``TriggerTime`` (0018,1060); then the
        private ``(2005,1572)`` where MOLLI series keep the TI.
    GE: ``InversionTime``, then ``TriggerTime``.
    others: ``InversionTime``.
T2-preparation durations (T2 series): ``T2 prep. duration = <ms>`` (or ``T2prep <ms> ms``) in
    ``ImageComments`` (Siemens), then ``EchoTime`` (0018,0081) where the vendor writes the T2-prep
    TE there. A constant ``EchoTime`` is the readout echo and is refused.
Perfusion frame times: GE's ``TriggerTime`` when it grows over the series (GE writes it
    cumulatively, ms since the first frame) and spans at least 5 s; otherwise ``AcquisitionTime``
    (with ``AcquisitionDate``, or a midnight wrap) for every vendor. Seconds from the first frame.
Proton-density frames of a dual-sequence AIF series: ``PD`` or ``PROTON_DENSITY`` in
    ``ImageType``, or ``PD`` / ``proton density`` in ``ImageComments``; they must lead the series.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = [
    "FrameTimes",
    "PreparationTimes",
    "TimingError",
    "count_pd_frames",
    "float_of",
    "frame_times_s",
    "inversion_times_ms",
    "is_pd_frame",
    "t2_prep_times_ms",
    "vendor_of",
]

PHILIPS_INVERSION_TIME = (0x2005, 0x1572)
TI_IN_COMMENTS = re.compile(r"\bTI\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
T2_PREP_IN_COMMENTS = re.compile(
    r"T2\s*-?\s*prep(?:aration)?\.?\s*(?:duration|time|TE)?\s*[:=]?\s*(\d+(?:\.\d+)?)\s*ms",
    re.IGNORECASE,
)
PD_IN_COMMENTS = re.compile(r"\bPD\b|proton[\s_-]*density", re.IGNORECASE)
MIN_CUMULATIVE_TRIGGER_SPAN_MS = 5000.0


class TimingError(ValueError):
    """No source gives usable times for a series; the message lists the sources tried."""


@dataclass(frozen=True)
class PreparationTimes:
    """Inversion or T2-preparation times of the images of one slice, in the input image order.

    Attributes:
        times_ms: float64 [N].
        source: the attribute they came from, e.g. ``"ImageComments 'TI <ms>'"``.
    """

    times_ms: np.ndarray
    source: str


@dataclass(frozen=True)
class FrameTimes:
    """Acquisition times of perfusion frames, in the input frame order.

    Attributes:
        times_s: float64 [T], seconds from the earliest frame.
        source: the attribute they came from.
    """

    times_s: np.ndarray
    source: str


def vendor_of(header: Dataset) -> str:
    """``siemens`` | ``philips`` | ``ge`` | ``other`` from ``Manufacturer``.

    Example:
        >>> from pydicom import Dataset
        >>> ds = Dataset()
        >>> ds.Manufacturer = "GE MEDICAL SYSTEMS"
        >>> vendor_of(ds), vendor_of(Dataset())
        ('ge', 'other')
    """
    name = str(header.get("Manufacturer", "")).lower()
    if "siemens" in name:
        return "siemens"
    if "philips" in name:
        return "philips"
    if name.startswith("ge ") or name == "ge" or "general electric" in name:
        return "ge"
    return "other"


def float_of(header: Dataset, tag: str | tuple[int, int]) -> float | None:
    """A single number from an attribute (keyword or (group, element)); None when absent, empty
    or not finite. Private values read without their dictionary (raw bytes) are decoded as a
    little-endian float32 (4 bytes) or float64 (8 bytes), as Philips writes them.

    Example:
        >>> from pydicom import Dataset
        >>> ds = Dataset()
        >>> ds.InversionTime = "180"
        >>> ds.add_new((0x2005, 0x1572), "UN", bytes.fromhex("00003443"))  # 180.0 as float32
        >>> float_of(ds, "InversionTime"), float_of(ds, (0x2005, 0x1572)), float_of(ds, "EchoTime")
        (180.0, 180.0, None)
    """
    if isinstance(tag, str):
        value = header.get(tag)
    else:
        element = header.get(tag)
        value = None if element is None else element.value
    if isinstance(value, bytes):
        if len(value) in (4, 8):
            value = struct.unpack("<f" if len(value) == 4 else "<d", value)[0]
        else:
            value = value.decode("ascii", errors="replace").strip("\x00 ")
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _from_comments(pattern: re.Pattern) -> Callable[[Dataset], float | None]:
    def read(header: Dataset) -> float | None:
        match = pattern.search(str(header.get("ImageComments", "")))
        return float(match.group(1)) if match else None

    return read


def _attribute(tag: str | tuple[int, int]) -> Callable[[Dataset], float | None]:
    return lambda header: float_of(header, tag)


def _first_usable(
    headers: Sequence[Dataset], sources: list[tuple[str, Callable[[Dataset], float | None]]],
    what: str, refuse_constant: str = "",
) -> tuple[np.ndarray, str]:  # fmt: skip
    """Values of the first source that gives distinct finite values for every header."""
    tried = []
    for name, read in sources:
        values = [read(h) for h in headers]
        missing = sum(v is None for v in values)
        if missing:
            tried.append(f"{name}: missing on {missing} of {len(values)} images")
            continue
        array = np.array(values, dtype=np.float64)
        if len(array) > 1 and np.ptp(array) == 0:
            note = f" ({refuse_constant})" if refuse_constant and name == "EchoTime" else ""
            tried.append(f"{name}: {array[0]:g} on every image{note}")
            continue
        repeated = np.unique(array).size < array.size
        if repeated:
            values_seen, counts = np.unique(array, return_counts=True)
            tried.append(f"{name}: {values_seen[counts > 1][0]:g} on {counts.max()} images")
            continue
        return array, name
    raise TimingError(f"no {what} found ({'; '.join(tried)})")


def inversion_times_ms(
    headers: Sequence[Dataset], vendor: str, look_locker: bool = False
) -> PreparationTimes:
    """Inversion times of the images of one T1 slice (vendor rules in the module docstring).

    Raises:
        TimingError: no source gives a distinct finite TI for every image.
    """
    standard = ("InversionTime", _attribute("InversionTime"))
    trigger = ("TriggerTime", _attribute("TriggerTime"))
    private = ("Philips private (2005,1572)", _attribute(PHILIPS_INVERSION_TIME))
    comments = ("ImageComments 'TI <ms>'", _from_comments(TI_IN_COMMENTS))
    sources = {
        "siemens": [comments, standard],
        "philips": [standard, trigger, private] if look_locker else [standard, private],
        "ge": [standard, trigger],
    }.get(vendor, [standard])
    times, source = _first_usable(headers, sources, "inversion times")
    if (times < 0).any():
        raise TimingError(f"negative inversion times from {source}: {times.tolist()}")
    return PreparationTimes(times, source)


def t2_prep_times_ms(headers: Sequence[Dataset]) -> PreparationTimes:
    """T2-preparation durations of the images of one T2 slice (module docstring).

    Raises:
        TimingError: neither the comments nor ``EchoTime`` tell the images apart.
    """
    sources = [
        ("ImageComments 'T2 prep. duration = <ms> ms'", _from_comments(T2_PREP_IN_COMMENTS)),
        ("EchoTime", _attribute("EchoTime")),
    ]
    times, source = _first_usable(
        headers, sources, "T2-preparation durations",
        refuse_constant="the readout echo time, not a T2-preparation time",
    )  # fmt: skip
    return PreparationTimes(times, source)


def _clock_s(header: Dataset) -> float | None:
    """``AcquisitionDate`` + ``AcquisitionTime`` as seconds (date optional)."""
    time = str(header.get("AcquisitionTime", "")).strip()
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", time)
    if not match:
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups()[:3])
    seconds_of_day = hours * 3600 + minutes * 60 + seconds + float(match.group(4) or 0)
    date = str(header.get("AcquisitionDate", "")).strip()
    try:
        day = datetime.strptime(date, "%Y%m%d").toordinal() if date else 0
    except ValueError:
        day = 0
    return day * 86400.0 + seconds_of_day


def _instance_order(headers: Sequence[Dataset]) -> np.ndarray:
    numbers = [float_of(h, "InstanceNumber") for h in headers]
    keys = [n if n is not None else np.inf for n in numbers]
    return np.argsort(keys, kind="stable")


def frame_times_s(headers: Sequence[Dataset], vendor: str) -> FrameTimes:
    """Acquisition time of each perfusion frame (module docstring), in the given order.

    Raises:
        TimingError: neither a cumulative GE ``TriggerTime`` nor distinct ``AcquisitionTime``.
    """
    tried = []
    if vendor == "ge":
        trigger = [float_of(h, "TriggerTime") for h in headers]
        if all(t is not None for t in trigger):
            values = np.array(trigger, dtype=np.float64)
            in_order = values[_instance_order(headers)]
            if (np.diff(in_order) > 0).all() and np.ptp(values) >= MIN_CUMULATIVE_TRIGGER_SPAN_MS:
                return FrameTimes((values - values.min()) / 1000.0, "TriggerTime (GE, cumulative)")
            tried.append(f"TriggerTime: not cumulative (spans {np.ptp(values):g} ms)")
        else:
            tried.append("TriggerTime: missing")
    clock = [_clock_s(h) for h in headers]
    if any(c is None for c in clock):
        tried.append(f"AcquisitionTime: missing on {sum(c is None for c in clock)} frames")
        raise TimingError(f"no frame times found ({'; '.join(tried)})")
    values = np.array(clock, dtype=np.float64)
    if not any(h.get("AcquisitionDate") for h in headers):  # acquired across midnight
        values = np.where(values < values.max() - 43200.0, values + 86400.0, values)
    if np.unique(values).size < values.size:
        tried.append("AcquisitionTime: the same time on several frames")
        raise TimingError(f"no frame times found ({'; '.join(tried)})")
    return FrameTimes(values - values.min(), "AcquisitionTime")


def is_pd_frame(header: Dataset) -> bool:
    """Whether a perfusion frame is marked as a proton-density frame (module docstring).

    Example:
        >>> from pydicom import Dataset
        >>> pd, sr = Dataset(), Dataset()
        >>> pd.ImageComments, sr.ImageComments = "PD image", "SR"
        >>> is_pd_frame(pd), is_pd_frame(sr)
        (True, False)
    """
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    if "PD" in image_type or "PROTON_DENSITY" in image_type:
        return True
    return bool(PD_IN_COMMENTS.search(str(header.get("ImageComments", ""))))


def count_pd_frames(headers_in_time_order: Sequence[Dataset]) -> int:
    """Number of leading proton-density frames.

    Raises:
        TimingError: a PD frame after a saturation-recovery frame (PD frames must come first).
    """
    marked = np.array([is_pd_frame(h) for h in headers_in_time_order], dtype=bool)
    n_pd = int(np.argmin(marked)) if not marked.all() else marked.size
    if marked[n_pd:].any():
        late = int(np.flatnonzero(marked[n_pd:])[0]) + n_pd
        raise TimingError(
            f"proton-density frame {late} comes after saturation-recovery frames; PD frames "
            "must lead the series"
        )
    return n_pd
