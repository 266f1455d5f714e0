"""The myocardium U-Net's input grid (method.md §B1, "all images -> 256x256, bicubic"; method.md
§C10).

A native weighted image [H, W] (any in-plane size) is normalised per image (percentiles -> 0, 1,
clipped) and resized bicubically to size x size (256): stretched (``keep_aspect=False``, the
default, the paper's "all images -> 256x256") or first centred in a square of side max(H, W) by
zero padding (``keep_aspect=True``, so the ring keeps its shape). Masks go the same way with
nearest-neighbour sampling. The inverse maps a network output (probability or mask) [size, size]
back onto the native [H, W] pixels: resize to the padded native shape (bilinear for
probabilities, nearest for masks), then crop the padding. Training
(``datamodules.mapping_datamodule``) uses these functions; the inline runtime should too, so the
geometry and intensity scaling are identical on both sides.

Functions accept NumPy arrays or torch tensors of shape [..., H, W] and return the same type
(float32 for images and probabilities, the input dtype for masks). Torch and NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "NETWORK_SIZE",
    "ResizeGeometry",
    "image_to_network",
    "mask_from_network",
    "mask_to_network",
    "normalize_intensity",
    "probability_from_network",
]

NETWORK_SIZE = 256

Array = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class ResizeGeometry:
    """How native [height, width] pixels map onto the network's [size, size] grid.

    Attributes:
        height, width: native image size, pixels.
        size: network grid side, pixels (256).
        keep_aspect: pad to a centred square before resizing (True) or stretch (False).
    """

    height: int
    width: int
    size: int = NETWORK_SIZE
    keep_aspect: bool = False

    def __post_init__(self) -> None:
        if min(self.height, self.width, self.size) < 1:
            raise ValueError(f"sizes must be >= 1: {self}")

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(rows, cols) of the padded native image that is resized to size x size."""
        if not self.keep_aspect:
            return self.height, self.width
        side = max(self.height, self.width)
        return side, side

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding, pixels: the image is centred."""
        rows, cols = self.padded_shape
        top, left = (rows - self.height) // 2, (cols - self.width) // 2
        return top, rows - self.height - top, left, cols - self.width - left

    @property
    def scale(self) -> tuple[float, float]:
        """Network pixels per native pixel along (rows, cols)."""
        rows, cols = self.padded_shape
        return self.size / rows, self.size / cols


def _as_batch(x: Array) -> tuple[torch.Tensor, tuple[int, ...], bool]:
    """[..., H, W] -> float32 tensor [B, 1, H, W], the leading shape and whether x was NumPy."""
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_numpy else x
    if t.ndim < 2:
        raise ValueError(f"expected an array [..., H, W], got shape {tuple(t.shape)}")
    lead = tuple(t.shape[:-2])
    return t.reshape(-1, 1, *t.shape[-2:]).to(torch.float32), lead, is_numpy


def _restore(t: torch.Tensor, lead: tuple[int, ...], is_numpy: bool, dtype=None) -> Array:
    out = t.reshape(*lead, *t.shape[-2:])
    if dtype is not None:
        out = out.to(dtype)
    return out.numpy() if is_numpy else out


def _check_native(x: torch.Tensor, geometry: ResizeGeometry) -> None:
    if tuple(x.shape[-2:]) != (geometry.height, geometry.width):
        raise ValueError(
            f"expected native images [..., {geometry.height}, {geometry.width}], "
            f"got [..., {x.shape[-2]}, {x.shape[-1]}]"
        )


def _check_network(x: torch.Tensor, geometry: ResizeGeometry) -> None:
    if tuple(x.shape[-2:]) != (geometry.size, geometry.size):
        raise ValueError(
            f"expected network outputs [..., {geometry.size}, {geometry.size}], "
            f"got [..., {x.shape[-2]}, {x.shape[-1]}]"
        )


def _pad(x: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
    top, bottom, left, right = geometry.padding
    return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


def _crop(x: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
    top, _, left, _ = geometry.padding
    return x[..., top : top + geometry.height, left : left + geometry.width]


def normalize_intensity(
    image: Array, low_percentile: float = 1.0, high_percentile: float = 99.0, clip: bool = True
) -> Array:
    """Per-image robust min-max scaling: (x - p_low) / (p_high - p_low), float32.

    Percentiles are taken over each image's own pixels [H, W] (every leading index separately),
    so the weighted images of one slice, whatever their inversion or echo time, all span [0, 1].
    A constant image maps to zeros.

    Args:
        image: [..., H, W] magnitude image(s), any units.
        low_percentile, high_percentile: percentiles (0-100) mapped to 0 and 1.
        clip: clip the result to [0, 1] (False: keep values beyond).
    """
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got {low_percentile}, {high_percentile}")
    is_numpy = isinstance(image, np.ndarray)
    x = np.asarray(image if is_numpy else image.detach().cpu().numpy(), dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"expected an array [..., H, W], got shape {x.shape}")
    flat = x.reshape(*x.shape[:-2], -1)
    low, high = np.percentile(flat, [low_percentile, high_percentile], axis=-1, keepdims=True)
    span = high - low
    out = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
    out = (np.clip(out, 0, 1) if clip else out).reshape(x.shape)
    return out if is_numpy else torch.from_numpy(out).to(image.device)


def image_to_network(image: Array, geometry: ResizeGeometry) -> Array:
    """Native image(s) [..., H, W] -> float32 [..., size, size]: zero pad (keep_aspect), then
    bicubic resize (align_corners=False). Normalise first (:func:`normalize_intensity`) so the
    zero padding is the background level."""
    t, lead, is_numpy = _as_batch(image)
    _check_native(t, geometry)
    out = F.interpolate(
        _pad(t, geometry), size=(geometry.size, geometry.size), mode="bicubic", align_corners=False
    )
    return _restore(out, lead, is_numpy)


def mask_to_network(mask: Array, geometry: ResizeGeometry) -> Array:
    """Native label mask(s) [..., H, W] -> [..., size, size], nearest neighbour (pixel centres),
    same dtype. Padding is label 0."""
    t, lead, is_numpy = _as_batch(mask)
    _check_native(t, geometry)
    out = F.interpolate(_pad(t, geometry), size=(geometry.size,) * 2, mode="nearest-exact")
    return _restore(out, lead, is_numpy, dtype=_torch_dtype(mask))


def probability_from_network(probability: Array, geometry: ResizeGeometry) -> Array:
    """Network probabilities (or any continuous map) [..., size, size] -> float32 [..., H, W]:
    bilinear resize to the padded native square, then crop the padding. Threshold afterwards
    (e.g. >= 0.5) for a native-resolution mask; this is smoother than :func:`mask_from_network`."""
    t, lead, is_numpy = _as_batch(probability)
    _check_network(t, geometry)
    out = F.interpolate(t, size=geometry.padded_shape, mode="bilinear", align_corners=False)
    return _restore(_crop(out, geometry), lead, is_numpy)


def mask_from_network(mask: Array, geometry: ResizeGeometry) -> Array:
    """Label mask(s) on the network grid [..., size, size] -> [..., H, W], nearest neighbour
    (pixel centres), same dtype. Exact inverse of :func:`mask_to_network` when the padded native
    side is <= size (upsampling), close otherwise."""
    t, lead, is_numpy = _as_batch(mask)
    _check_network(t, geometry)
    out = F.interpolate(t, size=geometry.padded_shape, mode="nearest-exact")
    return _restore(_crop(out, geometry), lead, is_numpy, dtype=_torch_dtype(mask))


def _torch_dtype(x: Array) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, x.dtype)).dtype if isinstance(x, np.ndarray) else x.dtype
