"""Stage 1 of the mapping pipeline: a myocardium segmentation artifact run on native-size images
(:class:`MyocardiumSegmenter`).
"""

from __future__ import annotations

import numpy as np
import torch

from deployment.artifact import MYOCARDIUM_TASK, Artifact, ArtifactError
from quantification.image_resize import (
    NETWORK_SIZE,
    ResizeGeometry,
    image_to_network,
    normalize_intensity,
    probability_from_network,
)

__all__ = ["MYOCARDIUM_TASK", "MyocardiumSegmenter"]


class MyocardiumSegmenter:
    """Runs a myocardium segmentation artifact on native-size images.

    The artifact (task ``myocardium_segmentation``) maps float32 ``[B, 1, S, S]`` (S = 256) to
    probabilities ``[B, 2, S, S]`` (softmax over ``metadata["classes"]``, the ``"myocardium"``
    channel is used) or ``[B, 1, S, S]`` (sigmoid P(myocardium)). The images are prepared exactly
    as in training, by :mod:`quantification.image_resize` with ``metadata["preprocessing"]``
    (written from ``MappingDataModule.preprocessing``): per-image percentile scaling
    (``percentiles``, ``clip``), zero padding to a square if ``keep_aspect``, bicubic resize to
    ``size``; the probabilities go back to the native pixels bilinearly (padding cropped) and are
    thresholded at ``threshold``.
    """

    def __init__(
        self,
        artifact: Artifact,
        threshold: float = 0.5,
        batch_size: int = 16,
        fuse_slice: bool = False,
    ) -> None:
        meta = artifact.metadata
        if meta["task"] != MYOCARDIUM_TASK:
            raise ArtifactError(
                f"{artifact.path}: task {meta['task']!r}, expected {MYOCARDIUM_TASK!r}"
            )
        prep = dict(meta.get("preprocessing") or {})
        if prep.get("normalisation", "percentile") != "percentile":
            raise ArtifactError(
                f"{artifact.path}: preprocessing normalisation {prep.get('normalisation')!r}; this "
                "runtime implements 'percentile' (quantification.image_resize.normalize_intensity)"
            )
        if prep.get("interpolation", "bicubic") != "bicubic":
            raise ArtifactError(
                f"{artifact.path}: preprocessing interpolation {prep.get('interpolation')!r}; "
                "this runtime implements 'bicubic'"
            )
        size = prep.get("size", (meta.get("input_shape") or [None, 1, NETWORK_SIZE])[-1:] * 2)
        if len(size) != 2 or int(size[0]) != int(size[1]):
            raise ArtifactError(f"{artifact.path}: preprocessing size {size}, expected [S, S]")
        classes = list(meta.get("classes") or [])
        self.channel = classes.index("myocardium") if "myocardium" in classes else -1
        self.artifact = artifact
        self.threshold = threshold
        self.batch_size = batch_size
        self.fuse_slice = fuse_slice
        self.size = int(size[0])
        self.percentiles = tuple(float(p) for p in prep.get("percentiles", (1.0, 99.0)))
        self.clip = bool(prep.get("clip", True))
        self.keep_aspect = bool(prep.get("keep_aspect", False))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, H, W] P(myocardium) of native-size images [N, H, W] of one slice; with
        ``fuse_slice`` the mean over the N images, the same for each."""
        images = np.asarray(images, dtype=np.float32)
        geometry = ResizeGeometry(*images.shape[-2:], size=self.size, keep_aspect=self.keep_aspect)
        x = normalize_intensity(images, *self.percentiles, clip=self.clip)
        x = torch.from_numpy(image_to_network(x, geometry))[:, None]
        out = []
        for start in range(0, x.shape[0], self.batch_size):
            with torch.inference_mode():
                prob = self.artifact.module(x[start : start + self.batch_size].contiguous())
            if prob.ndim != 4 or prob.shape[1] not in (1, 2):
                raise ArtifactError(
                    f"{self.artifact.path}: output shape {tuple(prob.shape)}, expected "
                    f"[B, 1 or 2, {self.size}, {self.size}]"
                )
            channel = 0 if prob.shape[1] == 1 else self.channel
            out.append(prob[:, channel].float())
        probabilities = probability_from_network(torch.cat(out).numpy(), geometry)
        if self.fuse_slice:
            fused = probabilities.mean(axis=0, dtype=np.float32)
            probabilities = np.broadcast_to(fused, probabilities.shape).copy()
        return probabilities

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """bool [N, H, W] myocardium masks of native-size images [N, H, W]."""
        return self.probabilities(images) > self.threshold
