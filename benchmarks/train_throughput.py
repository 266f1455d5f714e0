"""Training samples/s (fp32, bf16 autocast, channels_last on GPU) beside DataLoader-only samples/s.

Shows whether loading limits training on this machine. Builds the real datamodule and model from
the composed config (any Hydra override may follow the options)::

    python benchmarks/train_throughput.py --steps 10 model=resunet2cs data.num_workers=1
    python benchmarks/train_throughput.py --steps 50 data.batch_size=256 data.num_workers=12  # GPU

The first line names the CPU (``deployment.cpu_info``). On a CPU, bf16 autocast is measured only
where the CPU has native bf16, by the same rule as ``trainer.precision=auto`` (``--bf16`` measures
the emulated one too); ``--channels-last`` adds channels_last (NHWC) variants. On a CUDA device it
measures fp32, bf16 and bf16 with channels_last, as ``trainer=gpu`` trains. The issue's goal is
>= 2,000 samples/s for the default 3CS model on one H100 with the loader never the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import NamedTuple

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

from deployment.cpu_info import CPUInfo, host_cpu

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

GOAL_SAMPLES_PER_S = 2000.0  # one H100, default 3CS model


class Variant(NamedTuple):
    """One training measurement: autocast to bf16 or not, channels_last memory format or not."""

    label: str
    bf16: bool
    channels_last: bool


def measurement_plan(
    device: torch.device,
    cpu: CPUInfo,
    channels_last_on_cpu: bool = False,
    emulated_bf16: bool = False,
) -> list[Variant]:
    """Variants measured on ``device``: fp32; bf16 on CUDA and on CPUs with native bf16 (or with
    ``emulated_bf16``); bf16 + channels_last on CUDA; channels_last on CPU when asked.

    Example:
        >>> zen3 = CPUInfo("AMD EPYC", "AVX2", frozenset())
        >>> plan = measurement_plan(torch.device("cpu"), zen3, channels_last_on_cpu=True)
        >>> [v.label for v in plan]
        ['fp32', 'fp32 channels_last']
    """
    cuda = device.type == "cuda"
    bf16 = cuda or cpu.native_bf16 or emulated_bf16
    plan = [Variant("fp32", False, False)]
    if channels_last_on_cpu and not cuda:
        plan.append(Variant("fp32 channels_last", False, True))
    if bf16:
        plan.append(Variant("bf16 autocast", True, False))
    if bf16 and (cuda or channels_last_on_cpu):
        plan.append(Variant("bf16 channels_last", True, True))
    return plan


def _config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.data.split_out = None  # a benchmark writes no split file
    return cfg


def loader_throughput(loader, steps: int) -> float:
    """Samples/s of iterating the training DataLoader alone (reading, preprocessing, flips)."""
    batches = iter(loader)
    next(batches)  # start-up (workers, file open) is not throughput
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        try:
            n += len(next(batches)["image"])
        except StopIteration:  # a short epoch: start the next one
            batches = iter(loader)
    return n / (time.perf_counter() - start)


def train_throughput(
    model,
    batch: dict,
    steps: int,
    warmup: int,
    bf16: bool,
    device: torch.device,
    channels_last: bool = False,
) -> float:
    """Samples/s of forward + loss + backward + Adam step on one resident batch.

    Args:
        model: a ``SegmentationModule`` (``model.loss`` and ``model(image)``); moved to ``device``
            and, with ``channels_last``, converted to that memory format (left so).
        batch: ``{"image": [B, T, RO, E1], "mask": [B, RO, E1]}``.
        steps, warmup: timed and untimed optimisation steps.
        bf16: run forward and loss under ``torch.autocast(dtype=torch.bfloat16)``.
        device: where to train.
        channels_last: NHWC weights and input, as ``callbacks.channels_last.ChannelsLast``.
    """
    model.to(device).train()
    image, mask = batch["image"].to(device), batch["mask"].to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(model(image), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(image) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    """Print the measurements; returns ``[(label, samples/s), ...]`` (loader first)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument(
        "--channels-last", action="store_true", help="also measure channels_last on CPU"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="measure bf16 autocast on CPU even where it is emulated"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resunet2cs")
    args = parser.parse_args(argv)

    cfg = _config(args.overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shape: pick the fastest kernels
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    model = instantiate(cfg.model)
    params = sum(p.numel() for p in model.parameters())

    cpu = host_cpu()
    print(f"CPU: {cpu.describe()}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} {name} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(
        f"model: {cfg.model.net._target_} {params / 1e6:.2f} M parameters, "
        f"batch {cfg.data.batch_size}, num_workers {cfg.data.num_workers}"
    )
    loader_rate = loader_throughput(loader, args.steps)
    results = [("DataLoader only", loader_rate)]
    print(f"{'DataLoader only':27s}: {loader_rate:8.1f} samples/s")
    batch = next(iter(loader))
    for variant in measurement_plan(device, cpu, args.channels_last, args.bf16):
        rate = train_throughput(
            model, batch, args.steps, args.warmup, variant.bf16, device, variant.channels_last
        )
        results.append((f"training {variant.label}", rate))
        verdict = "loader-bound" if loader_rate < rate else "compute-bound"
        if variant.bf16 and device.type == "cpu" and not cpu.native_bf16:
            verdict += ", bf16 emulated"
        print(f"training {variant.label:18s}: {rate:8.1f} samples/s  ({verdict})")
    if device.type == "cuda":
        best = max(rate for _, rate in results[1:])
        print(
            f"goal >= {GOAL_SAMPLES_PER_S:.0f} samples/s (3CS, one H100): best {best:.0f} -> "
            f"{'met' if best >= GOAL_SAMPLES_PER_S else 'not met'}; loader "
            f"{'keeps up' if loader_rate >= best else 'is the bottleneck: raise data.num_workers'}"
        )
    return results


if __name__ == "__main__":
    main()
