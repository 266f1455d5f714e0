"""Learning-rate range test (Smith 2017): the training loss while the learning rate grows.

Trains the configured model on the real training loader for ``--steps`` Adam steps, the learning
rate growing geometrically from ``--lr-min`` to ``--lr-max``, and prints the smoothed loss at
each rate; it stops early once the loss has diverged (4x its best). The peak of a one-cycle
schedule (``optimizer.lr`` of ``conf/model/net/*.yaml``) is usually taken a few times below the
rate of the lowest loss, near the steepest descent. Any Hydra override may follow the options::

    python benchmarks/lr_range_test.py --steps 100 model/net=monai_basic_unet
    python benchmarks/lr_range_test.py model.net.init=zero_head model.net.norm=instance

The first line names the CPU; the loss curve is independent of it, the time per step is not.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_throughput import _config  # noqa: E402
from deployment.cpu_info import host_cpu  # noqa: E402


def geometric_rates(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``lr_min`` to ``lr_max``, evenly spaced on a log scale.

    Example:
        >>> [round(r, 6) for r in geometric_rates(1e-4, 1e-2, 3)]
        [0.0001, 0.001, 0.01]
    """
    ratio = (lr_max / lr_min) ** (1 / max(steps - 1, 1))
    return [lr_min * ratio**i for i in range(steps)]


def suggested_rates(rates: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(rate of the lowest smoothed loss, rate of the steepest descent per log-rate step).

    The first tenth of the steps is left out of the steepest descent: there the moving average
    still follows the first losses of an untrained network.

    Example:
        >>> suggested_rates([1e-4, 1e-3, 1e-2, 1e-1], [1.0, 0.9, 0.5, 2.0])
        (0.01, 0.001)
    """
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    start = len(smoothed) // 10
    slopes = {i: smoothed[i + 1] - smoothed[i] for i in range(start, len(smoothed) - 1)}
    steepest = min(slopes, key=slopes.__getitem__) if slopes else 0
    return rates[best], rates[steepest]


def range_test(
    model, loader, rates: list[float], beta: float = 0.9
) -> tuple[list[float], list[float]]:
    """Adam steps at ``rates`` on batches of ``loader``; returns (rates run, smoothed losses)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=rates[0])
    batches, average, smoothed = iter(loader), 0.0, []
    for i, lr in enumerate(rates):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model.loss(model(batch["image"]), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = beta * average + (1 - beta) * loss.item()
        smoothed.append(average / (1 - beta ** (i + 1)))  # bias-corrected moving average
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > 4 * min(smoothed):
            break
    return rates[: len(smoothed)], smoothed


def main(argv: list[str] | None = None) -> tuple[float, float]:
    """Print the curve and the two suggested rates; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps (one batch each)")
    parser.add_argument("--lr-min", type=float, default=1e-5, help="first learning rate")
    parser.add_argument("--lr-max", type=float, default=1e-1, help="last learning rate")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (weights, batch order)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model/net=monai_unet")
    args = parser.parse_args(argv)

    cfg = _config(args.overrides)
    torch.manual_seed(args.seed)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(cfg.model)
    print(f"CPU: {host_cpu().describe()}, {torch.get_num_threads()} threads")
    print(f"model: {cfg.model.net._target_}, batch {cfg.data.batch_size}, {args.steps} steps")
    start = time.perf_counter()
    rates, smoothed = range_test(
        model, datamodule.train_dataloader(), geometric_rates(args.lr_min, args.lr_max, args.steps)
    )
    seconds = time.perf_counter() - start
    for i in range(0, len(rates), max(len(rates) // 25, 1)):
        print(f"lr {rates[i]:9.2e}  smoothed loss {smoothed[i]:.4f}")
    lowest, steepest = suggested_rates(rates, smoothed)
    print(
        f"lowest loss at lr {lowest:.2e}; steepest descent at lr {steepest:.2e} "
        f"({len(rates)} steps, {seconds / len(rates):.2f} s a step)"
    )
    return lowest, steepest


if __name__ == "__main__":
    main()
