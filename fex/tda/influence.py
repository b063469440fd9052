"""Influence functions (Koh & Liang 2017) with a sampled-subset Hessian, streamed over the training set.

For a training example i and a test example t, with theta the chosen parameter subset,

    score[t, i] = grad L(t)^T (H_S + lambda I)^-1 grad L(i)

where H_S is the (weighted) mean Hessian of the training loss over the sampled subset S (the whole
training set for ``tda_sampler=full``). For a model trained with mean loss + lambda/2 |theta|^2,
``score / N`` is the first-order change of the test loss when example i is left out and the model
retrained: **positive = helpful** (removing i would raise the test loss), **negative = harmful**.
Self-influence ``grad L(i)^T (H + lambda I)^-1 grad L(i)`` ranks examples the model finds hard to
fit (mislabeled ones among them).

Two variants for finding the examples *behind* a behaviour rather than the ones with the largest
gradients (``normalize`` and ``aggregate``):

* ``normalize="relatif"``: RelatIF (Barshan, Brunet, Dziugaite, AISTATS 2020), the l-relative
  influence ``score[t, i] / sqrt(grad L(i)^T (H + lambda I)^-1 grad L(i))``: influence per unit of
  the example's own (self-)influence. Raw influence is proportional to |grad L(i)|, so it favours
  examples the model fits badly (outliers, mislabels) and under-ranks examples it fits confidently
  - a planted backdoor's poisons among them. With :class:`~fex.tda.ihvp.IdentitySolver` (H = 0)
  it is the gradient cosine times |grad L(t)|.
* ``group_scores(..., aggregate="unit")``: the explained group's score is the mean over its queries
  of ``score[t, i] / sqrt(grad L(t)^T (H + lambda I)^-1 grad L(t))`` (each query normalised the same
  way), so every query counts once; ``aggregate="loss"`` scores the gradient of the group's mean
  loss, where the queries the model is least sure of dominate (a confidently-wrong group has tiny
  loss gradients).

Per-example gradients are computed ``chunk_size`` training examples at a time and folded into the
scores at once: the [N, D] gradient matrix is never held.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from fex.errors import ConfigError, DataError
from fex.tda.model import LossModel
from fex.tda.samplers import Sampler

log = logging.getLogger("fex")

NORMALIZE = ("none", "relatif")
AGGREGATE = ("loss", "unit")


class Influence:
    """Training-data attribution for one model and one training set.

    Args:
        model: the :class:`LossModel` (parameter subset).
        sampler: the Hessian subset sampler.
        solver: ``(model, z, y, w) -> solver`` with ``.solve(V [K, D]) -> [K, D]`` (exact or LiSSA).
        chunk_size: training examples per gradient chunk.
        seed: the sampler's seed.
        normalize: ``none`` (influence) | ``relatif`` (divided by sqrt(self-influence): module docstring).
    """

    def __init__(self, model: LossModel, sampler: Sampler, solver: Callable[..., Any], chunk_size: int = 256,
                 seed: int = 0, normalize: str = "none") -> None:
        if normalize not in NORMALIZE:
            raise ConfigError(f"influence normalize must be one of {NORMALIZE}, got {normalize!r}")
        self.model, self.sampler, self.solver_factory = model, sampler, solver
        self.chunk_size, self.seed, self.normalize = int(chunk_size), int(seed), normalize
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ fit: sample S, build the solver
    def fit(self, inputs: Any, y: torch.Tensor, features: torch.Tensor | None = None) -> "Influence":
        """Prepare the training set, sample the Hessian subset and set up the IHVP solver.

        ``features`` (penultimate activations [N, P]) are only needed by the feature sampler when
        the parameter subset is not the last layer (they are Z itself otherwise).
        """
        t0 = time.perf_counter()
        y = torch.as_tensor(y).long()
        if len(inputs) != len(y) or len(y) == 0:
            raise DataError(f"{len(inputs)} training inputs but {len(y)} labels")
        self.z, self.y = self.model.prepare(inputs), y
        self._own: torch.Tensor | None = None  # self-influence [N] (normalize=relatif), filled when first scored
        self.n = len(y)
        t1 = time.perf_counter()
        probs = self.probs(self.z) if "probs" in self.sampler.needs else None
        if "features" in self.sampler.needs and features is None:
            features = self.z if self.model.mode == "last" else LossModel(self.model.model, "last").prepare(inputs)
        self.subset, self.weights = self.sampler.sample(self.n, probs=probs, features=features, seed=self.seed)
        t2 = time.perf_counter()
        s = self.subset
        self.solver = self.solver_factory(self.model, self.z[s], self.y[s], self.weights.to(self.model.theta0.dtype))
        t3 = time.perf_counter()
        self.timings.update({"prepare_s": t1 - t0, "sample_s": t2 - t1, "solver_setup_s": t3 - t2})
        return self

    def probs(self, z: torch.Tensor) -> torch.Tensor:
        """Softmax outputs [N, C] of the model on prepared inputs (:meth:`LossModel.probs`, in chunks)."""
        return self.model.probs(z, self.chunk_size)

    # ------------------------------------------------------------------ scores
    def test_vectors(self, inputs: Any, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(H^-1 grad L(t) [T, D], the explained labels [T]); labels default to the model's prediction."""
        zt = self.model.prepare(inputs)
        if y is None:
            y = self.probs(zt).argmax(-1)
        y = torch.as_tensor(y).long()
        g = self.model.grads(zt, y)
        t0 = time.perf_counter()
        s = self.solver.solve(g)
        self.timings["ihvp_s"] = time.perf_counter() - t0
        return s, y

    def scores_for(self, s_test: torch.Tensor) -> torch.Tensor:
        """s_test [T, D] (inverse-Hessian test vectors) -> scores [T, N], streaming training gradients
        (``normalize=relatif``: each column divided by sqrt of the example's self-influence)."""
        t0 = time.perf_counter()
        out = torch.empty(len(s_test), self.n, dtype=s_test.dtype)
        own = None
        if self.normalize == "relatif":  # self-influence: solved once per fit, in the first scoring pass
            own = self._own if self._own is not None else torch.empty(self.n, dtype=self.model.theta0.dtype)
        for a in range(0, self.n, self.chunk_size):
            g = self.model.grads(self.z[a:a + self.chunk_size], self.y[a:a + self.chunk_size])  # [chunk, D]
            out[:, a:a + len(g)] = s_test @ g.T.to(s_test.dtype)
            if own is not None and self._own is None:
                own[a:a + len(g)] = (g * self.solver.solve(g).to(g.dtype)).sum(1)
        if own is not None:
            self._own = own
            out /= own.to(out.dtype).clamp_min(torch.finfo(out.dtype).tiny).sqrt()
        self.timings["score_s"] = time.perf_counter() - t0
        return out

    def scores(self, inputs: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Influence scores [T, N] of every training example on each test input's loss (positive = helpful)."""
        s, _ = self.test_vectors(inputs, y)
        return self.scores_for(s)

    def group_scores(self, inputs: Any, y: torch.Tensor, aggregate: str = "loss") -> torch.Tensor:
        """Scores [N] for a group of test inputs (e.g. one class's test set): ``loss`` on their *mean*
        loss; ``unit`` the mean of their scores, each query's divided by sqrt(g_t^T (H + lambda I)^-1 g_t)."""
        if aggregate not in AGGREGATE:
            raise ConfigError(f"influence aggregate must be one of {AGGREGATE}, got {aggregate!r}")
        zt, y = self.model.prepare(inputs), torch.as_tensor(y).long()
        if aggregate == "loss":
            return self.scores_for(self.solver.solve(self.model.mean_grad(zt, y).unsqueeze(0)))[0]
        g = self.model.grads(zt, y)  # [T, D]
        s = self.solver.solve(g).to(g.dtype)
        own = (g * s).sum(1, keepdim=True)
        return self.scores_for((s / own.clamp_min(torch.finfo(s.dtype).tiny).sqrt()).mean(0, keepdim=True))[0]

    def self_influence(self) -> torch.Tensor:
        """grad L(i)^T (H + lambda I)^-1 grad L(i) for every training example [N], in chunks."""
        out = torch.empty(self.n, dtype=self.model.theta0.dtype)
        for a in range(0, self.n, self.chunk_size):
            g = self.model.grads(self.z[a:a + self.chunk_size], self.y[a:a + self.chunk_size])
            out[a:a + len(g)] = (g * self.solver.solve(g).to(g.dtype)).sum(1)
        return out


def top_k(scores: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """scores [N] -> positions of the k most helpful (largest) and k most harmful (smallest) examples."""
    k = min(int(k), len(scores))
    return {"helpful": torch.topk(scores, k).indices, "harmful": torch.topk(-scores, k).indices}
