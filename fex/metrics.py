"""Faithfulness metrics on features, modality-free (the masker does the masking).

Letters: B batch, F features, S steps of a curve.

Deletion (RISE-style): remove features in decreasing attribution order and track the
target-class probability; lower area = more faithful. Insertion: start from the
baseline (everything removed) and add features in that order; higher area = better.
"""
from __future__ import annotations

from typing import Any

import torch

from fex.blackbox import BlackBox
from fex.maskers.base import Masker


def order_masks(scores: torch.Tensor, valid: torch.Tensor, steps: int | None = None,
                mode: str = "deletion") -> torch.Tensor:
    """Masks [B, S+1, F] for a deletion or insertion curve.

    Row s keeps (deletion) or has inserted (insertion) all but / only the top
    ``round(s * n / S)`` valid features by score, n the example's number of valid features.
    Ties are broken by feature index so results are deterministic.
    """
    b, f = scores.shape
    n = valid.sum(1)  # [B]
    s_total = int(n.max().item()) if steps is None else int(steps)
    s_total = max(1, s_total)
    big = torch.finfo(scores.dtype).max
    key = torch.where(valid, scores, torch.full_like(scores, -big))
    # stable descending order: sort by (-score, index)
    order = torch.sort(-key, dim=1, stable=True).indices  # [B, F]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(f, device=scores.device).expand(b, f))  # rank of each feature
    frac = torch.arange(s_total + 1, device=scores.device, dtype=torch.float64) / s_total  # [S+1]
    counts = torch.round(frac[None, :] * n[:, None].double()).long()  # [B, S+1] features taken
    top = rank[:, None, :] < counts[:, :, None]  # [B, S+1, F] the taken top features
    top = top & valid[:, None, :]
    if mode == "deletion":
        m = valid[:, None, :] & ~top
    elif mode == "insertion":
        m = top
    else:
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    return m.to(scores.dtype)


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoidal area of curves [B, S+1] over x in [0, 1] -> [B]."""
    s = curve.shape[1] - 1
    if s < 1:
        return curve[:, 0]
    return (curve[:, :-1] + curve[:, 1:]).sum(1) / (2 * s)


def perturbation_curve(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                       mode: str = "deletion", steps: int | None = None) -> torch.Tensor:
    """Target-class probability along a deletion/insertion path: [B, S+1]."""
    valid = masker.valid(x)
    masks = order_masks(scores.to(valid.device).float(), valid, steps=steps, mode=mode)
    b, s1, _ = masks.shape
    probs = blackbox(masker.apply(x, masks))  # [B*(S+1), C]
    return probs.view(b, s1, -1).gather(2, target.view(b, 1, 1).expand(b, s1, 1).to(probs.device)).squeeze(2)


def deletion_auc(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                 steps: int | None = None) -> torch.Tensor:
    return auc(perturbation_curve(blackbox, masker, x, scores, target, "deletion", steps))


def insertion_auc(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                  steps: int | None = None) -> torch.Tensor:
    return auc(perturbation_curve(blackbox, masker, x, scores, target, "insertion", steps))
