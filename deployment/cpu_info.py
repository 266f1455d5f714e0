"""What this CPU runs natively: probed, never assumed (docs/deployment.md, "The CPU probe").

Used to choose the training precision (bf16 autocast only where bf16 is native), to record the
exporting CPU and the features an artifact needs in its metadata, to refuse loading an artifact
on a host that lacks them, and to name the CPU beside every benchmark figure.

Features (names as in ``/proc/cpuinfo``):

- ``avx512_bf16``: native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16; Cooper Lake, Sapphire
  Rapids, Zen 4 and later). Elsewhere oneDNN emulates bf16 and a bf16 model runs many times
  slower than fp32 (18x measured for training on a Zen 3).
- ``avx512_vnni``: 8-bit dot products with 32-bit accumulation (Cascade Lake, Zen 4 and later).
  Without it fbgemm's int8 convolutions accumulate pairs in 16 bits with saturation.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

NATIVE_BF16 = "avx512_bf16"
VNNI = "avx512_vnni"
KNOWN_FEATURES = (NATIVE_BF16, VNNI)


@dataclass(frozen=True)
class CPUInfo:
    """The host CPU as far as our models care.

    Attributes:
        model: the processor's model name (``/proc/cpuinfo``), or ``platform.processor()``.
        capability: ``torch.backends.cpu.get_cpu_capability()``: ``DEFAULT``, ``AVX2``,
            ``AVX512``, ... (the widest vector kernels ATen dispatches to).
        features: the :data:`KNOWN_FEATURES` this CPU has.
    """

    model: str
    capability: str
    features: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return NATIVE_BF16 in self.features

    @property
    def vnni(self) -> bool:
        return VNNI in self.features

    def describe(self) -> str:
        """One line for logs and benchmark headers, e.g. ``AMD EPYC (AVX2; no native bf16; no
        VNNI)``."""
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        vnni = "VNNI" if self.vnni else "no VNNI"
        return f"{self.model} ({self.capability}; {bf16}; {vnni})"

    def as_metadata(self) -> dict:
        """JSON-ready record for artifacts and benchmark outputs."""
        return {
            "model": self.model,
            "capability": self.capability,
            "features": sorted(self.features),
        }


def _proc_cpuinfo() -> tuple[str | None, set[str] | None]:
    """Model name and flags of the first processor in ``/proc/cpuinfo`` (Linux), else None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return model, flags


def probe_cpu(
    cpuinfo: tuple[str | None, set[str] | None] | None = None,
    capability: str | None = None,
    mkldnn_bf16: bool | None = None,
) -> CPUInfo:
    """Probe the host (the arguments replace a probe, for tests).

    A feature counts only where both torch and the CPU flags agree (bf16: oneDNN's
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` and the ``avx512_bf16`` or ``amx_bf16``
    flag); without ``/proc/cpuinfo`` flags, bf16 follows oneDNN's probe and VNNI counts as absent.

    Example:
        >>> cpu = probe_cpu(("AMD EPYC", {"avx2", "fma"}), "AVX2", mkldnn_bf16=False)
        >>> cpu.describe()
        'AMD EPYC (AVX2; no native bf16; no VNNI)'
        >>> sorted(probe_cpu(("Zen 4", {"avx512_bf16", "avx512_vnni"}), "AVX512", True).features)
        ['avx512_bf16', 'avx512_vnni']
    """
    model, flags = cpuinfo if cpuinfo is not None else _proc_cpuinfo()
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    if mkldnn_bf16 is None:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    features = set()
    if mkldnn_bf16 and (flags is None or flags & {"avx512_bf16", "amx_bf16"}):
        features.add(NATIVE_BF16)
    if flags is not None and VNNI in flags:
        features.add(VNNI)
    return CPUInfo(
        model=model or platform.processor() or platform.machine() or "unknown CPU",
        capability=capability,
        features=frozenset(features),
    )


@functools.cache
def host_cpu() -> CPUInfo:
    """This machine's :class:`CPUInfo` (probed once per process)."""
    return probe_cpu()


def training_precision(requested: str, cpu: CPUInfo | None = None) -> tuple[str, str]:
    """The Lightning precision for CPU training, and why.

    Args:
        requested: ``auto`` (bf16 autocast where bf16 is native, else fp32), or any explicit
            Lightning precision (``32-true``, ``bf16-mixed``, ...), which is kept.
        cpu: the CPU (default: this host).

    Returns:
        ``(precision, reason)``, the reason being one log line.

    Example:
        >>> avx2 = probe_cpu(("AMD EPYC", {"avx2"}), "AVX2", mkldnn_bf16=False)
        >>> training_precision("auto", avx2)
        ('32-true', 'CPU: AMD EPYC (AVX2; no native bf16; no VNNI) -> precision 32-true')
        >>> training_precision("bf16-mixed", avx2)[0]
        'bf16-mixed'
    """
    cpu = cpu or host_cpu()
    if requested != "auto":
        note = (
            " (bf16 is emulated here: slow)" if "bf16" in requested and not cpu.native_bf16 else ""
        )
        return requested, f"CPU: {cpu.describe()} -> precision {requested} (as configured){note}"
    precision = "bf16-mixed" if cpu.native_bf16 else "32-true"
    return precision, f"CPU: {cpu.describe()} -> precision {precision}"


def missing_features(
    required: list[str] | tuple[str, ...], cpu: CPUInfo | None = None
) -> list[str]:
    """The features of ``required`` that ``cpu`` (default: this host) lacks."""
    cpu = cpu or host_cpu()
    return [feature for feature in required if feature not in cpu.features]
