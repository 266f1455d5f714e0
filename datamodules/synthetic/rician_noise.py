"""Rician noise of magnitude MR images, shared by the AIF and mapping phantoms."""

from __future__ import annotations

import numpy as np


def add_rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """``|image + sigma (n1 + i n2)|`` with n1, n2 standard normal (float32, same shape).

    The Gaussian pair comes from one Box-Muller draw (faster than two ``rng.normal`` calls); the
    draws depend only on ``rng`` and the shape, so a seeded phantom is reproducible.

    Example:
        >>> noisy = add_rician_noise(np.random.default_rng(0), np.zeros((200, 200)), 2.0)
        >>> round(float(noisy.mean() / (2.0 * np.sqrt(np.pi / 2))), 1)  # Rayleigh mean in air
        1.0
    """
    uniform = rng.random((2, *image.shape), dtype=np.float32)
    radius = np.float32(sigma) * np.sqrt(-2 * np.log1p(-uniform[0]))
    angle = np.float32(2 * np.pi) * uniform[1]
    real, imag = image + radius * np.cos(angle), radius * np.sin(angle)
    return np.sqrt(real * real + imag * imag)
