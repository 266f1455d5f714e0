"""Training augmentation of preprocessed AIF samples: geometry and intensity, MONAI transforms.

On top of the randomised phantoms (``datamodules.synthetic.aif_phantom``), every training sample
``{"image": float [T, RO, E1] (time frames as channels), "mask": int [RO, E1]}`` goes through:

1. flips along RO and E1 (docs/method.md §A2), image and mask together;
2. a random affine map (rotation, zoom, translation; bilinear image, nearest mask);
3. a smooth multiplicative bias field, the same for every frame (receive-coil shading);
4. a gamma (contrast) change and a random histogram shift (non-linear intensity mappings);
5. additive Gaussian noise;
6. division by the maximum again, so the network sees the range the runtime gives it.

Each step is a MONAI dictionary transform (``monai.transforms``), so their behaviour is the
published one. MONAI draws from its own random states, which are seeded once per process from
``torch.initial_seed()`` (what Lightning's ``seed_everything(workers=True)`` sets per DataLoader
worker): the same seed gives the same augmented samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandHistogramShiftd,
)


@dataclass(frozen=True)
class AIFAugmentation:
    """Probabilities and strengths of the training augmentation (``data.augmentation.*``).

    Attributes:
        flip_ro_p, flip_e1_p: probability of a flip along RO / E1.
        affine_p: probability of the affine map; rotate_deg: up to +-this rotation;
            zoom: up to +-this relative scale per axis; translate_px: up to +-this shift.
        bias_field_p: probability of a bias field; bias_field_coeff: largest polynomial
            coefficient of the log field (0.4: up to about 3:1 across the image).
        gamma_p: probability of a gamma change; gamma: (low, high) exponent range.
        histogram_shift_p: probability of a random histogram shift (10 control points).
        noise_p: probability of added noise; noise_std: its largest standard deviation
            (fraction of the image maximum).
    """

    flip_ro_p: float = 0.5
    flip_e1_p: float = 0.5
    affine_p: float = 0.5
    rotate_deg: float = 180.0
    zoom: float = 0.2
    translate_px: float = 4.0
    bias_field_p: float = 0.5
    bias_field_coeff: float = 0.4
    gamma_p: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    histogram_shift_p: float = 0.2
    noise_p: float = 0.3
    noise_std: float = 0.03


class AIFTrainingTransform:
    """The augmentation of :class:`AIFAugmentation`, applied to one sample dict.

    Example:
        >>> mask = torch.zeros(64, 48, dtype=torch.long)
        >>> sample = {"image": torch.rand(64, 64, 48), "mask": mask}
        >>> out = AIFTrainingTransform(AIFAugmentation())(sample)
        >>> out["image"].shape, out["mask"].dtype, float(out["image"].max())
        (torch.Size([64, 64, 48]), torch.int64, 1.0)
    """

    def __init__(self, settings: AIFAugmentation) -> None:
        s = settings
        keys = ("image", "mask")
        self.compose = Compose(
            [
                RandFlipd(keys, prob=s.flip_ro_p, spatial_axis=0),
                RandFlipd(keys, prob=s.flip_e1_p, spatial_axis=1),
                RandAffined(
                    keys,
                    prob=s.affine_p,
                    rotate_range=np.deg2rad(s.rotate_deg),
                    scale_range=(s.zoom, s.zoom),
                    translate_range=(s.translate_px, s.translate_px),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandBiasFieldd("image", prob=s.bias_field_p, coeff_range=(0, s.bias_field_coeff)),
                RandAdjustContrastd("image", prob=s.gamma_p, gamma=s.gamma),
                RandHistogramShiftd("image", prob=s.histogram_shift_p, num_control_points=10),
                RandGaussianNoised("image", prob=s.noise_p, std=s.noise_std),
            ]
        )
        self._seeded_pid: int | None = None

    def __call__(self, sample: dict) -> dict:
        if self._seeded_pid != os.getpid():  # once per process (main or DataLoader worker)
            self.compose.set_random_state(seed=torch.initial_seed() % 2**32)
            self._seeded_pid = os.getpid()
        mask = sample["mask"]
        out = self.compose({"image": sample["image"], "mask": mask[None]})
        image = _plain(out["image"]).float().clamp_(min=0)
        peak = image.max()
        image = image / peak if peak > 0 else image
        return dict(sample, image=image, mask=_plain(out["mask"])[0].to(mask.dtype))


def _plain(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A plain tensor (MONAI returns MetaTensors that carry their transform history)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
