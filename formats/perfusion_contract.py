"""The quantitative-perfusion HDF5 contract: cases in, MBF maps out (docs/perfusion.md).

One file, one top-level group per case, in one of two forms.

Gadolinium units (data already converted, as many groups publish them)::

    /<case_id>/aif_gd          float [T]               blood AIF, mmol/L (whole blood)
    /<case_id>/perfusion_gd    float [T, H, W] or [S, T, H, W]  tissue, mmol/L
    /<case_id>/times_s         float [T]               frame times, s, finite, strictly increasing
    /<case_id>/myocardium_mask uint8 [H, W] or [S, H, W]  optional: 0 elsewhere, > 0 myocardium;
                               each value is a segment (e.g. AHA 1-16, or 1 for all) fitted
                               as a region
    attrs on /<case_id>:       optional hematocrit (0 < Hct < 1), patient_id (str)

Dual sequence (the acquisition itself): an AIF case of :mod:`formats.aif_contract` (``series``
[T, RO, E1] with PD frames first, ``times_s`` [T], ``mask`` with label 1 = LV, which is required
here: it locates the AIF; ``n_pd_frames`` and ``patient_id`` attrs) plus::

    /<case_id>/perfusion       float [S, T, H, W]      high-resolution frames, the same T frames
                                                       (PD frames first) as the AIF series
    /<case_id>/myocardium_mask uint8 [S, H, W]         optional, as above
    attrs on series and on perfusion: the saturation-recovery timing of that readout,
        :data:`quantification.saturation_recovery.SEQUENCE_ATTRS` (saturation_time_ms,
        echo_spacing_ms, flip_angle_deg, pd_flip_angle_deg, lines_to_centre,
        relaxivity_l_mmol_s); a missing one is an error naming it, never a default.

Extra datasets and attrs are allowed and ignored (the phantoms add a ``truth`` group). A violation
raises :class:`PerfusionContractError` naming the file, the case, the key, what was expected and
what was found.

Results (written atomically by :func:`write_perfusion_results`), one group per case::

    /<case_id>/mbf_ml_min_g  ps_ml_min_g  vb_ml_g  visf_ml_g  delay_s   float32 [H, W] | [S, H, W]
    /<case_id>/rmse_mmol_l   r_squared                                  float32, fit quality
    /<case_id>/failure                                                  uint8 reason code
    /<case_id>/aif_gd [T], /<case_id>/times_s [T]                       the AIF that was used
    /<case_id>/regions/segments (with a mask) float64 [S, L, 5]: per slice and segment label
                               the fit of the segment's mean curve (mbf, ps, vb, visf, delay;
                               NaN where the slice lacks the label); segment_labels int [L];
                               pixel_mean_mbf_ml_min_g [S, L] (the mean of the pixel maps)
    attrs: model, hematocrit, tissue_density_g_per_ml, failure_reasons (JSON), source ("gd" |
           "dual_sequence"); a case that failed has only the attr ``error``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from formats.aif_contract import AIFContractError, read_aif_case
from formats.atomic_file import atomic_write
from formats.contract_errors import ContractError, is_real, located, plain

__all__ = [
    "DualSequence",
    "PerfusionCase",
    "PerfusionContractError",
    "PerfusionResult",
    "read_perfusion_case",
    "write_dual_sequence_case",
    "write_gd_case",
    "write_perfusion_results",
]


class PerfusionContractError(ContractError):
    """A perfusion file breaks the contract; the message names file, case, key, expected, found."""


def _error(path: Any, case_id: str | None, key: str | None, expected: str, found: str):
    return PerfusionContractError(f"{located(path, case_id, key=key)}: expected {expected}; "
                                  f"found {found}")  # fmt: skip


@dataclass(frozen=True)
class DualSequence:
    """The raw dual-sequence acquisition of a case.

    Attributes:
        aif_series: float32 [T, RO, E1] AIF frames, PD frames first.
        lv_mask: bool [RO, E1] the LV blood pool of the AIF series.
        aif_attrs: attrs of ``series`` (the AIF readout timing).
        perfusion: float32 [S, T, H, W] imaging frames, PD frames first.
        perfusion_attrs: attrs of ``perfusion`` (the imaging readout timing).
        n_pd_frames: leading PD frames.
    """

    aif_series: np.ndarray
    lv_mask: np.ndarray
    aif_attrs: dict
    perfusion: np.ndarray
    perfusion_attrs: dict
    n_pd_frames: int


@dataclass(frozen=True)
class PerfusionCase:
    """One case: gadolinium data (``aif_gd``, ``perfusion_gd``) or a ``dual`` acquisition.

    Attributes:
        case_id: group name.
        times_s: float64 [T] frame times, s (for a dual case: all frames, PD frames first).
        aif_gd: float64 [T] or None (dual case).
        perfusion_gd: float64 [S, T, H, W] (a single slice gets S = 1) or None (dual case).
        dual: the dual-sequence acquisition or None.
        mask: uint8 [S, H, W] myocardial segment labels (0 elsewhere), or None.
        hematocrit: the case's attr, or None.
        squeeze_slices: the input had no slice axis (results are written [H, W]).
    """

    case_id: str
    times_s: np.ndarray
    aif_gd: np.ndarray | None
    perfusion_gd: np.ndarray | None
    dual: DualSequence | None
    mask: np.ndarray | None
    hematocrit: float | None
    squeeze_slices: bool


def _read(group: h5py.Group, path: Any, case_id: str, key: str, ndims: tuple[int, ...],
          what: str) -> np.ndarray:  # fmt: skip
    item = group.get(key)
    if not isinstance(item, h5py.Dataset):
        found = "nothing (missing)" if item is None else type(item).__name__
        raise _error(path, case_id, key, f"a dataset {what}", found)
    if item.ndim not in ndims or item.dtype.kind not in "fiu":
        raise _error(path, case_id, key, f"a numeric dataset {what}",
                     f"dtype {item.dtype}, shape {item.shape}")  # fmt: skip
    try:
        values = np.asarray(item[()])
    except OSError as exc:
        raise _error(path, case_id, key, "readable data", f"{exc}") from exc
    if not np.isfinite(values).all():
        raise _error(path, case_id, key, "finite values",
                     f"{values.size - np.count_nonzero(np.isfinite(values))} NaN/Inf")  # fmt: skip
    return values


def _hematocrit(group: h5py.Group, path: Any, case_id: str) -> float | None:
    if "hematocrit" not in group.attrs:
        return None
    value = plain(group.attrs["hematocrit"])
    if not is_real(value) or not 0.0 < float(value) < 1.0:
        raise _error(path, case_id, "hematocrit", "an attr 0 < hematocrit < 1 (a fraction)",
                     repr(value))  # fmt: skip
    return float(value)


def _mask(group: h5py.Group, path: Any, case_id: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if "myocardium_mask" not in group:
        return None
    mask = _read(group, path, case_id, "myocardium_mask", (2, 3), "uint8 [H, W] or [S, H, W]")
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255 or not (mask > 0).any():
        raise _error(path, case_id, "myocardium_mask", "segment labels 0-255 with at least one "
                     "myocardial pixel (> 0)", f"values {mask.min()}-{mask.max()}")  # fmt: skip
    mask = mask.reshape((-1,) + mask.shape[-2:])
    if mask.shape != shape:
        raise _error(path, case_id, "myocardium_mask", f"shape {shape} (slices, H, W)",
                     f"{mask.shape}")  # fmt: skip
    return mask.astype(np.uint8)


def read_perfusion_case(h5: h5py.File, case_id: str, path_for_errors: Any) -> PerfusionCase:
    """Read and check one case of either form (module docstring).

    Raises:
        PerfusionContractError: any violation (file, case, key, expected, found).
    """
    path = path_for_errors
    group = h5.get(case_id)
    if not isinstance(group, h5py.Group):
        raise _error(path, case_id, None, "a case group", type(group).__name__)
    hematocrit = _hematocrit(group, path, case_id)
    if "aif_gd" in group or "perfusion_gd" in group:
        aif = _read(group, path, case_id, "aif_gd", (1,), "[T], mmol/L").astype(np.float64)
        times = _read(group, path, case_id, "times_s", (1,), "[T], s").astype(np.float64)
        images = _read(group, path, case_id, "perfusion_gd", (3, 4), "[T, H, W] or [S, T, H, W]")
        squeeze = images.ndim == 3
        images = images.reshape((-1,) + images.shape[-3:]).astype(np.float64)
        if times.shape != aif.shape or images.shape[1] != aif.size:
            raise _error(path, case_id, "perfusion_gd", f"T = {aif.size} frames like aif_gd and "
                         "times_s", f"aif_gd {aif.shape}, times_s {times.shape}, perfusion_gd "
                         f"{images.shape}")  # fmt: skip
        if aif.size < 6 or not np.all(np.diff(times) > 0):
            raise _error(path, case_id, "times_s", "at least 6 strictly increasing times",
                         f"{times.tolist()[:8]}...")  # fmt: skip
        mask = _mask(group, path, case_id, (images.shape[0],) + images.shape[2:])
        return PerfusionCase(case_id, times, aif, images, None, mask, hematocrit, squeeze)
    if "perfusion" not in group:
        raise _error(path, case_id, "perfusion_gd", "either aif_gd + perfusion_gd + times_s "
                     "(gadolinium units) or series + mask + perfusion (dual sequence)",
                     f"keys {sorted(group)}")  # fmt: skip
    try:
        aif_case = read_aif_case(h5, case_id, path, require_mask=True)
    except AIFContractError as exc:
        raise PerfusionContractError(str(exc)) from exc
    frames = _read(group, path, case_id, "perfusion", (4,), "[S, T, H, W]").astype(np.float32)
    if frames.shape[1] != aif_case.times_s.size:
        raise _error(path, case_id, "perfusion", f"T = {aif_case.times_s.size} frames (those of "
                     "series and times_s)", f"shape {frames.shape}")  # fmt: skip
    dual = DualSequence(
        aif_series=aif_case.series,
        lv_mask=aif_case.mask == 1,
        aif_attrs={k: plain(v) for k, v in group["series"].attrs.items()},
        perfusion=frames,
        perfusion_attrs={k: plain(v) for k, v in group["perfusion"].attrs.items()},
        n_pd_frames=aif_case.n_pd_frames,
    )
    mask = _mask(group, path, case_id, (frames.shape[0],) + frames.shape[2:])
    return PerfusionCase(case_id, aif_case.times_s, None, None, dual, mask, hematocrit, False)


def write_gd_case(h5: h5py.File, case_id: str, aif_gd: np.ndarray, perfusion_gd: np.ndarray,
                  times_s: np.ndarray, hematocrit: float | None = None,
                  mask: np.ndarray | None = None) -> h5py.Group:  # fmt: skip
    """Write a gadolinium-unit case (float32 images, float64 times)."""
    group = h5.create_group(case_id)
    group.create_dataset("aif_gd", data=np.asarray(aif_gd, dtype=np.float64))
    group.create_dataset("perfusion_gd", data=np.asarray(perfusion_gd, dtype=np.float32),
                         compression="gzip", compression_opts=1)  # fmt: skip
    group.create_dataset("times_s", data=np.asarray(times_s, dtype=np.float64))
    if mask is not None:
        group.create_dataset("myocardium_mask", data=np.asarray(mask, dtype=np.uint8))
    if hematocrit is not None:
        group.attrs["hematocrit"] = float(hematocrit)
    return group


def write_dual_sequence_case(
    h5: h5py.File,
    case_id: str,
    aif_series: np.ndarray,
    lv_mask: np.ndarray,
    aif_timing: dict[str, float],
    perfusion: np.ndarray,
    perfusion_timing: dict[str, float],
    times_s: np.ndarray,
    n_pd_frames: int,
    patient_id: str,
    hematocrit: float | None = None,
    mask: np.ndarray | None = None,
) -> h5py.Group:
    """Write a dual-sequence case: an AIF-contract case plus ``perfusion`` and the timings."""
    from formats.aif_contract import write_aif_case

    write_aif_case(h5, case_id, aif_series, times_s, n_pd_frames, patient_id,
                   np.asarray(lv_mask, dtype=np.uint8))  # fmt: skip
    group = h5[case_id]
    group.create_dataset("perfusion", data=np.asarray(perfusion, dtype=np.float32),
                         compression="gzip", compression_opts=1)  # fmt: skip
    group["series"].attrs.update(aif_timing)
    group["perfusion"].attrs.update(perfusion_timing)
    if mask is not None:
        group.create_dataset("myocardium_mask", data=np.asarray(mask, dtype=np.uint8))
    if hematocrit is not None:
        group.attrs["hematocrit"] = float(hematocrit)
    return group


@dataclass
class PerfusionResult:
    """Maps of one case, or the reason it failed (``error``)."""

    maps: dict[str, np.ndarray] = field(default_factory=dict)
    aif_gd: np.ndarray | None = None
    times_s: np.ndarray | None = None
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def write_perfusion_results(path: str | os.PathLike, results: dict[str, PerfusionResult]) -> Path:
    """Write every case's maps (module docstring) atomically; returns the path."""
    path = Path(path)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5:
        for case_id, result in results.items():
            group = h5.create_group(case_id)
            if result.error is not None:
                group.attrs["error"] = result.error
                continue
            for name, values in result.maps.items():
                group.create_dataset(name, data=values, compression="gzip", compression_opts=1)
            if result.aif_gd is not None:
                group.create_dataset("aif_gd", data=np.asarray(result.aif_gd, np.float64))
                group.create_dataset("times_s", data=np.asarray(result.times_s, np.float64))
            for name, values in result.regions.items():
                group.create_dataset(f"regions/{name}", data=values)
            for key, value in result.attrs.items():
                group.attrs[key] = json.dumps(value) if isinstance(value, dict) else value
    return path
