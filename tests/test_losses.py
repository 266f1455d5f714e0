"""The AIF loss: minimal for a perfect prediction, finite gradients, 2CS and 3CS."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lightning_modules.losses import CrossEntropySoftIoULoss, soft_iou


def _labels() -> torch.Tensor:
    target = torch.zeros(2, 16, 12, dtype=torch.long)
    target[:, 4:9, 3:7] = 1  # LV
    target[:, 5:9, 8:11] = 2  # RV
    return target


def _perfect_logits(target: torch.Tensor, n_outputs: int) -> torch.Tensor:
    if n_outputs == 1:
        return ((target == 1).float() * 40 - 20).unsqueeze(1)
    return F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40 - 20


@pytest.mark.parametrize("n_classes, n_outputs, iou", [(3, 3, [1, 2]), (2, 1, [1])])
def test_perfect_prediction_is_the_minimum(n_classes, n_outputs, iou):
    loss = CrossEntropySoftIoULoss(n_classes=n_classes, iou_classes=iou)
    target = _labels()
    perfect = _perfect_logits(target, n_outputs)
    assert loss(perfect, target) < 1e-6
    for _ in range(5):
        noisy = perfect + 10 * torch.randn_like(perfect)
        assert loss(noisy, target) > loss(perfect, target)


@pytest.mark.parametrize("n_classes, n_outputs, iou", [(3, 3, [1, 2]), (2, 1, [1])])
def test_gradients_are_finite_even_for_confident_mistakes(n_classes, n_outputs, iou):
    loss = CrossEntropySoftIoULoss(
        n_classes=n_classes, class_weights=[1.0, 5.0, 1.0][:n_classes], iou_classes=iou
    )
    target = _labels()
    logits = (-_perfect_logits(target, n_outputs)).requires_grad_()
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_soft_iou_matches_the_jaccard_index_of_hard_masks():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.zeros(1, 1, 4, 4)
    a[..., :2, :] = 1  # 8 pixels
    b[..., 1:3, :] = 1  # 8 pixels, 4 shared
    assert soft_iou(a, b).item() == pytest.approx(4 / 12)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="class_weights"):
        CrossEntropySoftIoULoss(n_classes=3, class_weights=[1.0, 5.0])
    with pytest.raises(ValueError, match="iou_classes"):
        CrossEntropySoftIoULoss(n_classes=2, iou_classes=[2])
