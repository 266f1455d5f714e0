"""Contrast-agnostic myocardium training data: synthetic short-axis images drawn on the fly
(``data=short_axis_synthesis``; SynthSeg style).

A pool of procedural short-axis label maps (:mod:`datamodules.synthetic.short_axis_anatomy`,
cached once under ``data_dir``) is the anatomy. Every training sample is a fresh draw: a random
label map of the pool, moved by a random warp (mirroring, rotation, zoom, translation, elastic
field: :class:`datamodules.mapping_transforms.RandomTranslateFlipElastic` on the labels), given
tissue intensities (random per tissue, or a physical native T1 / post-contrast T1 / T2-prep image:
:mod:`datamodules.synthetic.tissue_contrast`), then degraded by a scanner's artefacts
(:class:`datamodules.mapping_transforms.AcquisitionArtefacts`) and scaled like every network
input (:func:`quantification.image_resize.normalize_intensity`). Training draws are square
patches (``crop_size``, cut from the warped label map before the image is rendered, so both the
synthesis and the step are cheaper; the network is fully convolutional and is validated and
exported on the whole 256 x 256 grid). Validation and test images come from label pools of other
seeds and are seeded per index, so they are the same in every run.

Batches are those of :class:`datamodules.mapping_datamodule.MappingDataModule`: ``image`` float32
[B, 1, S, S], ``mask`` int64 [B, S, S] (1 = myocardium), ``case_id`` (the label map),
``slice_id`` (the contrast: ``random`` or a readout name), ``image_index``, ``time_ms`` (0),
``native_shape``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.loaders import SplitDataModule
from datamodules.mapping_datamodule import network_preprocessing
from datamodules.mapping_transforms import (
    AcquisitionArtefacts,
    ArtefactSettings,
    RandomTranslateFlipElastic,
)
from datamodules.synthetic.short_axis_anatomy import (
    MYOCARDIUM,
    AnatomyRanges,
    label_pool_path,
    read_label_pool,
    write_label_pool,
)
from datamodules.synthetic.tissue_contrast import ContrastSettings, tissue_image
from formats.atomic_file import atomic_write
from quantification.image_resize import NETWORK_SIZE, normalize_intensity

log = logging.getLogger(__name__)


class SyntheticShortAxisDataset(Dataset):
    """Synthetic images of a label-map pool (module docstring).

    Args:
        labels: uint8 [M, S, S] label maps.
        n_items: samples per pass.
        contrast, artefacts: the image model.
        seed: ``None`` for training (every item a fresh random draw from torch's RNG, which
            Lightning seeds per process; random map, random warp); an int for fixed images (item
            i: map i mod M, no warp, contrast and artefacts seeded by (seed, i)).
        warp: label-map warp of training items (None: none).
        crop_size: side of a random square patch of training items (None: the whole grid);
            with probability ``crop_lv_p`` the patch contains the LV centre.
        percentiles, clip: the network input scaling.
    """

    def __init__(
        self,
        labels: np.ndarray,
        n_items: int,
        contrast: ContrastSettings,
        artefacts: ArtefactSettings,
        seed: int | None = None,
        warp: RandomTranslateFlipElastic | None = None,
        crop_size: int | None = None,
        crop_lv_p: float = 0.9,
        percentiles: tuple[float, float] = (1.0, 99.0),
        clip: bool = True,
    ) -> None:
        self.labels = labels
        self.n_items = n_items
        self.contrast, self.artefacts = contrast, AcquisitionArtefacts(artefacts)
        self.seed, self.warp = seed, warp
        self.crop_size, self.crop_lv_p = crop_size, crop_lv_p
        self.percentiles, self.clip = percentiles, clip

    def __len__(self) -> int:
        return self.n_items

    def _crop(self, labels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """A random ``crop_size`` square of a label map [S, S] (the whole map without crop)."""
        size, side = self.crop_size, labels.shape[-1]
        if size is None or size >= side:
            return labels
        rows, cols = torch.nonzero(labels == MYOCARDIUM, as_tuple=True)
        if rows.numel() and rng.random() < self.crop_lv_p:
            # the LV centre lands in the middle 70 % of the patch
            centre = (rows.float().mean().item(), cols.float().mean().item())
            low = [int(np.clip(c - 0.85 * size, 0, side - size)) for c in centre]
            high = [int(np.clip(c - 0.15 * size, 0, side - size)) for c in centre]
            top, left = (
                int(rng.integers(a, max(a, b) + 1)) for a, b in zip(low, high, strict=True)
            )
        else:
            top, left = (int(rng.integers(0, side - size + 1)) for _ in range(2))
        return labels[top : top + size, left : left + size]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.seed is None:
            seed = int(torch.randint(2**62, ()))
            map_index = seed % len(self.labels)
        else:
            seed = int(np.random.SeedSequence(self.seed, spawn_key=(index,)).generate_state(1)[0])
            map_index = index % len(self.labels)
        rng = np.random.default_rng(seed)
        labels = torch.from_numpy(self.labels[map_index].astype(np.int64))
        if self.warp is not None:
            labels = self.warp.warp_labels(labels)
        if self.seed is None:  # training: the patch is drawn before the image (cheaper)
            labels = self._crop(labels, rng)
        clean, myo_level, kind = tissue_image(labels.numpy().astype(np.uint8), rng, self.contrast)
        image = self.artefacts(clean, myo_level, rng)
        image = normalize_intensity(image, *self.percentiles, clip=self.clip)[None]
        mask = (labels == MYOCARDIUM).long()
        return {
            "image": image.contiguous(),
            "mask": mask.contiguous(),
            "case_id": f"map_{map_index:05d}",
            "slice_id": kind,
            "image_index": index,
            "time_ms": 0.0,
            "native_shape": torch.tensor(self.labels.shape[1:], dtype=torch.int64),
        }


class ShortAxisSynthesisDataModule(SplitDataModule):
    """Train / val / test loaders of synthetic short-axis images (module docstring).

    Args:
        data_dir: where the label pools are cached.
        pool_size: label maps of the training pool (each seen under many warps and contrasts).
        pool_seed: seed of the training pool; validation uses ``pool_seed + 1``, test
            ``pool_seed + 2`` (unseen anatomy).
        val_images, test_images: fixed held-out images (one per held-out label map).
        samples_per_epoch: training samples per epoch (fresh draws).
        batch_size, num_workers: loaders.
        image_size: grid side (256, docs/method.md §B1).
        crop_size: training patch side (None: whole grid).
        crop_lv_p: probability that a training patch contains the LV centre.
        intensity_percentiles, intensity_clip: network input scaling (as the runtime's).
        anatomy: keyword arguments of :class:`AnatomyRanges` (lists become tuples).
        contrast: keyword arguments of :class:`ContrastSettings`.
        artefacts: keyword arguments of :class:`ArtefactSettings`.
        warp: keyword arguments of :class:`RandomTranslateFlipElastic` (label-map warp).
        split_out: where the description of the data sets is written (JSON).
    """

    def __init__(
        self,
        data_dir: str = "data",
        pool_size: int = 1000,
        pool_seed: int = 0,
        val_images: int = 64,
        test_images: int = 128,
        samples_per_epoch: int = 1600,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: int = NETWORK_SIZE,
        crop_size: int | None = None,
        crop_lv_p: float = 0.7,
        intensity_percentiles: tuple[float, float] | list[float] = (1.0, 99.0),
        intensity_clip: bool = True,
        anatomy: dict | None = None,
        contrast: dict | None = None,
        artefacts: dict | None = None,
        warp: dict | None = None,
        split_out: str | None = "split.json",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.anatomy = AnatomyRanges(**_tuples(anatomy))
        self.contrast = ContrastSettings(**_tuples(contrast))
        self.artefacts = ArtefactSettings(**_tuples(artefacts))
        self.warp = RandomTranslateFlipElastic(**(warp or {}))
        self.datasets: dict[str, SyntheticShortAxisDataset] = {}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The image -> network-input recipe for the exported artifact (as
        ``MappingDataModule.preprocessing``: per-image percentile scaling, bicubic resize)."""
        hp = self.hparams
        return network_preprocessing(hp.image_size, hp.intensity_percentiles, hp.intensity_clip,
                                     keep_aspect=False)  # fmt: skip

    def _pools(self) -> dict[str, tuple[Path, int, int]]:
        hp = self.hparams
        sizes = {"train": hp.pool_size, "val": hp.val_images, "test": hp.test_images}
        return {
            name: (
                label_pool_path(hp.data_dir, n, hp.pool_seed + i, hp.image_size),
                n,
                hp.pool_seed + i,
            )
            for i, (name, n) in enumerate(sizes.items())
        }

    def prepare_data(self) -> None:
        for name, (path, n, seed) in self._pools().items():
            try:
                read_label_pool(path)
            except (OSError, ValueError):
                log.info("Writing %d short-axis label maps (%s) to %s", n, name, path)
                write_label_pool(path, n, seed, self.hparams.image_size, self.anatomy)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        common = {
            "contrast": self.contrast,
            "artefacts": self.artefacts,
            "percentiles": tuple(hp.intensity_percentiles),
            "clip": hp.intensity_clip,
        }
        pools = self._pools()
        self.datasets = {
            "train": SyntheticShortAxisDataset(
                read_label_pool(pools["train"][0]),
                hp.samples_per_epoch,
                warp=self.warp,
                crop_size=hp.crop_size,
                crop_lv_p=hp.crop_lv_p,
                **common,
            ),  # fmt: skip
            "val": SyntheticShortAxisDataset(
                read_label_pool(pools["val"][0]), hp.val_images, seed=pools["val"][2], **common
            ),
            "test": SyntheticShortAxisDataset(
                read_label_pool(pools["test"][0]), hp.test_images, seed=pools["test"][2], **common
            ),
        }
        if hp.split_out:
            with atomic_write(hp.split_out) as tmp:
                tmp.write_text(json.dumps({n: str(p) for n, (p, _, _) in pools.items()}, indent=1))
        log.info(
            "Synthetic short-axis data: pools %s", {n: str(p) for n, (p, _, _) in pools.items()}
        )


def _tuples(settings: dict | None) -> dict:
    """Config dict with lists turned into tuples (the settings dataclasses are frozen)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (settings or {}).items()}
