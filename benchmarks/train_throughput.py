"""Training samples/s (fp32 and bf16 autocast) beside DataLoader-only samples/s.

Shows whether loading limits training on this machine. Builds the real datamodule and model from
the composed config (any Hydra override may follow the options)::

    python benchmarks/train_throughput.py --steps 10 model=resunet2cs data.num_workers=1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))


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
        n += len(next(batches)["image"])
    return n / (time.perf_counter() - start)


def train_throughput(model, batch: dict, steps: int, warmup: int, bf16: bool, device) -> float:
    """Samples/s of forward + loss + backward + Adam step on one resident batch."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    image, mask = batch["image"].to(device), batch["mask"].to(device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=resunet2cs")
    args = parser.parse_args()

    cfg = _config(args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    model = instantiate(cfg.model)
    params = sum(p.numel() for p in model.parameters())

    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(
        f"model: {cfg.model.net._target_} {params / 1e6:.2f} M parameters, "
        f"batch {cfg.data.batch_size}, num_workers {cfg.data.num_workers}"
    )
    loader_rate = loader_throughput(loader, args.steps)
    print(f"DataLoader only      : {loader_rate:8.1f} samples/s")
    batch = next(iter(loader))
    for bf16 in (False, True):
        rate = train_throughput(model, batch, args.steps, args.warmup, bf16, device)
        label = "bf16 autocast" if bf16 else "fp32"
        verdict = "loader-bound" if loader_rate < rate else "compute-bound"
        print(f"training {label:13s}: {rate:8.1f} samples/s  ({verdict})")


if __name__ == "__main__":
    main()
