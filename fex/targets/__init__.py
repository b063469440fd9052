"""Targets (the classifiers being explained) that fex can build or train."""
from __future__ import annotations

from typing import Any, Callable

import torch

from fex.blackbox import _slice, batch_len


@torch.no_grad()
def accuracy(model: Callable[[Any], torch.Tensor], x: Any, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` (a tensor, a list of texts, a dict batch) whose argmax class is ``y``."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    n = batch_len(x)
    pred = torch.cat([model(_slice(x, i, i + batch_size)).argmax(-1).cpu() for i in range(0, n, batch_size)])
    return float((pred == torch.as_tensor(y).cpu()).float().mean())
