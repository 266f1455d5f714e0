"""Training augmentation of myocardium segmentation samples (docs/method.md §B3) and the acquisition
artefacts of synthetic short-axis images.

* :class:`RandomTranslateFlipElastic`: random translation, mirroring, rotation, zoom and elastic
  deformation of an image and its mask (or of a label map alone) in one resampling.
* :class:`AcquisitionArtefacts`: what a scanner does to a clean tissue image
  (:mod:`datamodules.synthetic.tissue_contrast`): bSSFP off-resonance banding, the point-spread
  blur and a random acquisition matrix (downsample), periodic-motion ghosting in k-space, Rician
  noise, interpolation back to the grid, a smooth receive-coil bias field and a gamma change.
  The bias field and gamma are MONAI transforms (``RandBiasField``, ``RandAdjustContrast``),
  seeded per image from the image's own random stream, so a seeded image is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import RandAdjustContrast, RandBiasField


def gaussian_blur(image: torch.Tensor, sigma_rc: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur of [..., H, W] with SD (rows, cols) in pixels (reflect padding).

    Example:
        >>> gaussian_blur(torch.ones(8, 8), (1.0, 2.0)).allclose(torch.ones(8, 8))
        True
    """
    lead, (height, width) = image.shape[:-2], image.shape[-2:]
    x = image.reshape(-1, 1, height, width).float()
    for axis, sigma in enumerate(sigma_rc):
        if sigma <= 0.05:
            continue
        radius = min(int(3 * sigma) + 1, (height, width)[axis] - 1)
        taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(taps**2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, -1, 1) if axis == 0 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, radius, radius) if axis == 0 else (radius, radius, 0, 0)
        x = F.conv2d(F.pad(x, pad, mode="reflect"), k)
    return x.reshape(*lead, height, width)


class RandomTranslateFlipElastic:
    """Move the image ``[1, S, S]`` and its mask ``[S, S]`` of a sample by the same random warp.

    The warp is one sampling grid: mirroring along rows and/or columns, a rotation uniform in
    +-``rotate_deg`` and a zoom uniform in 1 +- ``zoom`` (about the centre), a translation
    uniform in +-``translate_px`` per axis, and (with probability ``elastic_p``) a smooth
    elastic field:
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
        rotate_deg: largest rotation, degrees (0: none).
        zoom: largest relative zoom (0: none).

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
        rotate_deg: float = 0.0,
        zoom: float = 0.0,
    ) -> None:
        if elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {elastic_grid}")
        self.rotate_deg, self.zoom = rotate_deg, zoom
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
        if self.rotate_deg > 0 or self.zoom > 0:
            angle = (torch.rand(()) * 2 - 1) * np.deg2rad(self.rotate_deg)
            scale = 1 + (torch.rand(()) * 2 - 1) * self.zoom
            co, si = torch.cos(angle) / scale, torch.sin(angle) / scale
            x, y = co * x - si * y, si * x + co * y
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

    def warp_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """A label map [S, S] (integer) moved by a random warp (nearest neighbour, 0 outside)."""
        grid = self.grid(labels.shape[-1])
        moved = F.grid_sample(labels[None, None].float(), grid, mode="nearest", align_corners=False)
        return moved[0, 0].to(labels.dtype)


@dataclass(frozen=True)
class ArtefactSettings:
    """Probabilities and ranges of the acquisition artefacts (``data.synthesis.artefacts``).

    Attributes:
        banding_p: probability of bSSFP banding; banding_cycles: (low, high) off-resonance
            phase cycles across the field; banding_width_rad: band half-width (rad);
            banding_depth: signal loss at the band centre (fraction).
        partial_volume_px: (low, high) SD of the point-spread blur at full resolution, px.
        resolution_p: probability of a coarser acquisition matrix; max_downsample: largest
            grid / matrix ratio per axis (drawn independently for rows and columns).
        ghosting_p: probability of periodic-motion ghosts; ghost_amplitude: (low, high)
            ghost intensity (fraction of the image); ghost_period: (low, high) k-space line
            period (ghosts at multiples of FOV / period along the phase-encoding axis).
        snr: (low, high) log-uniform myocardium signal / noise SD (Rician noise).
        bias_field_p, bias_field_coeff: probability and largest polynomial coefficient of the
            MONAI log bias field (0.5: up to about 3:1 across the image).
        gamma_p, gamma: probability and (low, high) exponent of the MONAI gamma change.
    """

    banding_p: float = 0.15
    banding_cycles: tuple[float, float] = (0.5, 3.0)
    banding_width_rad: tuple[float, float] = (0.1, 0.4)
    banding_depth: tuple[float, float] = (0.5, 1.0)
    partial_volume_px: tuple[float, float] = (0.3, 1.0)
    resolution_p: float = 0.7
    max_downsample: float = 2.5
    ghosting_p: float = 0.2
    ghost_amplitude: tuple[float, float] = (0.02, 0.15)
    ghost_period: tuple[int, int] = (2, 4)
    snr: tuple[float, float] = (6.0, 100.0)
    bias_field_p: float = 0.8
    bias_field_coeff: float = 0.5
    gamma_p: float = 0.5
    gamma: tuple[float, float] = (0.6, 1.6)


class AcquisitionArtefacts:
    """The artefacts of :class:`ArtefactSettings` applied to one clean image (module docstring).

    Example:
        >>> clean = torch.zeros(64, 64); clean[16:48, 16:48] = 1.0
        >>> out = AcquisitionArtefacts(ArtefactSettings())(clean, 1.0, np.random.default_rng(0))
        >>> out.shape, out.dtype, float(out.min()) >= 0
        (torch.Size([64, 64]), torch.float32, True)
    """

    def __init__(self, settings: ArtefactSettings) -> None:
        s = self.settings = settings
        self.bias = RandBiasField(prob=s.bias_field_p, coeff_range=(0.0, s.bias_field_coeff))
        self.gamma = RandAdjustContrast(prob=s.gamma_p, gamma=s.gamma)

    def _banding(self, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        s = self.settings
        height, width = shape
        rows = torch.linspace(-0.5, 0.5, height)[:, None]
        cols = torch.linspace(-0.5, 0.5, width)[None, :]
        direction = rng.uniform(0, 2 * np.pi)
        cycles = rng.uniform(*s.banding_cycles)
        curvature = rng.normal(0, 1.0)
        phase = (
            2
            * np.pi
            * (
                rng.uniform(0, 1)
                + cycles * (np.cos(direction) * cols + np.sin(direction) * rows)
                + curvature * (rows**2 + cols**2)
            )
        )
        off = torch.remainder(phase, 2 * np.pi) - np.pi  # 0 where the phase is pi: a band
        width_rad = rng.uniform(*s.banding_width_rad)
        return 1 - rng.uniform(*s.banding_depth) * torch.exp(-(off**2) / (2 * width_rad**2))

    def _ghosts(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Every period-th phase-encoding line scaled by (1 + a n e^{i phi}): ghosts of amplitude
        a at multiples of FOV / n along that axis."""
        s = self.settings
        axis = int(rng.integers(0, 2))
        period = int(rng.integers(s.ghost_period[0], s.ghost_period[1] + 1))
        amp = rng.uniform(*s.ghost_amplitude) * period * np.exp(1j * rng.uniform(0, 2 * np.pi))
        k = torch.fft.fft2(image.to(torch.complex64))
        lines = torch.arange(image.shape[axis]) % period == 0
        factor = torch.where(lines, torch.tensor(1 + amp, dtype=torch.complex64), 1)
        k = k * (factor[:, None] if axis == 0 else factor[None, :])
        return torch.fft.ifft2(k).abs()

    def __call__(
        self, image: torch.Tensor | np.ndarray, myo_level: float, rng: np.random.Generator
    ) -> torch.Tensor:
        """float32 [H, W], scaled to [0, 1], of a clean image [H, W] whose myocardium has mean
        intensity ``myo_level`` (the noise reference); ``rng`` drives every draw."""
        s = self.settings
        x = torch.as_tensor(image, dtype=torch.float32)
        shape = tuple(x.shape)
        if rng.random() < s.banding_p:
            x = x * self._banding(shape, rng)
        factors = (1.0, 1.0)
        if rng.random() < s.resolution_p:
            factors = tuple(float(rng.uniform(1.0, s.max_downsample)) for _ in range(2))
        pv = rng.uniform(*s.partial_volume_px)
        x = gaussian_blur(x, tuple(float(np.hypot(pv, 0.45 * (f - 1))) for f in factors))
        low = tuple(max(8, round(n / f)) for n, f in zip(shape, factors, strict=True))
        if low != shape:
            x = F.interpolate(x[None, None], size=low, mode="area")[0, 0]
        if rng.random() < s.ghosting_p:
            x = self._ghosts(x, rng)
        reference = max(myo_level, 0.2 * float(torch.quantile(x.flatten()[::7], 0.9)), 1e-3)
        sigma = reference / float(np.exp(rng.uniform(*np.log(s.snr))))
        noise = torch.from_numpy(rng.standard_normal((2, *low), dtype=np.float32)) * sigma
        x = torch.sqrt((x + noise[0]) ** 2 + noise[1] ** 2)
        if low != shape:
            x = F.interpolate(x[None, None], size=shape, mode="bicubic", align_corners=False)[0, 0]
            x = x.clamp_min(0)
        seed = int(rng.integers(2**31))
        self.bias.set_random_state(seed=seed)
        self.gamma.set_random_state(seed=seed + 1)
        x = torch.as_tensor(np.asarray(self.bias(x[None].numpy())))[0]
        x = x / x.max().clamp_min(1e-6)
        x = torch.as_tensor(np.asarray(self.gamma(x[None].numpy())))[0]
        return x.float().clamp_(0, 1)
