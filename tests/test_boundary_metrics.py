"""HD95 and ASSD (MONAI) with empty masks counted, in pixels or mm, per case and per epoch."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.mapping_datamodule import MappingDataModule
from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from lightning_modules.boundary_metrics import (
    BoundaryMetric,
    boundary_distances,
    summarize_boundary,
)


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float]) -> tuple:
    """HD95 and ASSD from every pair of boundary pixels (boundary: the mask minus its erosion)."""
    edges = [np.argwhere(m & ~ndimage.binary_erosion(m)) * spacing for m in (pred, ref)]
    d = np.sqrt(((edges[0][:, None] - edges[1][None]) ** 2).sum(-1))
    pred_to_ref, ref_to_pred = d.min(1), d.min(0)
    hd95 = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
    return hd95, np.concatenate([pred_to_ref, ref_to_pred]).mean()


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.4, 0.7)])
def test_distances_match_a_brute_force_computation_in_pixels_and_mm(spacing):
    rng = np.random.default_rng(0)
    pred, ref = [], []
    for _ in range(6):
        c = rng.uniform(12, 20, 2)
        ref.append(disk((32, 32), tuple(c), rng.uniform(4, 8)))
        pred.append(disk((32, 32), tuple(c + rng.normal(0, 1.5, 2)), rng.uniform(4, 8)))
    pred, ref = np.stack(pred), np.stack(ref)
    d = boundary_distances(pred, ref, spacing_mm=None if spacing == (1.0, 1.0) else spacing)
    for i in range(len(pred)):
        hd95, assd = brute_force(pred[i], ref[i], spacing)
        assert d.hd95[i] == pytest.approx(hd95, rel=1e-5)
        assert d.assd[i] == pytest.approx(assd, rel=1e-5)


def test_empty_masks_are_counted_not_averaged():
    ref = np.zeros((4, 16, 16), bool)
    ref[:3, 4:10, 4:10] = True
    pred = ref.copy()
    pred[1] = False  # missed
    pred[3, 2:5, 2:5] = True  # predicted where the reference has nothing
    pred[2] = np.roll(ref[2], 3, axis=0)
    d = boundary_distances(pred, ref)
    assert d.empty_prediction.tolist() == [False, True, False, False]
    assert d.spurious.tolist() == [False, False, False, True]
    summary = summarize_boundary(d)
    assert (summary.n_measured, summary.n_empty_prediction, summary.n_spurious) == (2, 1, 1)
    assert summary.hd95_mean == pytest.approx((0 + 3) / 2)  # not NaN, not diluted by the misses
    both_empty = boundary_distances(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    assert both_empty.hd95.tolist() == [0.0] and not both_empty.empty_prediction.any()


def test_epoch_metric_reports_mm_only_when_every_case_has_a_pixel_size():
    ref = torch.zeros(2, 16, 16, dtype=torch.bool)
    ref[:, 4:10, 4:10] = True
    shifted = torch.roll(ref, 2, dims=2)
    metric = BoundaryMetric()
    metric.update(shifted, ref, torch.tensor([[1.0, 0.5], [1.0, 0.5]]))
    values = metric.compute()
    assert float(values["hd95_px"]) == 2.0 and float(values["hd95_mm"]) == 1.0
    metric.update(shifted, ref, torch.tensor([[1.0, 0.5], [float("nan")] * 2]))
    values = metric.compute()
    assert "hd95_mm" not in values and float(values["n_measured"]) == 4
    metric.reset()
    metric.update(torch.zeros_like(ref), ref)
    values = metric.compute()
    assert float(values["n_empty"]) == 2 and torch.isnan(values["hd95_px"])


def test_mapping_batches_carry_the_network_grids_pixel_size(tmp_path):
    files = write_mapping_phantoms(tmp_path / "phantoms", n_patients=4, seed=3)
    path = tmp_path / "t2_with_spacing.h5"
    shutil.copy(files["t2"], path)
    with h5py.File(path, "r+") as h5:
        for case in h5.values():
            for sl in case.values():
                sl.attrs["pixel_spacing_mm"] = np.array([1.5, 1.25])
    dm = MappingDataModule("t2", path=str(path), split_out=None, batch_size=2,
                           val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    h, w = batch["native_shape"][0].tolist()
    expected = torch.tensor([1.5 * h / 256, 1.25 * w / 256])
    torch.testing.assert_close(batch["pixel_spacing_mm"][0], expected)
    plain = MappingDataModule("t2", path=str(files["t2"]), split_out=None, batch_size=2,
                              val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    plain.prepare_data()
    plain.setup("fit")
    assert torch.isnan(next(iter(plain.val_dataloader()))["pixel_spacing_mm"]).all()
