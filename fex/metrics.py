"""Faithfulness metrics on features, modality-free (the masker does the masking).

Letters: B batch, F features, S steps of a curve.

Deletion (RISE-style): remove features in decreasing attribution order and track the
target-class probability; lower area = more faithful. Insertion: start from the
baseline (everything removed) and add features in that order; higher area = better.
"""
from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

from fex.blackbox import BlackBox
from fex.errors import InputError
from fex.maskers.base import Masker


def order_masks(scores: torch.Tensor, valid: torch.Tensor, steps: int | None = None,
                mode: str = "deletion") -> torch.Tensor:
    """Masks [B, S+1, F] for a deletion or insertion curve.

    Row s keeps (deletion) or has inserted (insertion) all but / only the top
    ``round(s * n / S)`` valid features by score, n the example's number of valid features.
    Ties are broken by feature index so results are deterministic.
    """
    b, f = scores.shape
    big = torch.finfo(scores.dtype).max
    key = torch.where(valid, scores, torch.full_like(scores, -big))
    # stable descending order: sort by (-score, index)
    order = torch.sort(-key, dim=1, stable=True).indices  # [B, F]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(f, device=scores.device).expand(b, f))  # rank of each feature
    counts = curve_counts(valid, steps)  # [B, S+1] features taken
    top = rank[:, None, :] < counts[:, :, None]  # [B, S+1, F] the taken top features
    top = top & valid[:, None, :]
    if mode == "deletion":
        m = valid[:, None, :] & ~top
    elif mode == "insertion":
        m = top
    else:
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    return m.to(scores.dtype)


def _grid(valid: torch.Tensor, steps: int | None) -> torch.Tensor:
    """The S+1 evenly spaced points in [0, 1] of a curve (S = ``steps``, or the batch's largest feature count)."""
    s_total = max(1, int(valid.sum(1).max().item()) if steps is None else int(steps))
    return torch.arange(s_total + 1, device=valid.device, dtype=torch.float64) / s_total  # [S+1]


def curve_counts(valid: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Features taken at each point of each example's curve: ``round(s * n / S)``, [B, S+1] (long)."""
    return torch.round(_grid(valid, steps)[None, :] * valid.sum(1)[:, None].double()).long()


def curve_fractions(valid: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Share of each example's n valid features taken at each point of its curve: [B, S+1] (evenly
    spaced for an example without features)."""
    n = valid.sum(1)[:, None].double()
    return torch.where(n > 0, curve_counts(valid, steps) / n.clamp_min(1), _grid(valid, steps)[None, :])


def auc(curve: torch.Tensor, fractions: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised trapezoidal area of curves [B, S+1] over x in [0, 1] -> [B].

    ``fractions`` [B, S+1] (:func:`curve_fractions`): the points' x positions per example; without
    them the points are taken as evenly spaced.
    """
    s = curve.shape[1] - 1
    if s < 1:
        return curve[:, 0]
    if fractions is None:
        return (curve[:, :-1] + curve[:, 1:]).sum(1) / (2 * s)
    dx = (fractions[:, 1:] - fractions[:, :-1]).to(curve.device, curve.dtype)
    return ((curve[:, :-1] + curve[:, 1:]) * dx).sum(1) / 2


def curve_auc(curve: torch.Tensor, valid: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Area of :func:`perturbation_curve` curves [B, S+1] -> [B], independent of the batch.

    With a fixed ``steps`` the S+1 points are evenly spaced. With ``steps=None`` (one step per
    feature) S is the batch's largest feature count, so an example with fewer features (a shorter
    text) repeats points: its area is taken over its own n+1 distinct points, exactly as if it had
    been scored alone.
    """
    return auc(curve, curve_fractions(valid, None) if steps is None else None)


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
    return curve_auc(perturbation_curve(blackbox, masker, x, scores, target, "deletion", steps), masker.valid(x), steps)


def insertion_auc(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                  steps: int | None = None) -> torch.Tensor:
    return curve_auc(perturbation_curve(blackbox, masker, x, scores, target, "insertion", steps), masker.valid(x), steps)


# --------------------------------------------------------------------------- more metrics
def aopc(curve: torch.Tensor, fractions: torch.Tensor | None = None) -> torch.Tensor:
    """AOPC (Samek et al. 2017) of deletion curves [B, S+1] -> [B].

    ``1/(S+1) * sum_s (p_0 - p_s)``: the mean drop of the target probability while the
    most important features are removed; higher = more faithful. With ``fractions``
    (:func:`curve_fractions`) a repeated point (same share of features removed) counts once.
    """
    drop = curve[:, :1] - curve
    if fractions is None:
        return drop.mean(1)
    new = torch.ones_like(fractions, dtype=torch.bool)
    new[:, 1:] = fractions[:, 1:] != fractions[:, :-1]
    w = new.to(curve.device, curve.dtype)
    return (drop * w).sum(1) / w.sum(1)


def rationale_masks(scores: torch.Tensor, valid: torch.Tensor, fractions: tuple[float, ...]) -> torch.Tensor:
    """Keep-masks [B, R, F] of the top ``ceil(fraction * n)`` valid features (at least one), ties by index."""
    b, f = scores.shape
    n = valid.sum(1).double()  # [B]
    big = torch.finfo(scores.dtype).max
    key = torch.where(valid, scores, torch.full_like(scores, -big))
    order = torch.sort(-key, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(f, device=scores.device).expand(b, f))
    fr = torch.as_tensor(fractions, dtype=torch.float64, device=scores.device)
    counts = torch.ceil(fr[None, :] * n[:, None] - 1e-9).clamp_min(1).long()  # [B, R]
    top = (rank[:, None, :] < counts[:, :, None]) & valid[:, None, :]
    return top.to(scores.dtype)


ERASER_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


def _target_prob(blackbox: BlackBox, masker: Masker, x: Any, masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target-class probability of masked inputs: masks [B, K, F] -> [B, K]."""
    b, k, _ = masks.shape
    probs = blackbox(masker.apply(x, masks))
    return probs.view(b, k, -1).gather(2, target.view(b, 1, 1).expand(b, k, 1).to(probs.device)).squeeze(2)


def eraser(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
           fractions: tuple[float, ...] = ERASER_FRACTIONS) -> dict[str, torch.Tensor]:
    """ERASER comprehensiveness and sufficiency (DeYoung et al. 2020), averaged over rationale sizes.

    For each fraction k the rationale is the top-k valid features. ``comprehensiveness`` =
    mean_k [p(x) - p(x without rationale)] (higher is better); ``sufficiency`` =
    mean_k [p(x) - p(rationale only)] (lower is better). Returns both as [B].
    """
    valid = masker.valid(x)
    keep = rationale_masks(scores.to(valid.device).float(), valid, tuple(fractions))  # [B, R, F]
    full = valid[:, None, :].to(keep.dtype)
    r = keep.shape[1]
    p = _target_prob(blackbox, masker, x, torch.cat([full, full - keep, keep], 1), target)  # [B, 1+2R]
    p0 = p[:, :1]
    return {"comprehensiveness": (p0 - p[:, 1:1 + r]).mean(1), "sufficiency": (p0 - p[:, 1 + r:]).mean(1)}


def comprehensiveness(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                      fractions: tuple[float, ...] = ERASER_FRACTIONS) -> torch.Tensor:
    return eraser(blackbox, masker, x, scores, target, fractions)["comprehensiveness"]


def sufficiency(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                fractions: tuple[float, ...] = ERASER_FRACTIONS) -> torch.Tensor:
    return eraser(blackbox, masker, x, scores, target, fractions)["sufficiency"]


def _rowwise(corr: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A torchmetrics correlation of each row pair of [B, N] and [B, N] -> [B], in float64; 0 where either
    row is constant (torchmetrics says NaN, with a warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The variance of predictions or target is close to zero")
        r = corr(a.double().T, b.double().T).reshape(a.shape[0])
    return torch.nan_to_num(r, nan=0.0).to(torch.promote_types(a.dtype, b.dtype))


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of [B, N] and [B, N] -> [B] (0 where either row is constant)."""
    return _rowwise(pearson_corrcoef, a, b)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Spearman rank correlation (ties share their mean rank) of [B, N] and [B, N] -> [B]."""
    return _rowwise(spearman_corrcoef, a, b)


def faithfulness_correlation(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                             subset_fraction: float = 0.2, num_subsets: int = 64, seed: int = 0) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al. 2020) -> [B] in [-1, 1], higher is better.

    Draws ``num_subsets`` random subsets S of ``round(subset_fraction * n)`` valid features
    (same subsets for every method: fixed ``seed``), and correlates ``sum_{i in S} a_i`` with
    the probability drop ``p(x) - p(x without S)``.
    """
    valid = masker.valid(x)
    b, f = valid.shape
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(b, num_subsets, f, generator=gen).to(valid.device)
    u = u.masked_fill(~valid[:, None, :], 2.0)  # invalid features are never drawn
    size = torch.round(valid.sum(1).double() * subset_fraction).clamp_min(1).long()  # [B]
    rank = u.argsort(-1).argsort(-1)
    subset = (rank < size[:, None, None]) & valid[:, None, :]  # [B, N, F]
    full = valid[:, None, :].float()
    p = _target_prob(blackbox, masker, x, torch.cat([full, full - subset.float()], 1), target)  # [B, 1+N]
    drop = p[:, :1] - p[:, 1:]
    attr = (subset.float() * scores.to(valid.device).float()[:, None, :]).sum(-1)
    return pearson(attr, drop)


def with_substrate(masker: Masker, substrate: str | None) -> Masker:
    """A copy of ``masker`` whose removed features become ``substrate`` (e.g. zeros/mean/blur)."""
    if substrate is None or getattr(masker, "baseline", None) == substrate:
        return masker
    if not hasattr(masker, "baseline"):
        raise InputError(f"{type(masker).__name__} has no configurable substrate (asked for {substrate!r})")
    allowed = getattr(sys.modules[type(masker).__module__], "BASELINES", None)
    if allowed is not None and substrate not in allowed:
        raise InputError(f"substrate must be one of {tuple(allowed)}, got {substrate!r}")
    m = copy.copy(masker)
    m.baseline = substrate
    return m


def faithfulness(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
                 steps: int | None = None, fractions: tuple[float, ...] = ERASER_FRACTIONS,
                 num_subsets: int = 64, subset_fraction: float = 0.2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every metric above for one batch, computed identically for any method's ``scores`` [B, F].

    Returns per-example tensors [B] (``deletion_auc``, ``insertion_auc``, ``aopc``,
    ``comprehensiveness``, ``sufficiency``, ``faithfulness_corr``) and the curves
    ``deletion_curve`` / ``insertion_curve`` [B, S+1].
    """
    dele = perturbation_curve(blackbox, masker, x, scores, target, "deletion", steps)
    ins = perturbation_curve(blackbox, masker, x, scores, target, "insertion", steps)
    at = curve_fractions(masker.valid(x), None) if steps is None else None  # see curve_auc
    out = {"deletion_auc": auc(dele, at), "insertion_auc": auc(ins, at), "aopc": aopc(dele, at)}
    out.update(eraser(blackbox, masker, x, scores, target, fractions))
    out["faithfulness_corr"] = faithfulness_correlation(blackbox, masker, x, scores, target, subset_fraction,
                                                        num_subsets, seed)
    out["deletion_curve"], out["insertion_curve"] = dele, ins
    return out


# --------------------------------------------------------------------------- sanity: null features
def null_feature(scores: torch.Tensor, null: torch.Tensor, valid: torch.Tensor | None = None,
                 eps: float = 1e-12) -> torch.Tensor:
    """Share of attribution mass on features the black box provably ignores -> [B] in [0, 1] (0 best).

    ``sum_{i in null} |a_i| / sum_{i valid} |a_i|`` per example; ``null`` is a bool mask [F] or [B, F]
    of the ignored features (given explicitly, e.g. by :class:`fex.methods.nullcheck.IgnoreFeatures`).
    An all-zero attribution scores 0. A random attribution scores about |null| / n.
    """
    a = scores.detach().float().abs()
    v = torch.ones_like(a, dtype=torch.bool) if valid is None else valid.to(a.device).bool()
    nm = null.to(a.device).bool().expand_as(a) & v
    total = (a * v).sum(1)
    return torch.where(total > eps, (a * nm).sum(1) / total.clamp_min(eps), torch.zeros_like(total))
