"""Training augmentation for AIF samples (SPEC A2): random flips along RO and E1."""

from __future__ import annotations

import torch


class RandomFlip:
    """Flip the image ``[T, RO, E1]`` and its mask ``[RO, E1]`` together along RO and/or E1.

    Args:
        p_ro: probability of flipping along RO (rows).
        p_e1: probability of flipping along E1 (columns).

    Uses torch's global RNG, which Lightning seeds per DataLoader worker.

    Example:
        >>> sample = {"image": torch.arange(6.0).view(1, 2, 3), "mask": torch.arange(6).view(2, 3)}
        >>> out = RandomFlip(p_ro=1.0, p_e1=0.0)(sample)
        >>> out["mask"].tolist()
        [[3, 4, 5], [0, 1, 2]]
    """

    def __init__(self, p_ro: float = 0.5, p_e1: float = 0.5) -> None:
        self.p_ro, self.p_e1 = p_ro, p_e1

    def __call__(self, sample: dict) -> dict:
        dims = [axis for axis, p in ((-2, self.p_ro), (-1, self.p_e1)) if torch.rand(()) < p]
        if dims:
            sample = dict(sample, image=sample["image"].flip(dims), mask=sample["mask"].flip(dims))
        return sample
