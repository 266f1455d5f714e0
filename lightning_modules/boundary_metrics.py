"""Boundary metrics of segmentation masks: HD95 and ASSD per case, computed by MONAI.

- **HD95**, the 95th-percentile Hausdorff distance: the larger of the two directed 95th
  percentiles of the distances from each boundary pixel of one mask to the boundary of the other
  (``monai.metrics.compute_hausdorff_distance(percentile=95)``);
- **ASSD**, the average symmetric surface distance: the mean of all those boundary-to-boundary
  distances, both ways (``monai.metrics.compute_average_surface_distance(symmetric=True)``).

Both are Euclidean, in millimetres when the pixel spacing (row, column) is given, in pixels
otherwise. Empty masks are handled explicitly here, where MONAI would warn and return inf/NaN:

- both masks empty: 0 (they agree that the structure is absent; Dice scores this case 1);
- prediction empty, reference not: undefined (NaN), counted as an **empty prediction**;
- reference empty, prediction not: undefined (NaN), counted as a **spurious prediction**.

Summaries average the defined values and report the two counts beside them, so that a network
that misses structures does not look better because its misses drop out of the mean.
:class:`BoundaryMetric` accumulates per-case values over an epoch (a ``torchmetrics.Metric``,
reduced across processes) for the LightningModules; ``evaluate.py`` calls
:func:`boundary_distances` and :func:`summarize_boundary` directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from torchmetrics import Metric

__all__ = [
    "BoundaryDistances",
    "BoundaryMetric",
    "BoundarySummary",
    "boundary_distances",
    "concatenate_distances",
    "summarize_boundary",
]


@dataclass(frozen=True)
class BoundaryDistances:
    """Per-case boundary distances of N mask pairs.

    Attributes:
        hd95, assd: float64 [N], mm or pixels; NaN where exactly one of the two masks is empty.
        empty_prediction: bool [N], the reference has the structure and the prediction has not.
        spurious: bool [N], the prediction has the structure and the reference has not.
    """

    hd95: np.ndarray
    assd: np.ndarray
    empty_prediction: np.ndarray
    spurious: np.ndarray


def _as_bool(masks: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.ndim != 3:
        raise ValueError(f"{name} must be masks [N, H, W], got shape {masks.shape}")
    return masks


def boundary_distances(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    spacing_mm: np.ndarray | None = None,
) -> BoundaryDistances:
    """HD95 and ASSD of each predicted mask against its reference (module docstring).

    Args:
        prediction, reference: bool (or 0/1) masks [N, H, W] of one structure.
        spacing_mm: pixel spacing (row, column) in mm, [2] for all cases or [N, 2] per case;
            ``None``: distances in pixels.

    Example:
        >>> ref = np.zeros((3, 16, 16), bool); ref[:, 4:10, 4:10] = True
        >>> pred = ref.copy(); pred[1] = np.roll(ref[1], 2, axis=1); pred[2] = False
        >>> d = boundary_distances(pred, ref)
        >>> d.hd95.tolist(), d.empty_prediction.tolist()
        ([0.0, 2.0, nan], [False, False, True])
        >>> float(boundary_distances(pred, ref, spacing_mm=np.array([1.5, 1.5])).hd95[1])
        3.0
    """
    pred, ref = _as_bool(prediction, "prediction"), _as_bool(reference, "reference")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    n = len(pred)
    has_pred, has_ref = pred.reshape(n, -1).any(1), ref.reshape(n, -1).any(1)
    hd95 = np.where(has_pred | has_ref, np.nan, 0.0)
    assd = hd95.copy()
    both = np.flatnonzero(has_pred & has_ref)
    if both.size:
        spacing = None
        if spacing_mm is not None:
            spacing_mm = np.broadcast_to(np.asarray(spacing_mm, np.float64), (n, 2))
            if not (np.isfinite(spacing_mm).all() and (spacing_mm > 0).all()):
                raise ValueError(f"spacing_mm must be finite and > 0, got {spacing_mm.tolist()}")
            spacing = [tuple(row) for row in spacing_mm[both]]
        y_pred = torch.from_numpy(pred[both, None]).float()
        y = torch.from_numpy(ref[both, None]).float()
        with warnings.catch_warnings():
            # MONAI 1.5+ calls its own get_mask_edges with an argument it deprecated itself
            warnings.filterwarnings(
                "ignore", message=".*always_return_as_numpy", category=FutureWarning
            )
            hd95[both] = compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=spacing
            )[:, 0].numpy()
            assd[both] = compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=spacing
            )[:, 0].numpy()
    return BoundaryDistances(hd95, assd, has_ref & ~has_pred, has_pred & ~has_ref)


def concatenate_distances(parts: Sequence[BoundaryDistances]) -> BoundaryDistances:
    """The cases of several :class:`BoundaryDistances`, in order, as one."""
    fields = ("hd95", "assd", "empty_prediction", "spurious")
    if not parts:
        return BoundaryDistances(np.zeros(0), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool))
    return BoundaryDistances(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


@dataclass(frozen=True)
class BoundarySummary:
    """HD95 and ASSD over the cases where both are defined, with the undefined cases counted.

    Attributes:
        hd95_mean, hd95_sd, assd_mean, assd_sd: mean and sample SD over the measured cases
            (``None`` when none is; SD 0 for one case).
        n_measured: cases with a defined distance (both masks non-empty, or both empty).
        n_empty_prediction: cases whose prediction is empty where the reference is not.
        n_spurious: cases with a predicted structure and none in the reference.
    """

    hd95_mean: float | None
    hd95_sd: float | None
    assd_mean: float | None
    assd_sd: float | None
    n_measured: int
    n_empty_prediction: int
    n_spurious: int


def _mean_sd(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def summarize_boundary(distances: BoundaryDistances) -> BoundarySummary:
    """Mean ± SD of the defined distances and the counts of undefined cases.

    Example:
        >>> ref = np.zeros((2, 8, 8), bool); ref[:, 2:6, 2:6] = True
        >>> s = summarize_boundary(boundary_distances(np.stack([ref[0], ref[0] * 0]), ref))
        >>> s.hd95_mean, s.n_measured, s.n_empty_prediction
        (0.0, 1, 1)
    """
    measured = np.isfinite(distances.hd95)
    hd95_mean, hd95_sd = _mean_sd(distances.hd95[measured])
    assd_mean, assd_sd = _mean_sd(distances.assd[measured])
    return BoundarySummary(
        hd95_mean,
        hd95_sd,
        assd_mean,
        assd_sd,
        int(measured.sum()),
        int(np.sum(distances.empty_prediction)),
        int(np.sum(distances.spurious)),
    )


class BoundaryMetric(Metric):
    """Per-case HD95 / ASSD of one structure accumulated over an epoch (``torchmetrics``).

    Distances are in pixels of the masks given (for the LightningModules: the network's input
    grid), and also in mm when every case came with its pixel size. States are concatenated
    across processes.

    Example:
        >>> metric = BoundaryMetric()
        >>> ref = torch.zeros(2, 8, 8, dtype=torch.bool); ref[:, 2:6, 2:6] = True
        >>> metric.update(ref, ref)
        >>> metric.update(torch.zeros_like(ref), ref)
        >>> {k: float(v) for k, v in metric.compute().items() if k.startswith(("hd95", "n_"))}
        {'hd95_px': 0.0, 'hd95_px_sd': 0.0, 'n_measured': 2.0, 'n_empty': 2.0, 'n_spurious': 0.0}
    """

    full_state_update = False
    STATES = ("hd95_px", "assd_px", "hd95_mm", "assd_mm", "empty", "spurious", "has_spacing")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        prediction: torch.Tensor,
        reference: torch.Tensor,
        spacing_mm: torch.Tensor | None = None,
    ) -> None:
        """Add cases: bool masks [B, H, W]; ``spacing_mm`` float [B, 2] (row, column) with NaN
        rows where the pixel size is unknown, or ``None`` (unknown for all)."""
        pred, ref = _as_bool(prediction, "prediction"), _as_bool(reference, "reference")
        px = boundary_distances(pred, ref)
        mm_hd95, mm_assd = np.full(len(pred), np.nan), np.full(len(pred), np.nan)
        known = np.zeros(len(pred), bool)
        if spacing_mm is not None:
            spacing = np.asarray(spacing_mm.detach().cpu(), np.float64).reshape(-1, 2)
            known = np.isfinite(spacing).all(1)
            if known.any():
                mm = boundary_distances(pred[known], ref[known], spacing[known])
                mm_hd95[known], mm_assd[known] = mm.hd95, mm.assd
        values = (px.hd95, px.assd, mm_hd95, mm_assd, px.empty_prediction, px.spurious, known)
        for name, value in zip(self.STATES, values, strict=True):
            getattr(self, name).append(torch.as_tensor(value, device=self.device).double())

    def _cat(self, name: str) -> np.ndarray:
        values = getattr(self, name)
        if isinstance(values, torch.Tensor):  # concatenated by a distributed sync
            return values.cpu().numpy()
        return torch.cat(values).cpu().numpy() if values else np.zeros(0)

    def distances(self, unit: str = "px") -> BoundaryDistances:
        """The accumulated per-case values in ``px`` or ``mm`` (NaN where the size is unknown)."""
        if unit not in ("px", "mm"):
            raise ValueError(f"unit must be px or mm, got {unit!r}")
        empty, spurious = self._cat("empty") > 0, self._cat("spurious") > 0
        return BoundaryDistances(
            self._cat(f"hd95_{unit}"), self._cat(f"assd_{unit}"), empty, spurious
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """``hd95_px``, ``hd95_px_sd``, ``assd_px``, ``assd_px_sd`` (NaN if nothing is measured),
        the same with ``_mm`` when every case had a pixel size, and the counts ``n_measured``,
        ``n_empty`` (empty predictions) and ``n_spurious``."""
        known = self._cat("has_spacing")
        units = ["px", "mm"] if known.size and known.all() else ["px"]
        out: dict[str, torch.Tensor] = {}
        for unit in units:
            s = summarize_boundary(self.distances(unit))
            for key, value in (
                (f"hd95_{unit}", s.hd95_mean),
                (f"hd95_{unit}_sd", s.hd95_sd),
                (f"assd_{unit}", s.assd_mean),
                (f"assd_{unit}_sd", s.assd_sd),
            ):
                out[key] = torch.tensor(float("nan") if value is None else value)
            if unit == "px":
                out["n_measured"] = torch.tensor(float(s.n_measured))
                out["n_empty"] = torch.tensor(float(s.n_empty_prediction))
                out["n_spurious"] = torch.tensor(float(s.n_spurious))
        return out
