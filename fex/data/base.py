"""Split plumbing shared by fex's datamodules: fixed splits by name, loaders yielding (x, y, index)."""
from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from fex.errors import DataError


def split_indices(n: int, val_size: int, test_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Fixed train/val/test split of range(n) by seed."""
    if val_size + test_size >= n:
        raise DataError(f"val_size + test_size = {val_size + test_size} leaves no training data of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {"test": perm[:test_size], "val": perm[test_size:test_size + val_size], "train": perm[test_size + val_size:]}


class SplitDataModule(pl.LightningDataModule):
    """Subclasses fill ``self._splits`` ({"train", "val", "test"} -> Dataset) in ``setup``.

    ``collate`` (None: PyTorch's default) turns items into ``(x, y, index)`` batches;
    predict runs over the test split.
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
        return DataLoader(self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, collate_fn=self.collate,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)
