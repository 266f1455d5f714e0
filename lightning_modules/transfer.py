"""Transfer learning: initialise a network from pretrained weights, freeze levels, split the LR.

method.md §B3: FT-T2 and FT-post start from the weights of N0 (the native-T1 U-Net) and are refined
on
T2-weighted or post-contrast T1-weighted images. The paper does not say which layers were frozen
or which learning rates were used (method.md §C9), so all of it is configurable
(``conf/finetune/``):

- ``pretrained``: a Lightning checkpoint (``.ckpt``, read with ``weights_only=True``; the tensors
  under ``state_dict["net."…]``) or an exported TorchScript artifact (``.ts``, its ``state_dict``;
  needs an artifact exported with ``freeze=false``: freezing turns the weights into unnamed
  constants, see ``conf/export/myocardium.yaml``);
- ``exclude_head``: ``auto`` skips the head's tensors when their shapes differ (a different class
  count) and loads them otherwise; ``true`` always leaves the head random; ``false`` loads it and a
  class-count change is a shape error;
- ``freeze_levels``: K = freeze the first K resolution levels of the encoder (level ``i`` =
  ``encoders[i]``, level ``depth - 1`` = the bottleneck); ``freeze_encoder: true`` = all of them.
  Frozen layers get ``requires_grad=False`` and their BatchNorm statistics stay fixed too (the
  module keeps them in eval mode, see ``MyocardiumSegmentationModule.train``);
- ``pretrained_lr``: learning rate of the loaded (pretrained) parameters, via an optimiser
  parameter group; the layers left random (a re-initialised head) keep ``model.optimizer.lr``.

Every load produces a :class:`LoadReport` (loaded / skipped / left random / frozen tensor names),
logged and written as JSON next to the run. A tensor whose shape differs and is not excluded is
an error (:class:`PretrainedShapeError`) naming the tensor and both shapes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from formats.atomic_file import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "FineTuning",
    "LoadReport",
    "PretrainedShapeError",
    "PretrainedWeightsError",
    "freeze_levels",
    "load_pretrained",
    "parameter_groups",
    "read_pretrained_state",
]

HEAD_PREFIX = "head."
"""Parameter-name prefix of the classification head of ``UNet`` (and ``ResUNet``)."""


class PretrainedWeightsError(ValueError):
    """A pretrained-weights file cannot be used; the message names the file and the problem."""


class PretrainedShapeError(PretrainedWeightsError):
    """A pretrained tensor's shape differs from the network's; names the tensor and both shapes."""


@dataclass
class LoadReport:
    """What a pretrained-weights load did, tensor by tensor (state-dict names of the network).

    Attributes:
        source: the file the weights came from.
        loaded: network tensors copied from the file.
        skipped: tensors of the file that were not used (excluded head, or absent from the
            network when ``strict=False``), each with the reason.
        left_random: network tensors that keep their random initialisation.
        frozen: network parameters with ``requires_grad=False``.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    left_random: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for the log."""
        lines = [
            f"Pretrained weights from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.skipped)} skipped, {len(self.left_random)} left random, "
            f"{len(self.frozen)} parameters frozen."
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  left random {name}" for name in self.left_random]
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> None:
        """Write the report as JSON (atomically)."""
        with atomic_write(Path(path)) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1))


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_pretrained_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's tensors from a Lightning checkpoint or an exported TorchScript artifact.

    Args:
        path: ``.ckpt`` (the LightningModule's ``net.*`` tensors, read with ``weights_only=True``)
            or ``.ts`` (an artifact from ``callbacks.export``, which wraps the network as ``net``,
            exported with ``freeze=false``; a plain scripted network works too).

    Returns:
        Network state dict (names without the ``net.`` prefix), CPU tensors.

    Raises:
        PretrainedWeightsError: missing file, unknown suffix, no network tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: no such pretrained-weights file")
    if path.suffix == ".ckpt":
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling errors of any kind
            raise PretrainedWeightsError(f"{path}: not a readable checkpoint ({exc})") from exc
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise PretrainedWeightsError(
                f"{path}: no 'state_dict' key; expected a Lightning checkpoint (.ckpt)"
            )
        state = _strip_prefix(checkpoint["state_dict"], "net.")
        if not state:
            raise PretrainedWeightsError(
                f"{path}: the checkpoint's state_dict has no 'net.*' tensors; expected the "
                "checkpoint of a module whose network is its `net` attribute"
            )
        return state
    if path.suffix == ".ts":
        from deployment.artifact import quiet_torchscript_deprecation

        try:
            with quiet_torchscript_deprecation():
                scripted = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise PretrainedWeightsError(f"{path}: TorchScript cannot load it ({exc})") from exc
        state = {k: v.detach().clone() for k, v in scripted.state_dict().items()}
        if any(k.startswith("net.") for k in state):
            state = _strip_prefix(state, "net.")
        if not state:
            raise PretrainedWeightsError(
                f"{path}: the TorchScript module has no named tensors: it was frozen at export "
                "(torch.jit.freeze makes weights constants). Export with export.freeze=false "
                "(conf/export/myocardium.yaml does), or fine-tune from the run's .ckpt"
            )
        return state
    raise PretrainedWeightsError(
        f"{path}: unknown pretrained-weights format {path.suffix!r}; expected a Lightning "
        "checkpoint (.ckpt) or an exported TorchScript artifact (.ts)"
    )


def load_pretrained(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    source: str = "<state dict>",
    exclude_head: bool | Literal["auto"] = "auto",
    exclude: Sequence[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Copy pretrained tensors into ``net`` in place (under ``torch.no_grad``).

    Args:
        net: the network to initialise (its own init stays where nothing is loaded).
        state: pretrained tensors by state-dict name (see :func:`read_pretrained_state`).
        source: name of the origin, for the report and error messages.
        exclude_head: ``"auto"``: skip ``head.*`` tensors whose shape differs (class count);
            ``True``: always skip the head; ``False``: load it (a shape difference is an error).
        exclude: further name prefixes never loaded (e.g. ``["decoders.3."]``).
        strict: a network tensor absent from ``state``, or a ``state`` tensor absent from the
            network, is an error; ``False`` reports them as left random / skipped.

    Raises:
        PretrainedShapeError: a tensor that is not excluded has a different shape.
        PretrainedWeightsError: ``strict`` and the names do not match.
    """
    if exclude_head not in (True, False, "auto"):
        raise ValueError(f"exclude_head must be true, false or 'auto', got {exclude_head!r}")
    target = net.state_dict()
    report = LoadReport(source=source)
    always = tuple(exclude) + ((HEAD_PREFIX,) if exclude_head is True else ())
    to_load: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(always):
            report.skipped[name] = "excluded by configuration"
        elif name not in target:
            if strict:
                raise PretrainedWeightsError(
                    f"{source}: tensor {name!r} does not exist in the network (architectures "
                    "differ?); set finetune.strict=false to skip it"
                )
            report.skipped[name] = "not in the network"
        elif tuple(tensor.shape) != tuple(target[name].shape):
            if exclude_head == "auto" and name.startswith(HEAD_PREFIX):
                report.skipped[name] = (
                    f"head shape {tuple(tensor.shape)} != {tuple(target[name].shape)} "
                    "(class count differs): re-initialised"
                )
            else:
                raise PretrainedShapeError(
                    f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} in the pretrained "
                    f"weights but {tuple(target[name].shape)} in the network; check model.net "
                    "(filters, n_classes) against the pretrained run, or exclude it"
                )
        else:
            to_load[name] = tensor
    missing = [name for name in target if name not in to_load]
    absent = [name for name in missing if name not in state and not name.startswith(always)]
    if strict and absent:
        raise PretrainedWeightsError(
            f"{source}: the network's tensors {absent[:5]}{' …' if len(absent) > 5 else ''} are "
            "not in the pretrained weights (architectures differ?); set finetune.strict=false "
            "to leave them random"
        )
    with torch.no_grad():
        for name, tensor in to_load.items():
            target[name].copy_(tensor.to(dtype=target[name].dtype))
    report.loaded = list(to_load)
    report.left_random = missing
    return report


def freeze_levels(net: nn.Module, levels: int) -> list[str]:
    """Freeze the first ``levels`` encoder levels of a U-Net in place; returns the frozen names.

    Level ``i < len(net.encoders)`` is ``net.encoders[i]``; the next level is ``net.bottleneck``.
    ``levels = len(net.encoders) + 1`` freezes the whole encoder (the down path).

    Returns:
        Module-name prefixes frozen (e.g. ``["encoders.0", "encoders.1"]``).
    """
    if not hasattr(net, "encoders") or not hasattr(net, "bottleneck"):
        raise ValueError(
            f"{type(net).__name__} has no `encoders`/`bottleneck`; freezing levels needs a "
            "lightning_modules.networks.unet.UNet"
        )
    levels_available = len(net.encoders) + 1
    if not 0 <= levels <= levels_available:
        raise ValueError(
            f"freeze_levels must be in [0, {levels_available}] for this U-Net "
            f"({levels_available} levels incl. the bottleneck), got {levels}"
        )
    names = [f"encoders.{i}" for i in range(min(levels, len(net.encoders)))]
    if levels == levels_available:
        names.append("bottleneck")
    for name in names:
        for parameter in net.get_submodule(name).parameters():
            parameter.requires_grad_(False)
    return names


def parameter_groups(
    named_parameters: Sequence[tuple[str, nn.Parameter]],
    pretrained: set[str],
    pretrained_lr: float | None,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups: trainable pretrained parameters at ``pretrained_lr``, the rest
    at the optimiser's own lr. Frozen parameters (``requires_grad=False``) are left out.

    Args:
        named_parameters: ``(name, parameter)`` pairs (names as in ``pretrained``).
        pretrained: names of the parameters loaded from pretrained weights.
        pretrained_lr: their learning rate; ``None``: one group, the optimiser's lr for all.
    """
    trainable = [(n, p) for n, p in named_parameters if p.requires_grad]
    if pretrained_lr is None:
        return [{"params": [p for _, p in trainable]}]
    loaded = [p for n, p in trainable if n in pretrained]
    fresh = [p for n, p in trainable if n not in pretrained]
    groups = [{"params": fresh}] if fresh else []
    if loaded:
        groups.append({"params": loaded, "lr": pretrained_lr})
    return groups


class FineTuning:
    """The ``finetune`` config group: initialise a module's ``net`` from pretrained weights.

    ``train.py`` calls :meth:`apply_to` right after building the model when ``pretrained`` is
    set. Arguments are those of the module docstring; ``report_out`` is where the
    :class:`LoadReport` JSON goes (``None``: only logged).

    Example (config): ``python train.py experiment=t2_finetune finetune.pretrained=N0.ckpt
    finetune.freeze_levels=2 finetune.pretrained_lr=1e-4``.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        exclude_head: bool | Literal["auto"] = "auto",
        exclude: Sequence[str] = (),
        freeze_encoder: bool = False,
        freeze_levels: int = 0,
        pretrained_lr: float | None = None,
        strict: bool = True,
        report_out: str | None = None,
    ) -> None:
        if freeze_levels < 0:
            raise ValueError(f"finetune.freeze_levels must be >= 0, got {freeze_levels}")
        self.pretrained = pretrained
        self.exclude_head = exclude_head
        self.exclude = list(exclude)
        self.freeze_encoder = freeze_encoder
        self.freeze_levels = freeze_levels
        self.pretrained_lr = pretrained_lr
        self.strict = strict
        self.report_out = report_out

    def apply_to(self, module: nn.Module) -> LoadReport:
        """Load, freeze and set the LR groups of ``module`` (which has ``net`` and, for
        ``pretrained_lr``/freezing, ``set_transfer``); returns the logged report."""
        if not self.pretrained:
            raise ValueError("finetune.pretrained is not set: nothing to initialise from")
        net = module.net
        state = read_pretrained_state(self.pretrained)
        report = load_pretrained(
            net, state, str(self.pretrained), self.exclude_head, self.exclude, self.strict
        )
        levels = len(net.encoders) + 1 if self.freeze_encoder else self.freeze_levels
        frozen_modules = freeze_levels(net, levels) if levels else []
        report.frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
        if frozen_modules or self.pretrained_lr is not None:
            if not hasattr(module, "set_transfer"):
                raise TypeError(
                    f"{type(module).__name__} has no set_transfer(); freezing and "
                    "finetune.pretrained_lr need lightning_modules.myocardium_module"
                )
            parameters = {n for n, _ in net.named_parameters()}
            module.set_transfer(
                pretrained={n for n in report.loaded if n in parameters},
                pretrained_lr=self.pretrained_lr,
                frozen_modules=frozen_modules,
            )
        log.info(report.summary())
        if self.report_out:
            report.write(self.report_out)
        return report
