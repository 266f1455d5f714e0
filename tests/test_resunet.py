"""The ResUNet: shapes, paper size, TorchScript round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lightning_modules.networks.resunet import ResNetModule, ResUNet


def test_paper_configuration_has_about_6_5_million_parameters():
    net = ResUNet()  # 8 modules, 128 filters, input block 96
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(6.5e6, rel=0.02)


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("shape", [(64, 48), (64, 64), (32, 24)])
def test_output_keeps_the_input_geometry(outputs, shape):
    net = ResUNet(n_outputs=outputs, input_planes=8, planes=(8, 16), modules_per_level=(1, 2))
    assert net(torch.randn(2, 64, *shape)).shape == (2, outputs, *shape)


def test_torchscript_round_trip_matches_eager():
    net = ResUNet(input_planes=8, planes=(8, 8), modules_per_level=(1, 1)).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 64, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=0)


def test_mismatched_level_settings_are_refused():
    with pytest.raises(ValueError, match="same length"):
        ResUNet(planes=(128, 128), modules_per_level=(4,))


def tiny_resunet(**options) -> ResUNet:
    return ResUNet(input_planes=16, planes=(16, 16), modules_per_level=(1, 2), **options)


def test_he_fan_out_head_starts_with_confident_logits_and_zero_head_with_uniform_classes():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 32, 24)
    paper = tiny_resunet()  # the head initialised like the 3x3 convolutions: std sqrt(2 / 3)
    assert paper.head.weight.std().item() == pytest.approx((2 / 3) ** 0.5, rel=0.2)
    zero = tiny_resunet(init="zero_head")
    assert not zero.head.weight.any()
    probabilities = zero(x).softmax(dim=1)
    torch.testing.assert_close(probabilities, torch.full_like(probabilities, 1 / 3))
    fan_in = tiny_resunet(init="fan_in")  # std sqrt(2 / 16 inputs)
    assert fan_in.head.weight.std().item() == pytest.approx((2 / 16) ** 0.5, rel=0.2)


def test_zero_init_residual_makes_every_residual_module_start_as_the_identity():
    net = tiny_resunet(zero_init_residual=True)
    residual = [m for m in net.modules() if isinstance(m, ResNetModule) and m.residual]
    assert residual  # the bridge and the second module of the down level
    x = torch.randn(2, 16, 8, 6)
    for module in residual:
        torch.testing.assert_close(module(x), x)
    changing = [m for m in net.modules() if isinstance(m, ResNetModule) and not m.residual]
    assert all(m.body[-1].weight.any() for m in changing)  # no zeroed path without a shortcut


@pytest.mark.parametrize("norm, layer", [("instance", nn.InstanceNorm2d), ("group", nn.GroupNorm)])
def test_instance_and_group_norm_make_each_series_independent_of_its_batch(norm, layer):
    torch.manual_seed(0)
    net = tiny_resunet(norm=norm).train()
    kinds = {type(m) for m in net.modules()}
    assert layer in kinds and nn.BatchNorm2d not in kinds
    series = torch.randn(1, 64, 32, 24)
    alone = net(series)
    with_a_brighter_one = net(torch.cat([series, 3 * torch.randn(1, 64, 32, 24)]))[:1]
    torch.testing.assert_close(with_a_brighter_one, alone, atol=1e-4, rtol=1e-3)
    batch = tiny_resunet().train()  # the paper's batch norm mixes the series of a batch
    mixed = batch(torch.cat([series, 3 * torch.randn(1, 64, 32, 24)]))[:1]
    assert not torch.allclose(mixed, batch(series), atol=1e-3)


def test_every_option_survives_torchscript():
    net = tiny_resunet(norm="group", init="zero_head", zero_init_residual=True).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 64, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_unknown_norm_init_or_group_count_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        tiny_resunet(norm="layer")
    with pytest.raises(ValueError, match="init must be one of"):
        tiny_resunet(init="xavier")
    with pytest.raises(ValueError, match="norm_groups 5 must divide"):
        tiny_resunet(norm="group", norm_groups=5)
