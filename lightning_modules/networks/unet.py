"""U-Net for myocardium segmentation in weighted T1/T2 images (Fahmy et al., docs/method.md §B3).

The paper names a U-Net with dropout after each block, Gaussian initialisation and augmentation,
and defers depth, filters and the optimiser to an appendix we do not have (method.md §C9). This is
the
classic Ronneberger layout, sized by ``filters``:

- level ``i`` of the encoder (``encoders[i]``): a block of (Conv3×3 → BN → ReLU) ×2 with
  ``filters[i]`` channels, then Dropout2d(``dropout``); MaxPool 2×2 between levels;
- bottleneck: the same block with ``filters[-1]`` channels at 1 / 2^(depth-1) resolution;
- decoder level ``i`` (``decoders[i]``, coarsest first): ConvTranspose 2×2 stride 2 up to the
  skip's scale, concatenation with ``encoders[-1 - i]``'s output, a block with that level's filters;
- ``head``: 1×1 conv to ``n_classes`` logits (softmax over background / myocardium / ...).

Depth = ``len(filters)`` resolution levels (``len(filters) - 1`` poolings), so H and W must be
divisible by ``2 ** (len(filters) - 1)`` (256×256 inputs: any depth up to 9). The default
``filters=(16, 32, 64, 128, 256)`` has 5 levels (256 → 16 pixels at the bottleneck) and 1.9 M
parameters; the classic (64 … 1024) U-Net is ``filters=(64, 128, 256, 512, 1024)`` (31 M).

Initialisation is Gaussian (method.md §B3): He-normal weights (std = sqrt(2 / fan_in)) for every
convolution, zero biases, BN at identity. Parameter names are stable and say where a tensor sits
(``encoders.0.…``, ``bottleneck.…``, ``decoders.2.…``, ``head.…``), which is what
``lightning_modules.transfer`` uses to freeze levels and re-initialise the head.

TorchScript-scriptable (``torch.jit.script(UNet())``), so it exports as the scanner artifact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """(Conv3×3 → BN → ReLU) ×2 → Dropout2d: ``[B, in, H, W]`` → ``[B, out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )


class UpBlock(nn.Module):
    """ConvTranspose 2×2 (×2 resolution, ``in`` → ``out`` channels), concat skip, ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, in, H/2, W/2]`` and ``skip`` ``[B, out, H, W]`` → ``[B, out, H, W]``."""
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """2D U-Net, ``[B, in_channels, H, W]`` → logits ``[B, n_classes, H, W]`` (module docstring).

    Args:
        in_channels: channels of the input image (1: one weighted image).
        n_classes: output logits per pixel (2: background / myocardium, softmax).
        filters: channels of each resolution level, finest first; ``len(filters)`` is the depth.
        dropout: Dropout2d probability after every block (docs/method.md §B3); 0 disables it.

    Example:
        >>> net = UNet(filters=(8, 16, 32))
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 2, 64, 64])
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        filters = [int(f) for f in filters]
        if len(filters) < 2 or min(filters) < 1:
            raise ValueError(f"filters needs >= 2 positive channel counts, got {filters}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (softmax head), got {n_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.filters = filters
        self.depth = len(filters)
        inputs, outputs = [in_channels, *filters[:-2]], filters[:-1]
        self.encoders = nn.ModuleList(
            ConvBlock(c_in, c_out, dropout) for c_in, c_out in zip(inputs, outputs, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(filters[-2], filters[-1], dropout)
        self.decoders = nn.ModuleList(
            UpBlock(filters[i + 1], filters[i], dropout) for i in reversed(range(len(filters) - 1))
        )
        self.head = nn.Conv2d(filters[0], n_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian (He-normal) initialisation of every layer (docs/method.md §B3)."""
        for module in self.modules():
            initialise(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes, H, W]``; H, W divisible by ``2 ** (depth - 1)``."""
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level, decoder in enumerate(self.decoders):
            x = decoder(x, skips[len(skips) - 1 - level])
        return self.head(x)


def initialise(module: nn.Module) -> None:
    """Gaussian init of one layer in place: He-normal conv weights, zero bias, BN at identity."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        module.reset_parameters()
