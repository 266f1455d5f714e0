"""Post-training int8 quantisation of a segmentation network for the CPU artifact.

Static quantisation with PyTorch's FX graph mode (``torch.ao.quantization``, backend ``fbgemm``):
int8 weights (per output channel, symmetric) and uint8 activations (per tensor, ranges from a
histogram of the activations on real calibration inputs); the quantised convolutions run on
fbgemm's int8 kernels (no bfloat16 instructions needed, unlike ``precision=bf16``).

- ``reduce_range=False`` (default) uses all 8 bits of the activations. Without VNNI (AVX2, or
  AVX-512 before Cascade Lake) fbgemm multiplies u8 x s8 pairs into int16 with saturation, which
  in theory can clip; measured on a trained 3CS ResUNet on an AVX2-only Zen 3 (120 test scans):
  LV Dice 0.902 (8-bit) vs 0.901 (fp32), paired t P 0.8, same detections, while 7-bit
  activations (``reduce_range=True``, PyTorch's x86 default) lost 0.021 (P < 1e-4); on a VNNI
  Zen 4, 7-bit lost 0.002-0.006. So 8-bit is the default everywhere and int8 artifacts need no
  CPU feature (docs/deployment.md, "Precision and backends").
- Concatenations run in float32 (dequantise, concatenate, requantise at the next conv with
  the range observed there): int8 ``cat`` keeps the first input's scale and clips the others,
  and a skip connection and an up-sampled path have different ranges.
- Submodules named in ``float_modules`` stay in float32 (for the 3CS ResUNet, keeping the input
  block and the head in float32 was measured no more accurate, and slower).

Measured on the default 3CS ResUNet: README, "Latency".
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.fx
from torch import nn

BACKEND = "fbgemm"
"""``torch.backends.quantized`` engine the artifact is built for and loaded with (x86-64 CPUs).

fbgemm rather than ``x86`` (which also packs oneDNN weights): the same inference speed on 2 Zen 4
cores (19 vs 17-19 ms for the 3CS ResUNet) and a third less time to read the file (40 vs 58 ms).
"""


_DEPRECATIONS = (
    # torch 2.13 announces that torch.ao.quantization moves to torchao, that observers' reduce_range
    # gives way to quant_min/quant_max, and that quantized tensor dtypes are deprecated.
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"Please use quant_min and quant_max to specify the range for observers", UserWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized", UserWarning),
)


@contextmanager
def quiet_quantization_deprecation() -> Iterator[None]:
    """Silence exactly torch 2.13's deprecation notices of the int8 quantisation API."""
    with warnings.catch_warnings():
        for message, category in _DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


class FloatConcat(nn.Module):
    """``torch.cat(tensors, dim)`` as a module, so that quantisation can leave it in float32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors, dim=self.dim)


def _with_float_concatenations(net: nn.Module) -> torch.fx.GraphModule:
    """``net`` as an FX graph whose ``torch.cat`` calls are :class:`FloatConcat` modules."""
    graph_module = torch.fx.symbolic_trace(net)
    for index, node in enumerate(list(graph_module.graph.nodes)):
        if node.op != "call_function" or node.target is not torch.cat:
            continue
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        name = f"float_concat_{index}"
        graph_module.add_submodule(name, FloatConcat(dim))
        with graph_module.graph.inserting_before(node):
            replacement = graph_module.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph_module.graph.erase_node(node)
    graph_module.recompile()
    return graph_module


def quantize_int8(
    net: nn.Module,
    calibration: torch.Tensor,
    float_modules: Sequence[str] = (),
    reduce_range: bool = False,
    batch_size: int = 8,
) -> nn.Module:
    """An int8 copy of ``net`` (eval mode, CPU), calibrated on ``calibration``.

    Args:
        net: float32 network, ``[B, C, H, W]`` -> logits (not modified).
        calibration: float32 ``[N, C, H, W]`` real preprocessed inputs (e.g. 32-64 validation
            cases) that set the activation ranges.
        float_modules: names of submodules of ``net`` kept in float32 (e.g. ``["input_block",
            "head"]``); an unknown name is an error.
        reduce_range: 7-bit activations (less accurate; module docstring).
        batch_size: calibration batch size.

    Returns:
        The quantised network (an ``torch.fx.GraphModule``; trace it for TorchScript).

    Example:
        >>> from lightning_modules.networks.unet import UNet
        >>> net = UNet(filters=(4, 8)).eval()
        >>> q = quantize_int8(net, torch.rand(4, 1, 16, 16), float_modules=["head"])
        >>> q(torch.rand(1, 1, 16, 16)).shape
        torch.Size([1, 2, 16, 16])
    """
    from torch.ao.quantization import (
        HistogramObserver,
        QConfig,
        default_per_channel_weight_observer,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    names = dict(net.named_modules())
    unknown = [name for name in float_modules if name not in names or not name]
    if unknown:
        raise ValueError(
            f"int8 float_modules {unknown} are not submodules of {type(net).__name__} "
            f"(top-level ones: {[n for n, _ in net.named_children()]})"
        )
    if calibration.ndim != 4 or len(calibration) == 0:
        shape = tuple(calibration.shape)
        raise ValueError(f"int8 calibration needs float [N, C, H, W] inputs, N > 0; got {shape}")
    torch.backends.quantized.engine = BACKEND
    qconfig = QConfig(
        activation=HistogramObserver.with_args(reduce_range=reduce_range),
        weight=default_per_channel_weight_observer,
    )
    mapping = get_default_qconfig_mapping(BACKEND)
    default = mapping.global_qconfig
    mapping.set_global(qconfig)
    for object_type, object_qconfig in list(mapping.object_type_qconfigs.items()):
        if object_qconfig == default:  # fixed-range ops (sigmoid, ...) keep their own
            mapping.set_object_type(object_type, qconfig)
    mapping.set_object_type(FloatConcat, None)
    for name in float_modules:
        mapping = mapping.set_module_name(name, None)
    calibration = calibration.float().cpu()
    with quiet_quantization_deprecation():
        prepared = prepare_fx(
            _with_float_concatenations(copy.deepcopy(net).float().cpu().eval()),
            mapping,
            example_inputs=(calibration[:1],),
            prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_classes(
                [FloatConcat]
            ),
        )
        with torch.no_grad():
            for start in range(0, len(calibration), batch_size):
                prepared(calibration[start : start + batch_size])
        return convert_fx(prepared).eval()
