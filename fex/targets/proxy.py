"""Cheap proxies of an expensive target: a small student distilled from the teacher's answers.

An explainer can be trained against the proxy (free queries) and then screened and gated on the
real target (:mod:`fex.gate`). The proxy's cost in *target* queries is the transfer set: every
teacher answer the student is trained on, counted by the teacher's :class:`~fex.blackbox.BlackBox`
and stored beside the cached weights (``<name>.json``: ``teacher_queries``, the teacher's weights
hash, the student's agreement with the teacher on held-out digits, clean and masked).

The transfer set matters: an explainer queries the target on *masked* inputs, so the student is
distilled on the training digits and on ``masked_copies`` randomly patch-masked copies of each
(the explainer's masker grid and baseline), not only on clean digits.

The text proxy (:mod:`fex.targets.text_proxy`) shares the mask sampling (:func:`random_keep_masks`),
the distillation (:func:`distill`), the cache writing (:func:`save_proxy`) and :func:`agreement`.
"""
from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fex.blackbox import BlackBox, weights_hash
from fex.data.mnist import MNISTDataModule
from fex.io import save_torch, write_json
from fex.maskers.image import PatchMasker
from fex.paths import cache_dir_or_default
from fex.targets.classifier import Classifier, fit, own_rng
from fex.targets.mnist_cnn import pretrained_mnist_cnn

log = logging.getLogger(__name__)


class TinyCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-fc(C) on [B, 1, 28, 28]: ~30x fewer multiply-adds than SmallCNN at w=8."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, size: int = 28) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_keep_masks(n: int, copies: int, f: int, generator: torch.Generator) -> torch.Tensor:
    """Masks [n, copies, F] for a transfer set: each copy keeps each feature with its own rate ~ U[0.1, 1]."""
    rate = 0.1 + 0.9 * torch.rand(n, copies, 1, generator=generator)
    return (torch.rand(n, copies, f, generator=generator) < rate).float()


def masked_copies_of(x: torch.Tensor, copies: int, grid: Sequence[int], baseline: str, seed: int) -> torch.Tensor:
    """``copies`` random patch-masked versions of each image (keep rate uniform in [0.1, 1] per copy)."""
    if copies <= 0:
        return x[:0]
    g = torch.Generator().manual_seed(seed)
    masker = PatchMasker(grid, tuple(x.shape[1:]), baseline=baseline, fill=[float(x.mean())] * x.shape[1])
    return masker.apply(x, random_keep_masks(len(x), copies, masker.num_features(), g))


def agreement(student: nn.Module, teacher: Any, x: Any) -> float:
    """Share of inputs on which the student and the teacher (a module, callable or BlackBox) predict the same class."""
    with torch.no_grad():
        return float((student(x).argmax(-1).cpu() == teacher(x).argmax(-1).cpu()).float().mean())


def distill(student: nn.Module, inputs: torch.Tensor, p_teacher: torch.Tensor, epochs: int, lr: float,
            batch_size: int) -> nn.Module:
    """Fit ``student`` (inputs -> logits) to the teacher's probabilities by KL with Lightning; returns it in eval mode."""
    loader = DataLoader(TensorDataset(inputs, p_teacher), batch_size=batch_size, shuffle=True)
    return fit(Classifier(student, partial(torch.optim.Adam, lr=lr), soft=True, loss_name="proxy/kl"), epochs=epochs,
               train_dataloaders=loader)


def save_proxy(path: Path, student: nn.Module, info: dict) -> None:
    """The student's state_dict at ``path`` and its record at ``path.with_suffix('.json')``, both atomic
    (a killed run never leaves a half-written cache)."""
    save_torch(path, student.state_dict())
    write_json(path.with_suffix(".json"), info)


def mnist_proxy(cache_dir: str | None = None, seed: int = 0, teacher_seed: int | None = None, width: int = 8,
                masked_copies: int = 3, grid: Sequence[int] = (7, 7), baseline: str = "zeros", epochs: int = 10,
                lr: float = 3e-3, batch_size: int = 128, val_size: int = 500, test_size: int = 1000,
                retrain: bool = False) -> TinyCNN:
    """A :class:`TinyCNN` distilled from the MNIST target CNN (``pretrained_mnist_cnn``), cached.

    The transfer set is the training split's digits plus ``masked_copies`` patch-masked copies
    of each, each answered once by the teacher: ``train_size * (1 + masked_copies)`` target queries
    (recorded in the sidecar JSON, see :func:`proxy_info`).
    """
    teacher_seed = seed if teacher_seed is None else teacher_seed
    path = proxy_path(cache_dir, seed, teacher_seed, width, masked_copies, grid, baseline, epochs, val_size, test_size)
    if path.exists() and not retrain:
        with own_rng(seed):  # the weights drawn here are overwritten; the caller's streams stay as they were
            student = TinyCNN(width=width)
        student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return student.eval()
    teacher = pretrained_mnist_cnn(cache_dir, seed=teacher_seed, val_size=val_size, test_size=test_size)
    bb = BlackBox(teacher, output="logits", max_batch_size=1024)
    dm = MNISTDataModule(batch_size=batch_size, val_size=val_size, test_size=test_size, seed=teacher_seed)
    dm.setup()
    x = dm.dataset("train").x
    transfer = torch.cat([x, masked_copies_of(x, masked_copies, grid, baseline, seed)])
    with bb.counting() as c:
        p_teacher = bb(transfer)  # the proxy's whole cost in target queries
    log.info("distilling the MNIST proxy from %d teacher answers (cached at %s)", c.n, path)
    with own_rng(seed):
        student = distill(TinyCNN(width=width), transfer, p_teacher, epochs, lr, batch_size)
    test = dm.dataset("test").x
    test_masked = masked_copies_of(test, 1, grid, baseline, seed + 1)
    info = {"teacher_queries": int(c.n), "teacher_weights_sha256": weights_hash(teacher), "transfer_size": len(transfer),
            "agreement_test": agreement(student, teacher, test), "agreement_test_masked": agreement(student, teacher, test_masked),
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "teacher_parameters": sum(p.numel() for p in teacher.parameters())}
    save_proxy(path, student, info)
    log.info("MNIST proxy: %s", info)
    return student


def proxy_path(cache_dir: str | os.PathLike | None, seed: int, teacher_seed: int, width: int, masked_copies: int,
               grid: Sequence[int], baseline: str, epochs: int, val_size: int, test_size: int) -> Path:
    """Where a proxy with these settings is cached (``.pt``; its record is the ``.json`` beside it)."""
    name = (f"mnist_proxy_t{teacher_seed}_s{seed}_w{width}_m{masked_copies}_g{grid[0]}x{grid[1]}_{baseline}"
            f"_e{epochs}_v{val_size}_t{test_size}")
    return cache_dir_or_default(cache_dir) / f"{name}.pt"


def proxy_info(cache_dir: str | None = None, seed: int = 0, teacher_seed: int | None = None, width: int = 8,
               masked_copies: int = 3, grid: Sequence[int] = (7, 7), baseline: str = "zeros", epochs: int = 10,
               val_size: int = 500, test_size: int = 1000, **_: object) -> dict:
    """The cost/agreement record of a cached proxy (same arguments as :func:`mnist_proxy`)."""
    teacher_seed = seed if teacher_seed is None else teacher_seed
    path = proxy_path(cache_dir, seed, teacher_seed, width, masked_copies, grid, baseline, epochs, val_size, test_size)
    if not path.with_suffix(".json").is_file():
        mnist_proxy(cache_dir, seed, teacher_seed, width, masked_copies, grid, baseline, epochs,
                    val_size=val_size, test_size=test_size)
    return json.loads(path.with_suffix(".json").read_text())
