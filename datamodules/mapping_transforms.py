"""Training augmentation of myocardium segmentation samples (SPEC B3): random translation,
mirroring and elastic deformation, applied to the image and its mask in one resampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RandomTranslateFlipElastic:
    """Move the image ``[1, S, S]`` and its mask ``[S, S]`` of a sample by the same random warp.

    The warp is one sampling grid: mirroring along rows and/or columns, a translation uniform in
    +-``translate_px`` per axis, and (with probability ``elastic_p``) a smooth elastic field:
    Gaussian displacements of SD ``elastic_px`` on an ``elastic_grid`` x ``elastic_grid`` lattice
    of control points, upsampled bicubically to S x S. The image is resampled bilinearly (zeros
    outside), the mask by nearest neighbour (label 0 outside). Other keys pass through. Uses
    torch's global RNG, which Lightning seeds per DataLoader worker.

    Args:
        translate_px: largest shift per axis, pixels of the S x S grid (0: none).
        flip_rows_p, flip_cols_p: probabilities of mirroring along rows (up-down) / columns.
        elastic_p: probability of the elastic deformation.
        elastic_grid: control points per axis of the elastic field (>= 2).
        elastic_px: SD of the control-point displacements, pixels.

    Example:
        >>> sample = {"image": torch.rand(1, 64, 64), "mask": torch.zeros(64, 64, dtype=torch.long)}
        >>> out = RandomTranslateFlipElastic(translate_px=4)(sample)
        >>> out["image"].shape, out["mask"].dtype
        (torch.Size([1, 64, 64]), torch.int64)
    """

    def __init__(
        self,
        translate_px: float = 16.0,
        flip_rows_p: float = 0.5,
        flip_cols_p: float = 0.5,
        elastic_p: float = 0.5,
        elastic_grid: int = 5,
        elastic_px: float = 4.0,
    ) -> None:
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {elastic_grid}")
        self.translate_px, self.elastic_p = translate_px, elastic_p
        self.flip_rows_p, self.flip_cols_p = flip_rows_p, flip_cols_p
        self.elastic_grid, self.elastic_px = elastic_grid, elastic_px

    def grid(self, size: int) -> torch.Tensor:
        """A random sampling grid [1, size, size, 2] (x: columns, y: rows; align_corners=False)."""
        axis = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 / size) - 1
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        if torch.rand(()) < self.flip_cols_p:
            x = -x
        if torch.rand(()) < self.flip_rows_p:
            y = -y
        grid = torch.stack([x, y], -1)[None]
        if self.translate_px > 0:
            grid = grid + (torch.rand(2) * 2 - 1) * (self.translate_px * 2 / size)
        if self.elastic_px > 0 and torch.rand(()) < self.elastic_p:
            coarse = torch.randn(1, 2, self.elastic_grid, self.elastic_grid) * self.elastic_px
            field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1) * (2 / size)
        return grid

    def __call__(self, sample: dict) -> dict:
        image, mask = sample["image"], sample["mask"]
        if image.shape[-1] != image.shape[-2]:
            raise ValueError(f"expected a square image [C, S, S], got {tuple(image.shape)}")
        grid = self.grid(image.shape[-1])
        moved = F.grid_sample(image[None].float(), grid, mode="bilinear", align_corners=False)
        moved_mask = F.grid_sample(
            mask[None, None].float(), grid, mode="nearest", align_corners=False
        )
        return dict(sample, image=moved[0].to(image.dtype), mask=moved_mask[0, 0].to(mask.dtype))
