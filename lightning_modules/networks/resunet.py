"""ResUNet for LV detection in AIF perfusion series (Xue et al., docs/method.md §A4).

Time is the channel axis: an input block maps the 64 frames of each pixel to ``input_planes``
features (3×3 conv–BN–ReLU–conv, no shortcut), then a U-shape of ResNet modules
(BN→ReLU→Conv3×3, twice, identity shortcut when the channel count is unchanged):

- down levels: MaxPool 2×2, then ``modules_per_level[i]`` modules with ``planes[i]`` filters;
- bridge: one more MaxPool 2×2 and ``modules_per_level[-1]`` modules at the coarsest scale;
- up levels: bilinear ×2 up-sampling, concatenation with the skip of the same scale, modules;
  the last up level joins the input-block features at full resolution;
- head: 1×1 conv to ``n_outputs`` logits (1 for 2CS/sigmoid, 3 for 3CS/softmax).

The paper's chosen configuration is "8 ResNet modules, 128 filters": ``modules_per_level=(4, 4)``,
``planes=(128, 128)``, ``input_planes=96`` (about 6.5 M parameters, 64×48 → 8×6 at the bridge),
with batch normalisation and every convolution He-initialised (``fan_out``), as this module has
always built it. Two choices change how it learns, not its shape:

- ``norm``: ``batch`` (the paper) | ``instance`` | ``group`` (``norm_groups`` groups): batch
  statistics over 8 series mix their ~3x different intensity scales; instance and group
  normalisation do not depend on the other series of the batch.
- ``init``: ``he_fan_out`` (as before: the 1×1 head too, logits of SD ≈ 16 at the start) |
  ``zero_head`` (the same, but a zero head: every class starts at probability 1/n) | ``fan_in``
  (He ``fan_in`` everywhere: head logits of SD ≈ 1); ``zero_init_residual`` also zeroes the last
  convolution of every residual branch, so each module starts as the identity (Goyal et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["batch", "instance", "group"]
Init = Literal["he_fan_out", "zero_head", "fan_in"]
NORMS: tuple[str, ...] = ("batch", "instance", "group")
INITS: tuple[str, ...] = ("he_fan_out", "zero_head", "fan_in")


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)


def normalisation(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """``BatchNorm2d``, ``InstanceNorm2d`` (affine, no running statistics) or ``GroupNorm``.

    Example:
        >>> normalisation("group", 16)
        GroupNorm(8, 16, eps=1e-05, affine=True, bias=True)
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        if channels % groups:
            raise ValueError(f"norm_groups {groups} must divide every width, not {channels}")
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ResNetModule(nn.Module):
    """Pre-activation residual module: (norm→ReLU→Conv3×3) ×2, identity shortcut if shapes match."""

    def __init__(
        self, in_channels: int, out_channels: int, norm: str = "batch", norm_groups: int = 8
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            normalisation(norm, in_channels, norm_groups),
            nn.ReLU(inplace=True),
            _conv3x3(in_channels, out_channels),
            normalisation(norm, out_channels, norm_groups),
            nn.ReLU(inplace=True),
            _conv3x3(out_channels, out_channels),
        )
        self.residual = in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.residual else out


def _stack(
    in_channels: int, out_channels: int, n_modules: int, norm: str, norm_groups: int
) -> nn.Sequential:
    return nn.Sequential(
        *[
            ResNetModule(in_channels if i == 0 else out_channels, out_channels, norm, norm_groups)
            for i in range(n_modules)
        ]
    )


class ResUNet(nn.Module):
    """2D ResUNet over (RO, E1) with time as input channels.

    Args:
        in_channels: input frames per series (64 on the 0.5 s grid).
        n_outputs: output channels: 1 (2CS, sigmoid) or 3 (3CS, softmax over background/LV/RV).
        input_planes: filters of the input block (and of the last up level).
        planes: filters of each down level, finest first.
        modules_per_level: ResNet modules of each down level (repeated by the bridge and up levels).
        norm: normalisation layers: ``batch`` (the paper) | ``instance`` | ``group``.
        norm_groups: groups of ``norm="group"`` (must divide every width).
        init: ``he_fan_out`` (as before) | ``zero_head`` | ``fan_in`` (module docstring).
        zero_init_residual: zero the last convolution of every residual branch.

    Input ``[B, in_channels, H, W]`` with H and W divisible by ``2 ** (len(planes) + 1)``;
    output logits ``[B, n_outputs, H, W]``.

    Example:
        >>> net = ResUNet(in_channels=64, n_outputs=3)
        >>> net(torch.zeros(2, 64, 64, 48)).shape
        torch.Size([2, 3, 64, 48])
        >>> sum(p.numel() for p in net.parameters()) > 6_000_000
        True
    """

    def __init__(
        self,
        in_channels: int = 64,
        n_outputs: int = 3,
        input_planes: int = 96,
        planes: Sequence[int] = (128, 128),
        modules_per_level: Sequence[int] = (4, 4),
        norm: Norm = "batch",
        norm_groups: int = 8,
        init: Init = "he_fan_out",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        planes, modules_per_level = list(planes), list(modules_per_level)
        if len(planes) != len(modules_per_level) or not planes:
            raise ValueError(
                f"planes {planes} and modules_per_level {modules_per_level} must be non-empty "
                "and of the same length (one entry per down level)"
            )
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")

        def stack(in_channels: int, out_channels: int, n_modules: int) -> nn.Sequential:
            return _stack(in_channels, out_channels, n_modules, norm, norm_groups)

        self.input_block = nn.Sequential(
            nn.Conv2d(in_channels, input_planes, 3, padding=1, bias=False),
            normalisation(norm, input_planes, norm_groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(input_planes, input_planes, 3, padding=1, bias=False),
        )
        channels = [input_planes, *planes]
        self.down = nn.ModuleList(
            stack(channels[i], channels[i + 1], modules_per_level[i]) for i in range(len(planes))
        )
        self.bridge = stack(planes[-1], planes[-1], modules_per_level[-1])
        # Up level i (coarsest first) joins the level below with the skip of scale len(planes)-1-i;
        # its output has the skip's predecessor width, down to input_planes at full resolution.
        self.up = nn.ModuleList()
        below = planes[-1]
        for level in reversed(range(len(planes))):
            skip, out = channels[level + 1], channels[level]
            self.up.append(stack(below + skip, out, modules_per_level[level]))
            below = out
        self.final = stack(below + input_planes, input_planes, modules_per_level[0])
        self.head = nn.Conv2d(input_planes, n_outputs, kernel_size=1)
        self._init_weights(init, zero_init_residual)

    def _init_weights(self, init: str, zero_init_residual: bool) -> None:
        mode = "fan_in" if init == "fan_in" else "fan_out"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "zero_head":
            nn.init.zeros_(self.head.weight)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResNetModule) and m.residual:
                    nn.init.zeros_(m.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.input_block(x)
        skips: list[torch.Tensor] = []
        out = features
        for level in self.down:
            out = level(F.max_pool2d(out, 2))
            skips.append(out)
        out = self.bridge(F.max_pool2d(out, 2))
        for i, level in enumerate(self.up):
            skip = skips[len(skips) - 1 - i]
            out = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            out = level(torch.cat([skip, out], dim=1))
        out = F.interpolate(out, size=features.shape[-2:], mode="bilinear", align_corners=True)
        out = self.final(torch.cat([features, out], dim=1))
        return self.head(out)
