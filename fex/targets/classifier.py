"""The one Lightning module for the small classifiers fex trains itself: the MNIST target, the cheap
proxies distilled from a target, and the fine-tuned text classifiers.

``model`` maps inputs to logits [B, C]. It is fitted by cross-entropy to labels (batches ``(x, y, ...)``)
or, with ``soft=True``, by KL divergence to a teacher's probabilities (batches ``(x, p_teacher [B, C])``).
Validation batches ``(x, y, ...)`` log accuracy. :func:`fit` runs a quiet single-CPU Trainer; :func:`own_rng`
gives a target's training its own seeded random streams.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F_
from torch import nn


class Classifier(pl.LightningModule):
    """Fits ``model`` (see the module docstring).

    Args:
        optimizer: ``optimizer(trainable parameters)`` -> a torch optimizer.
        scheduler: ``scheduler(optimizer, total training steps)`` -> an LR scheduler, stepped every
            ``interval`` (``epoch`` or ``step``); None for a constant rate.
        soft: fit a teacher's probabilities (KL) instead of labels (cross-entropy).
        augment: applied to each training batch's inputs (e.g. random shifts).
        loss_name / val_name: the logged keys of the training loss and the validation accuracy.
    """

    def __init__(self, model: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None, interval: str = "epoch",
                 soft: bool = False, augment: Callable[[Any], Any] | None = None, loss_name: str = "train/loss",
                 val_name: str = "val/acc") -> None:
        super().__init__()
        self.model, self.optimizer_factory, self.scheduler_factory = model, optimizer, scheduler
        self.interval, self.soft, self.augment = interval, soft, augment
        self.loss_name, self.val_name = loss_name, val_name

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.augment is not None:
            x = self.augment(x)
        logits = self.model(x)
        if self.soft:
            loss = F_.kl_div(F_.log_softmax(logits, -1), y, reduction="batchmean")
        else:
            loss = F_.cross_entropy(logits, y)
        self.log(self.loss_name, loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self.log(self.val_name, (self.model(x).argmax(-1) == y).float().mean(), prog_bar=True, batch_size=len(y))

    def configure_optimizers(self):
        opt = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def random_shift(x: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """The whole batch rolled by one random shift of up to ``pixels`` in each direction (light augmentation)."""
    dx, dy = torch.randint(-pixels, pixels + 1, (2,)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def fit(module: Classifier, *, epochs: int | None = None, steps: int | None = None, progress: bool = False,
        **data: Any) -> nn.Module:
    """Train ``module`` on one CPU for ``epochs`` (or ``steps``) with no logger, checkpoints or summary;
    ``data``: ``datamodule=`` or ``train_dataloaders=`` as for ``Trainer.fit``. Returns the model in eval mode."""
    trainer = pl.Trainer(max_epochs=-1 if steps is not None else epochs, max_steps=-1 if steps is None else steps,
                         accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=progress)
    trainer.fit(module, **data)
    return module.model.eval()


SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")  # what pl.seed_everything leaves in the environment


@contextmanager
def own_rng(seed: int) -> Iterator[None]:
    """Train a target on its own random streams: python, numpy and torch (CPU) seeded with ``seed`` on entry,
    the caller's streams (and Lightning's seed variables) restored on exit. So the weights come from ``seed``
    alone, and what a job draws next (explainer weights, masks) is the same whether its target was trained
    just now or read from the cache."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    env = {k: os.environ.get(k) for k in SEED_ENV}
    try:
        pl.seed_everything(seed, workers=True)
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
