"""The myocardium U-Net: shapes, Gaussian init, dropout per block, TorchScript round trip; loss."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deployment.artifact import quiet_torchscript_deprecation
from lightning_modules.losses import DiceCrossEntropyLoss
from lightning_modules.networks.unet import UNet


@pytest.mark.parametrize("filters", [(4, 8), (4, 8, 16, 32)])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_output_keeps_the_input_geometry(filters, n_classes):
    net = UNet(n_classes=n_classes, filters=filters)
    assert net(torch.randn(2, 1, 64, 48)).shape == (2, n_classes, 64, 48)


def test_default_size_and_level_names_used_by_transfer_learning():
    net = UNet()  # 5 levels, 16..256 filters
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.94e6, rel=0.01)
    assert len(net.encoders) == 4 and len(net.decoders) == 4
    names = {name.split(".")[0] for name, _ in net.named_parameters()}
    assert names == {"encoders", "bottleneck", "decoders", "head"}


def test_every_block_ends_with_dropout_and_weights_are_gaussian():
    net = UNet(filters=(8, 16, 32), dropout=0.2)
    blocks = [*net.encoders, net.bottleneck, *(d.block for d in net.decoders)]
    assert all(isinstance(b[-1], nn.Dropout2d) and b[-1].p == 0.2 for b in blocks)
    weight = net.bottleneck[3].weight  # 32 x 32 x 3 x 3, He-normal: std sqrt(2 / 288)
    assert float(weight.detach().std()) == pytest.approx((2 / 288) ** 0.5, rel=0.05)
    assert abs(float(weight.detach().mean())) < 0.01


def test_torchscript_round_trip_matches_eager():
    net = UNet(filters=(4, 8, 16)).eval()
    buffer = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(torch.jit.script(net), buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=0)
    assert set(loaded.state_dict()) == set(net.state_dict())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_classes"):
        UNet(n_classes=1)
    with pytest.raises(ValueError, match="filters"):
        UNet(filters=(8,))


def _ring(size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((y - size / 2) ** 2 + (x - size / 2) ** 2).sqrt()
    return ((r > 6) & (r < 10)).long()[None]


def test_dice_ce_loss_is_minimal_for_a_perfect_prediction_and_penalises_a_wrong_one():
    loss = DiceCrossEntropyLoss(n_classes=2)
    target = _ring()
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert float(loss(perfect, target)) < 1e-6
    all_background = F.one_hot(torch.zeros_like(target), 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert float(loss(all_background, target)) > 1.0


def test_dice_ce_loss_gradients_are_finite_and_single_channel_logits_are_refused():
    loss = DiceCrossEntropyLoss(n_classes=2)
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    loss(logits, _ring().expand(2, -1, -1)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one logit per class"):
        loss(torch.randn(2, 1, 32, 32), _ring().expand(2, -1, -1))


def test_dice_ce_loss_class_weights_raise_the_cost_of_missing_the_myocardium():
    target = _ring()
    all_background = F.one_hot(torch.zeros_like(target), 2).permute(0, 3, 1, 2).float() * 4 - 2
    plain = DiceCrossEntropyLoss(n_classes=2, dice_weight=0.0)
    weighted = DiceCrossEntropyLoss(n_classes=2, dice_weight=0.0, class_weights=[1.0, 5.0])
    assert float(weighted(all_background, target)) > float(plain(all_background, target))
    with pytest.raises(ValueError, match="class_weights"):
        DiceCrossEntropyLoss(n_classes=2, class_weights=[1.0])
