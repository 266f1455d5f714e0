"""DataLoaders of every DataModule: shuffled training batches; evaluation counts each case once."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    trainer: pl.Trainer | None = None,
) -> DataLoader:
    """A training (``shuffle=True``) or evaluation loader of ``dataset``.

    Evaluation under several processes gets an unrepeated distributed sampler: Lightning's default
    ``DistributedSampler`` pads the evaluation set with repeated cases to an equal share per
    process, and every case must count once in val/test metrics. Training drops a last partial
    batch (batch norm on a tiny batch) when there is more than one batch.
    """
    sampler = None
    if not shuffle and trainer is not None and trainer.world_size > 1:
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=shuffle and len(dataset) > batch_size,
    )


class SplitDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ``self.datasets[name]`` (built by the subclass's ``setup``).

    The subclass's hyper-parameters hold ``batch_size`` and ``num_workers``.
    """

    datasets: dict[str, Dataset]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        hp, dataset = self.hparams, self.datasets[name]
        return make_loader(dataset, hp.batch_size, hp.num_workers, shuffle, self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
