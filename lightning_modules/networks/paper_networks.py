"""The papers' networks built from ``in_channels`` / ``out_channels``, as MONAI's networks are.

Every choice of the ``conf/model/net/`` group is built from the same two input/output keys,
which the model config sets for its task (AIF: the time frames in, 3 or 1 logits out;
myocardium: one image in, one logit per class out), while the choice sets the architecture. MONAI's
networks (``monai.networks.nets.UNet``, ``BasicUNet``, ``SegResNet``) already take
``in_channels`` and ``out_channels``; these two functions give our ResUNet (method.md §A4) and U-Net
(method.md §B3) the same interface, with the classes, their parameter names and their state-dict
names left as they are (checkpoints and artifacts of earlier runs still load).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_modules.networks.resunet import Init, Norm, ResUNet
from lightning_modules.networks.unet import UNet


def resunet(
    in_channels: int,
    out_channels: int,
    input_planes: int = 96,
    planes: Sequence[int] = (128, 128),
    modules_per_level: Sequence[int] = (4, 4),
    norm: Norm = "batch",
    norm_groups: int = 8,
    init: Init = "he_fan_out",
    zero_init_residual: bool = False,
) -> ResUNet:
    """The AIF ResUNet (``ResUNet``'s docstring): ``out_channels`` logits, 1 (2CS) or 3 (3CS).

    Example:
        >>> net = resunet(64, 3, input_planes=8, planes=(8, 8), modules_per_level=(1, 1))
        >>> net.head.out_channels
        3
    """
    return ResUNet(
        in_channels,
        out_channels,
        input_planes,
        planes,
        modules_per_level,
        norm,
        norm_groups,
        init,
        zero_init_residual,
    )


def unet(
    in_channels: int,
    out_channels: int,
    filters: Sequence[int] = (16, 32, 64, 128, 256),
    dropout: float = 0.1,
) -> UNet:
    """The myocardium U-Net (``UNet``'s docstring): ``out_channels`` softmax classes (>= 2).

    Example:
        >>> unet(1, 2, filters=(4, 8)).n_classes
        2
    """
    return UNet(in_channels, out_channels, filters, dropout)
