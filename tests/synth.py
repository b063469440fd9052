"""Synthetic targets and data with known answers (used by the evaluation tests and configs).

``LinearPatchTarget``: logits = [0, sum_f w_f * mean(patch f)] over a 7x7 patch grid of
28x28 images, so with a zeros substrate the class-1 logit is linear in the presence vector.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import fex.registry
from fex.data.base import SplitDataModule
from fex.maskers.image import grid_feature_mask


class LinearPatchTarget(nn.Module):
    def __init__(self, grid: int = 7, size: int = 28, weights: list[float] | None = None, scale: float = 1.0,
                 delay: float = 0.0) -> None:
        super().__init__()
        self.delay = float(delay)  # seconds per call: makes a run slow enough to interrupt
        f = grid * grid
        w = torch.linspace(-1, 2, f) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("fmask", grid_feature_mask(size, size, (grid, grid)).flatten())
        self.register_buffer("w", w * scale)
        self.f = f

    def patch_means(self, x: torch.Tensor) -> torch.Tensor:
        onehot = nn.functional.one_hot(self.fmask, self.f).to(x.dtype)
        return x.flatten(1) @ onehot / onehot.sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            import time

            time.sleep(self.delay)
        z = self.patch_means(x) @ self.w
        return torch.stack([torch.zeros_like(z), z], 1)


class RandomImages(Dataset):
    """(x [1, 28, 28] in [0, 1], label, index), deterministic per index."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 28, 28, generator=g)
        self.y = torch.zeros(n, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class RandomImagesData(pl.LightningDataModule):
    """Minimal datamodule: the same images for every split (``<split>_dataloader()``)."""

    def __init__(self, n: int = 64, batch_size: int = 8, seed: int = 0, size: int = 28) -> None:
        super().__init__()
        self.ds = RandomImages(n, seed)
        if size != 28:
            self.ds.x = torch.rand(n, 1, size, size)
        self.batch_size = batch_size

    def prepare_data(self) -> None: ...

    def setup(self, stage: str | None = None) -> None: ...

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.ds, batch_size=self.batch_size)

    train_dataloader = val_dataloader = predict_dataloader = test_dataloader


class ShuffledImagesData(SplitDataModule):
    """RandomImages as every split, through fex's own split plumbing: the training split is shuffled as
    fex's datamodules shuffle it (tests of resuming)."""

    def __init__(self, n: int = 64, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.ds, self.batch_size, self.seed = RandomImages(n, seed), int(batch_size), int(seed)

    def setup(self, stage: str | None = None) -> None:
        self._splits = {"train": self.ds, "val": self.ds, "test": self.ds}


SYNTH_DATA = {"_target_": "tests.synth.RandomImagesData", "n": 40, "batch_size": 8, "seed": 0, "num_classes": 2,
              "input_shape": [1, 28, 28]}  # = tests/conf/data/synth.yaml


# test-only data/target classes a checkpoint may name as its defaults (explicit, as a user would)
fex.registry.register(RandomImagesData, group="data")
fex.registry.register(ShuffledImagesData, group="data")
fex.registry.register(LinearPatchTarget, group="target")


def make_checkpoint(path, blackbox, num_classes: int = 2, grid: int = 7, seed: int = 0, data: dict | None = None) -> str:
    """A freshly initialised explainer saved as a self-describing fex checkpoint (the synth data
    config and the black box's target config inside, as ``train`` would store them)."""
    from fex.explainer import build_explainer, save_explainer

    torch.manual_seed(seed)
    cfg = {
        "masker": {"_target_": "fex.maskers.image.PatchMasker", "grid": [grid, grid], "input_shape": [1, 28, 28]},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": num_classes, "hidden": 16,
                   "backbone": {"_target_": "fex.policy.ConvBackbone", "in_channels": 1, "width": 8, "depth": 1,
                                "out_dim": 16}},
        "objective": {},
        "data": data or SYNTH_DATA, "target": blackbox.config or None, "num_classes": num_classes,
    }
    return save_explainer(build_explainer(cfg, blackbox=blackbox), path)
