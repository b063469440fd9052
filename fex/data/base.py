"""Split plumbing shared by fex's datamodules: fixed splits by name, loaders yielding (x, y, index)."""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fex.errors import DataError


def split_indices(n: int, val_size: int, test_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed train/val/test split of range(n) by seed."""
    if val_size + test_size >= n:
        raise DataError(f"val_size + test_size = {val_size + test_size} leaves no training data of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {"test": perm[:test_size], "val": perm[test_size:test_size + val_size], "train": perm[test_size + val_size:]}


def epoch_sampler(ds: Dataset, seed: int | None, trainer: Any = None) -> DistributedSampler:
    """A training order drawn from (``seed``, epoch). Lightning calls ``set_epoch`` at the start of every
    epoch, a resumed run's too, so a run resumed after a kill sees the epochs in the order of one that
    never stopped (a sampler drawing from the global RNG replays the first epoch's order after a resume).
    This rank's share under DDP (``trainer``'s world size and rank), as Lightning's own sampler would."""
    world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
    return DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=int(seed or 0))


class SplitDataModule(pl.LightningDataModule):
    """Subclasses fill ``self._splits`` ({"train", "val", "test"} -> Dataset) in ``setup``.

    ``collate`` (None: PyTorch's default) turns items into ``(x, y, index)`` batches;
    predict runs over the test split. The training split is shuffled by (``seed``, epoch): :func:`epoch_sampler`.
    """

    batch_size: int = 64
    num_workers: int = 0
    collate: Callable[[list], Any] | None = None
    _splits: dict[str, Dataset] | None = None

    def dataset(self, split: str) -> Dataset:
        self.setup()
        if split not in self._splits:
            raise DataError(f"unknown split {split!r}; choose from {sorted(self._splits)}")
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=self.batch_size, sampler=self._sampler(ds) if shuffle else None,
                          collate_fn=self.collate, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _sampler(self, ds: Dataset) -> DistributedSampler:
        return epoch_sampler(ds, getattr(self, "seed", 0), getattr(self, "trainer", None))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
