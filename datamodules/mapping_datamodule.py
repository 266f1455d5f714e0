"""LightningDataModule for myocardium segmentation in mapping images (``data=t1_native|t2|
post_contrast``, docs/method.md §B1/B3).

Every weighted image of every slice is a sample: image -> myocardium mask. With ``path`` set it
reads that HDF5 file (the mapping contract of docs/data_contracts.md, checked by
:mod:`formats.mapping_contract`). With ``path: null`` it generates the synthetic phantom files
(seeded; the three modalities at once, same patients) and caches them under ``data_dir``, named
by their settings. Splits are by patient; the split used is written to ``split_out``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.lazy_hdf5 import LazyHDF5Dataset
from datamodules.loaders import SplitDataModule
from datamodules.mapping_transforms import RandomTranslateFlipElastic
from datamodules.patient_split import SUBSETS, read_split, split_by_patient, write_split
from datamodules.synthetic.mapping_phantom import (
    mapping_phantom_paths,
    mapping_phantoms_current,
    write_mapping_phantoms,
)
from formats.mapping_contract import (
    MODALITIES,
    MappingSliceInfo,
    open_mapping_file,
    read_mapping_image,
    scan_mapping_file,
)
from quantification.image_resize import (
    NETWORK_SIZE,
    ResizeGeometry,
    image_to_network,
    mask_to_network,
    normalize_intensity,
)

log = logging.getLogger(__name__)


def network_preprocessing(
    image_size: int, percentiles, clip: bool, keep_aspect: bool
) -> dict[str, Any]:
    """The artifact metadata's ``preprocessing`` of a myocardium network (what
    ``exports.mapping_pipeline.MyocardiumSegmenter`` applies): per-image percentile scaling,
    optional zero padding to a square, bicubic resize to ``image_size``."""
    low, high = (float(p) for p in percentiles)
    return {
        "size": [int(image_size), int(image_size)],
        "interpolation": "bicubic",
        "mask_interpolation": "nearest-exact",
        "normalisation": "percentile",
        "percentiles": [low, high],
        "clip": bool(clip),
        "keep_aspect": bool(keep_aspect),
        "order": "normalise native image, zero pad to square (keep_aspect), resize",
        "implementation": "quantification.image_resize",
    }


class MappingImageDataset(LazyHDF5Dataset):
    """Weighted images of a mapping file as network samples, one image per item.

    A sample is ``{"image": float32 [1, S, S], "mask": int64 [S, S], "case_id": str,
    "slice_id": str, "image_index": int, "time_ms": float, "native_shape": int64 [2],
    "pixel_spacing_mm": float32 [2]}`` with
    S = ``image_size``: the image normalised per image (:func:`normalize_intensity`), zero padded
    to a square if ``keep_aspect`` (else stretched) and resized bicubically; the mask resized by
    nearest neighbour (1 = myocardium); ``pixel_spacing_mm`` is the (row, column) pixel size of
    the network grid, from the slice attr ``pixel_spacing_mm`` and the resize (NaN when the file
    does not give it). ``transform(sample) -> sample`` is applied last (training augmentation).

    The HDF5 file is opened lazily in each process (reopened when the pid changes), never in
    ``__init__``, so ``num_workers > 0`` works; the handle is dropped when pickled.

    Args:
        path: the mapping file.
        slices: slice infos from :func:`scan_mapping_file` (with masks).
        items: (index into ``slices``, image index) per sample.
        image_size, keep_aspect, percentiles, clip: network grid and intensity scaling.
        transform: optional sample transform.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        slices: list[MappingSliceInfo],
        items: list[tuple[int, int]],
        image_size: int = NETWORK_SIZE,
        keep_aspect: bool = False,
        percentiles: tuple[float, float] = (1.0, 99.0),
        clip: bool = True,
        transform: Any = None,
    ) -> None:
        super().__init__(path, open_mapping_file)
        self.slices = list(slices)
        self.items = list(items)
        self.image_size, self.keep_aspect = image_size, keep_aspect
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.clip = clip
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def geometry(self, info: MappingSliceInfo) -> ResizeGeometry:
        """The native <-> network mapping of one slice's images."""
        return ResizeGeometry(*info.shape, size=self.image_size, keep_aspect=self.keep_aspect)

    def __getitem__(self, index: int) -> dict:
        slice_index, image_index = self.items[index]
        info = self.slices[slice_index]
        image, mask = read_mapping_image(self.file(), info, image_index, self.path)
        if mask is None:  # scan with require_masks=True prevents this
            raise ValueError(f"{self.path}: {info.case_id}/{info.slice_id} has no masks")
        geometry = self.geometry(info)
        image = normalize_intensity(torch.from_numpy(image), *self.percentiles, clip=self.clip)
        sample: dict[str, Any] = {
            "image": image_to_network(image, geometry)[None],
            "mask": mask_to_network(torch.from_numpy(mask), geometry).long(),
            "case_id": info.case_id,
            "slice_id": info.slice_id,
            "image_index": image_index,
            "time_ms": float(info.times_ms[image_index]),
            "native_shape": torch.tensor(info.shape, dtype=torch.int64),
            "pixel_spacing_mm": network_pixel_spacing_mm(info, geometry),
        }
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def network_pixel_spacing_mm(info: MappingSliceInfo, geometry: ResizeGeometry) -> torch.Tensor:
    """(row, column) pixel size of the network grid in mm, float32 [2]; NaN when the slice has
    no ``pixel_spacing_mm`` attr (synthetic phantoms)."""
    native = info.attrs.get("pixel_spacing_mm")
    if native is None:
        return torch.full((2,), float("nan"))
    scale = torch.tensor(geometry.scale, dtype=torch.float64)
    return (torch.as_tensor(native, dtype=torch.float64).reshape(2) / scale).float()


class MappingDataModule(SplitDataModule):
    """Train/val/test loaders of myocardium segmentation samples of one mapping modality.

    Batches (default collate) are dicts with exactly these keys:

    - ``"image"``: float32 [B, 1, S, S], S = ``image_size`` (256): one weighted image, scaled per
      image so its 1st / 99th intensity percentiles map to 0 / 1 (clipped to [0, 1] by default),
      stretched to S x S (or zero padded to a centred square first, ``keep_aspect``) with bicubic
      interpolation.
    - ``"mask"``: int64 [B, S, S], 1 = myocardium, 0 = else (nearest-neighbour resize).
    - ``"case_id"``, ``"slice_id"``: lists of B str; ``"image_index"``: int64 [B], the image's
      index in its slice; ``"time_ms"``: float64 [B], its TI (T1) or T2-prep TE (T2) in ms;
      ``"native_shape"``: int64 [B, 2], (H, W) of the native image (for
      :class:`quantification.image_resize.ResizeGeometry` and the inverse resize);
      ``"pixel_spacing_mm"``: float32 [B, 2], the network grid's (row, column) pixel size (NaN
      where the file gives none), for boundary distances in mm.

    Training samples are augmented (random translation, mirroring, elastic deformation:
    :class:`RandomTranslateFlipElastic`); validation and test samples are not.

    Args:
        modality: ``t1_native`` | ``t2`` | ``post_contrast``; every slice must have it.
        path: HDF5 file in the mapping contract, or ``None`` for the synthetic phantoms.
        data_dir: where the synthetic phantom files are cached.
        n_patients, slices_per_patient, phantom_seed: synthetic set size and seed.
        sequence: T1 sequence of the synthetic native and post-contrast images (``stone``,
            ``molli``, ``shmolli``, ``sasha``; :mod:`datamodules.synthetic.mapping_phantom`).
        val_fraction, test_fraction: shares of patients in val and test.
        split_seed: seed of the patient split (and of the order in which ``max_train_images``
            keeps training patients).
        split_file: reuse this split (JSON from an earlier run) instead of drawing one.
        split_out: where the split actually used is written (the run dir); with
            ``max_train_images`` its train list holds only the cases actually used.
        max_train_images: cap on training images (None: all): whole slices of training patients
            in a seeded random patient order until the cap (e.g. 945 = 21 patients x 5 slices x
            9 T2 images, docs/method.md §B1); the last slice may be cut.
        batch_size: training batch size (evaluation uses the same).
        num_workers: DataLoader worker processes (each opens the HDF5 file itself).
        image_size: network grid side, pixels.
        keep_aspect: pad to a square before resizing (True) or stretch (False).
        intensity_percentiles: (low, high) percentiles mapped to 0 and 1 per image.
        intensity_clip: clip the scaled image to [0, 1].
        augmentation: keyword arguments of :class:`RandomTranslateFlipElastic` (None: defaults).
    """

    def __init__(
        self,
        modality: str,
        path: str | None = None,
        data_dir: str = "data",
        n_patients: int = 24,
        slices_per_patient: int = 5,
        phantom_seed: int = 0,
        sequence: str = "stone",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        split_file: str | None = None,
        split_out: str | None = "split.json",
        max_train_images: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        image_size: int = NETWORK_SIZE,
        keep_aspect: bool = False,
        intensity_percentiles: tuple[float, float] | list[float] = (1.0, 99.0),
        intensity_clip: bool = True,
        augmentation: dict | None = None,
    ) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"data.modality must be one of {MODALITIES}, got {modality!r}")
        if max_train_images is not None and max_train_images < 1:
            raise ValueError(f"data.max_train_images must be >= 1 or null, got {max_train_images}")
        self.save_hyperparameters(logger=False)
        self.augmentation = RandomTranslateFlipElastic(**(augmentation or {}))
        self.datasets: dict[str, MappingImageDataset] = {}
        self.split: dict[str, list[str]] = {}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The image -> network-input recipe, for the exported artifact's metadata (read by the
        export callback): per-image percentile scaling (clipped to [0, 1] if ``clip``), zero
        padding to a centred square when ``keep_aspect`` (else stretch), bicubic resize; by
        :mod:`quantification.image_resize`, which the runtime should call to match training."""
        hp = self.hparams
        return network_preprocessing(
            hp.image_size, hp.intensity_percentiles, hp.intensity_clip, hp.keep_aspect
        )

    @property
    def file(self) -> Path:
        """The HDF5 file read: the configured ``path`` or the cached phantom file."""
        hp = self.hparams
        if hp.path is not None:
            return Path(hp.path)
        return self._phantom_files()[hp.modality]

    def _phantom_files(self) -> dict[str, Path]:
        hp = self.hparams
        return mapping_phantom_paths(
            hp.data_dir, hp.n_patients, hp.phantom_seed, hp.slices_per_patient,
            sequence=hp.sequence,
        )  # fmt: skip

    def prepare_data(self) -> None:
        hp = self.hparams
        if hp.path is None and not mapping_phantoms_current(self._phantom_files()):
            # missing, or cached by an older generator version: (re)write all three files
            log.info("Writing synthetic mapping phantoms (3 modalities) to %s", hp.data_dir)
            write_mapping_phantoms(
                hp.data_dir, hp.n_patients, hp.phantom_seed, hp.slices_per_patient,
                sequence=hp.sequence,
            )  # fmt: skip

    def _train_items(
        self, slices: list[MappingSliceInfo], train_cases: list[str]
    ) -> tuple[list[tuple[int, int]], list[str]]:
        """Training (slice, image) items under the cap, and the cases they come from."""
        hp = self.hparams
        by_patient: dict[str, list[int]] = {}
        train_set = set(train_cases)
        for i, info in enumerate(slices):
            if info.case_id in train_set:
                by_patient.setdefault(info.patient_id, []).append(i)
        patients = sorted(by_patient)
        if hp.max_train_images is not None:
            np.random.default_rng(hp.split_seed).shuffle(patients)
        cap = hp.max_train_images or sum(s.n_images for s in slices)
        items: list[tuple[int, int]] = []
        for patient in patients:
            for i in by_patient[patient]:
                items += [(i, n) for n in range(min(slices[i].n_images, cap - len(items)))]
            if len(items) >= cap:
                break
        if hp.max_train_images is not None and len(items) < hp.max_train_images:
            log.warning(
                "max_train_images=%d but only %d training images exist in %s",
                hp.max_train_images, len(items), self.file,
            )  # fmt: skip
        used = sorted({slices[i].case_id for i, _ in items})
        return items, used

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        slices = scan_mapping_file(self.file, modality=hp.modality, require_masks=True)
        if hp.split_file:
            split = read_split(hp.split_file, {s.case_id for s in slices})
        else:
            patients = {s.case_id: s.patient_id for s in slices}
            split = split_by_patient(patients, hp.val_fraction, hp.test_fraction, hp.split_seed)
        train_items, used = self._train_items(slices, split["train"])
        self.split = dict(split, train=used)
        if hp.split_out:
            write_split(hp.split_out, self.split)
        items = {"train": train_items}
        for name in SUBSETS[1:]:
            cases = set(split[name])
            items[name] = [
                (i, n)
                for i, s in enumerate(slices)
                if s.case_id in cases
                for n in range(s.n_images)
            ]
        common = {
            "image_size": hp.image_size,
            "keep_aspect": hp.keep_aspect,
            "percentiles": tuple(hp.intensity_percentiles),
            "clip": hp.intensity_clip,
        }
        self.datasets = {
            name: MappingImageDataset(
                self.file,
                slices,
                items[name],
                transform=self.augmentation if name == "train" else None,
                **common,
            )
            for name in SUBSETS
        }
        log.info(
            "Mapping data %s (%s): images %s, patients %s",
            self.file, hp.modality, {k: len(v) for k, v in items.items()},
            {k: len({slices[i].patient_id for i, _ in v}) for k, v in items.items()},
        )  # fmt: skip
