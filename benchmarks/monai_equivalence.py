"""Our hand-written pieces against MONAI's: same result on fixed seeds? how fast?

``python benchmarks/monai_equivalence.py [--cases 500] [--threads 2]``

Prints, with the CPU named first:

* **largest connected component** (``quantification.lv_mask.largest_component``, SciPy, used by
  the docs/method.md §A6 post-processing on both the training and the scanner side) against MONAI's
  ``KeepLargestConnectedComponent`` (8-connectivity, scikit-image underneath) on seeded random
  64×48 blob masks like the network's LV candidates: identical masks, median time per mask;
* **Dice + cross-entropy** (``lightning_modules.losses.DiceCrossEntropyLoss``, whose Dice term is
  MONAI's ``DiceLoss``) against MONAI's all-in-one ``DiceCELoss`` with and without the class
  weights: loss difference and time per forward + backward of a [8, 2, 256, 256] batch;
* **CE − log soft IoU** (``CrossEntropySoftIoULoss``, method.md §A5) against MONAI's nearest loss,
  CE + Jaccard ``DiceLoss`` (1 − J): the two are different objectives, shown by their values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployment.cpu_info import host_cpu  # noqa: E402
from lightning_modules.losses import CrossEntropySoftIoULoss, DiceCrossEntropyLoss  # noqa: E402
from quantification.lv_mask import largest_component  # noqa: E402


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``call`` in ms, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def blob_masks(n: int, seed: int = 0) -> np.ndarray:
    """bool [n, 64, 48]: thresholded smoothed noise, 1 to ~10 blobs each, some touching only
    at a corner (where 4- and 8-connectivity differ)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal((n, 64, 48)), sigma=(0, 2.5, 2.5))
    return noise > np.quantile(noise, 0.9, axis=(1, 2), keepdims=True)


def compare_components(cases: int) -> None:
    from monai.transforms import KeepLargestConnectedComponent

    masks = blob_masks(cases)
    monai_keep = KeepLargestConnectedComponent(applied_labels=[1], connectivity=2)
    ours = [largest_component(m) for m in masks]
    theirs = [np.asarray(monai_keep(m[None].astype(np.uint8)))[0].astype(bool) for m in masks]
    differ = [
        i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if not np.array_equal(a, b)
    ]
    labelled = [ndimage.label(m, structure=np.ones((3, 3))) for m in masks]
    n_blobs = [n for _, n in labelled]

    def tie(i: int) -> bool:  # the two largest blobs have the same size
        sizes = np.sort(np.bincount(labelled[i][0].ravel())[1:])
        return len(sizes) > 1 and sizes[-1] == sizes[-2]

    print(
        f"largest component, {cases} seeded 64x48 masks ({min(n_blobs)}-{max(n_blobs)} blobs): "
        f"identical in {cases - len(differ)}/{cases}; the {len(differ)} others are "
        f"{sum(map(tie, differ))} ties of the two largest blobs (ours keeps the first in raster "
        "order)"
    )
    mask = masks[0]
    t_ours = median_ms(lambda: largest_component(mask), 200)
    t_monai = median_ms(lambda: monai_keep(mask[None].astype(np.uint8)), 200)
    print(f"  per mask: ours (scipy.ndimage) {t_ours:.3f} ms, MONAI {t_monai:.3f} ms")


def _timed_loss(loss: Callable, logits: torch.Tensor, target: torch.Tensor) -> float:
    def step() -> None:
        x = logits.detach().requires_grad_()
        loss(x, target).backward()

    return median_ms(step, 20)


def compare_losses() -> None:
    from monai.losses import DiceCELoss, DiceLoss

    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(8, 2, 256, 256, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    radius = ((yy - 128) ** 2 + (xx - 120) ** 2).float().sqrt()
    target = ((radius > 20) & (radius < 28)).long().expand(8, -1, -1).clone()
    target[0] = 0  # an image without myocardium

    ours = DiceCrossEntropyLoss(n_classes=2, class_weights=[1.0, 5.0])
    for name, weight in (("class weights [1, 5]", [1.0, 5.0]), ("no class weights", None)):
        theirs = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            smooth_nr=1.0,
            smooth_dr=1.0,
            weight=None if weight is None else torch.tensor(weight),
        )
        mine = ours if weight else DiceCrossEntropyLoss(n_classes=2)
        a, b = float(mine(logits, target)), float(theirs(logits, target[:, None]))
        print(f"Dice+CE ({name}): ours {a:.6f}, MONAI DiceCELoss {b:.6f}, |diff| {abs(a - b):.2g}")
    t_ours = _timed_loss(ours, logits, target)
    monai_ce = DiceCELoss(
        include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1.0, smooth_dr=1.0
    )
    t_monai = _timed_loss(lambda x, y: monai_ce(x, y[:, None]), logits, target)
    print(f"  forward+backward [8, 2, 256, 256]: ours {t_ours:.1f} ms, DiceCELoss {t_monai:.1f} ms")

    aif_logits = 2 * torch.randn(16, 3, 64, 48, generator=generator)
    aif_target = torch.zeros(16, 64, 48, dtype=torch.long)
    aif_target[:, 20:27, 15:22], aif_target[:, 30:40, 25:30] = 1, 2
    ce_log_iou = CrossEntropySoftIoULoss(n_classes=3)
    jaccard = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, jaccard=True,
                       batch=True)  # fmt: skip
    ce = float(torch.nn.functional.cross_entropy(aif_logits, aif_target))
    nearest = ce + 0.5 * float(jaccard(aif_logits, aif_target[:, None]))
    print(
        f"CE - 0.5 log J (method.md §A5): {float(ce_log_iou(aif_logits, aif_target)):.4f}; MONAI's "
        f"nearest, CE + 0.5 (1 - J): {nearest:.4f} (different objectives)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=500, help="random masks compared")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(host_cpu().describe(), f"| {args.threads} threads")
    compare_components(args.cases)
    compare_losses()


if __name__ == "__main__":
    main()
