"""Which training examples the Hessian is estimated on: subset samplers.

Every sampler returns ``(indices [M], weights [M])``; the Hessian estimate is the weighted mean
``sum_i w_i H_i / sum_i w_i`` over the subset, which estimates the full-data mean Hessian
``(1/N) sum_i H_i``. ``size`` is a count (int >= 1) or a fraction of the training set (0 < f < 1).

* ``uniform``  - M examples uniformly without replacement; weights 1.
* ``logit``    - stratified by the model's output distribution. Rule (ours: the exact rule of Koh
  et al. 2025 is not public): compute the softmax p_i of every training example; stratum of i =
  (predicted class argmax p_i, entropy bin), where the entropy H(p_i) is cut into ``bins``
  equal-count quantile bins *within* each predicted class. Each stratum h with N_h examples gets
  n_h = N_h * M / N samples (largest-remainder rounding, n_h <= N_h), drawn uniformly without
  replacement; each drawn example is weighted N_h / n_h (the stratified estimator of the mean).
  So the subset reproduces the full set's mix of predicted classes and confidence levels.
* ``feature``  - distance-weighted in feature space (the penultimate activations, the input of
  the last layer): k-means++ seeding (D^2 sampling). The first example is uniform; each next one
  is drawn with probability proportional to its squared Euclidean distance to the nearest
  example already chosen. Each chosen example is weighted by the number of training examples
  whose nearest chosen example it is (its Voronoi cell), so dense regions count as much as they
  weigh in the full data while outliers are still covered.
* ``full``     - every training example (weights 1): the reference.

Letters: N training examples, M subset size, C classes, P feature width.
"""
from __future__ import annotations

import math

import torch

from fex.errors import ConfigError


def subset_size(size: float | int, n: int) -> int:
    """Count (int >= 1) or fraction (0 < f < 1) -> a count in [1, n]."""
    s = float(size)
    if s <= 0:
        raise ConfigError(f"sampler size must be positive, got {size}")
    m = int(math.ceil(s * n)) if s < 1 else int(s)
    return max(1, min(m, n))


def largest_remainder(counts: torch.Tensor, m: int) -> torch.Tensor:
    """Split ``m`` over strata proportionally to ``counts`` (integers, sum m, each <= its count)."""
    counts = counts.long()
    quota = counts.double() * m / counts.sum()
    alloc = torch.minimum(quota.floor().long(), counts)
    rem = quota - alloc
    while int(alloc.sum()) < m:
        rem = torch.where(alloc < counts, rem, torch.full_like(rem, -1.0))
        k = int(rem.argmax())
        alloc[k] += 1
        rem[k] = -1.0
        if (rem < 0).all():
            rem = torch.where(alloc < counts, torch.zeros_like(rem), torch.full_like(rem, -1.0))
    return alloc


class Sampler:
    name = "sampler"
    needs: tuple[str, ...] = ()  # "probs" and/or "features"

    def __init__(self, size: float | int = 0.1) -> None:
        self.size = size

    def sample(self, n: int, probs: torch.Tensor | None = None, features: torch.Tensor | None = None,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class FullSampler(Sampler):
    name = "full"

    def __init__(self, size: float | int = 1.0) -> None:
        super().__init__(1.0)

    def sample(self, n, probs=None, features=None, seed=0):
        return torch.arange(n), torch.ones(n)


class UniformSampler(Sampler):
    name = "uniform"

    def sample(self, n, probs=None, features=None, seed=0):
        m = subset_size(self.size, n)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:m]
        return idx.sort().values, torch.ones(m)


def strata(probs: torch.Tensor, bins: int) -> torch.Tensor:
    """probs [N, C] -> stratum id [N] = predicted class * bins + within-class entropy quantile bin."""
    pred = probs.argmax(-1)
    ent = -(probs.clamp_min(1e-12).log() * probs).sum(-1)
    out = torch.empty(len(probs), dtype=torch.long)
    for c in pred.unique():
        members = (pred == c).nonzero().squeeze(1)
        order = members[torch.argsort(ent[members], stable=True)]
        qbin = (torch.arange(len(order)) * int(bins)) // len(order)  # equal-count quantile bins
        out[order] = int(c) * int(bins) + qbin
    return out


class LogitSampler(Sampler):
    """Stratified by (predicted class, entropy quantile bin) with proportional allocation."""

    name = "logit"
    needs = ("probs",)

    def __init__(self, size: float | int = 0.1, bins: int = 4) -> None:
        super().__init__(size)
        if int(bins) < 1:
            raise ConfigError(f"logit sampler bins must be >= 1, got {bins}")
        self.bins = int(bins)

    def sample(self, n, probs=None, features=None, seed=0):
        if probs is None or len(probs) != n:
            raise ConfigError("the logit sampler needs the model's class probabilities of every training example")
        m = subset_size(self.size, n)
        gen = torch.Generator().manual_seed(int(seed))
        sid = strata(probs.double(), self.bins)
        ids, counts = sid.unique(return_counts=True)
        alloc = largest_remainder(counts, m)
        idx, w = [], []
        for s, nh, kh in zip(ids.tolist(), counts.tolist(), alloc.tolist()):
            if kh == 0:
                continue
            members = (sid == s).nonzero().squeeze(1)
            pick = members[torch.randperm(len(members), generator=gen)[:kh]]
            idx.append(pick)
            w.append(torch.full((kh,), nh / kh))
        idx_t, w_t = torch.cat(idx), torch.cat(w)
        order = torch.argsort(idx_t)
        return idx_t[order], w_t[order]


class FeatureSampler(Sampler):
    """k-means++ (D^2) seeding in feature space; weights = Voronoi cell sizes."""

    name = "feature"
    needs = ("features",)

    def sample(self, n, probs=None, features=None, seed=0):
        if features is None or len(features) != n:
            raise ConfigError("the feature sampler needs the penultimate features of every training example")
        m = subset_size(self.size, n)
        gen = torch.Generator().manual_seed(int(seed))
        f = features.reshape(n, -1).double()
        first = int(torch.randint(n, (1,), generator=gen))
        chosen = [first]
        d2 = ((f - f[first]) ** 2).sum(1)
        owner = torch.zeros(n, dtype=torch.long)  # position in `chosen` of the nearest chosen example
        for k in range(1, m):
            total = d2.sum()
            if total <= 0:  # every remaining example duplicates a chosen one: fill uniformly
                rest = torch.ones(n, dtype=torch.bool)
                rest[chosen] = False
                extra = rest.nonzero().squeeze(1)
                extra = extra[torch.randperm(len(extra), generator=gen)[: m - k]]
                chosen.extend(extra.tolist())
                break
            nxt = int(torch.multinomial(d2 / total, 1, generator=gen))
            chosen.append(nxt)
            dn = ((f - f[nxt]) ** 2).sum(1)
            closer = dn < d2
            owner[closer] = len(chosen) - 1
            d2 = torch.minimum(d2, dn)
        idx = torch.tensor(chosen, dtype=torch.long)
        w = torch.bincount(owner, minlength=len(idx)).double()
        w = torch.where(w > 0, w, torch.ones_like(w))  # duplicates filled in uniformly own themselves
        order = torch.argsort(idx)
        return idx[order], w[order].float()
