"""The ResUNet: shapes, paper size, TorchScript round trip."""

from __future__ import annotations

import io

import pytest
import torch

from lightning_modules.networks.resunet import ResUNet


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
