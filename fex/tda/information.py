"""Bayesian information-theoretic data attribution on tangent features (after Tailor, Felicioni,
Ciosek, arXiv 2604.03858; the construction below is ours where the paper's text was not available).

The surrogate. Tangent features phi(x) [D] are the per-example loss gradients of the chosen
parameters (:class:`LossModel`: the last layer by default). A Bayesian linear model in tangent space
(equivalently a Gaussian process with kernel phi(x)^T phi(x') / (N lambda) and unit noise) has the
posterior precision

    A = sum_i phi_i phi_i^T + N lambda I          (= N (F + lambda I), F the empirical Fisher)

so each training example contributes a rank-one term and the prior carries the same damping lambda
as :class:`~fex.tda.influence.Influence`. The predictive variance at a query q is
v(q) = phi_q^T A^-1 phi_q; a Gaussian's entropy is 1/2 log(2 pi e v).

Information loss (``mode: exact``). Removing a subset S raises the entropy at q by

    IL_q(S) = 1/2 log( v_{-S}(q) / v(q) ),   A_{-S} = A - Phi_S^T Phi_S   (a rank-|S| downdate).

In whitened coordinates psi = L^-1 phi (A = L L^T): b_i = psi_i^T psi_q (the tangent-space influence
of i on q: positive = removing i raises q's loss), h_i = |psi_i|^2 (the leverage, < 1) and
v = |psi_q|^2. For one example (Sherman-Morrison)

    IL_q(i) = 1/2 log(1 + b_i^2 / (v (1 - h_i)))

- monotone in |influence| up to the leverage factor, which is why it ranks single examples like
classical influence. For a subset the downdates compound (greedy: :meth:`select`): once one of a
group of near-duplicates is removed the rest still carry its information, so a removed duplicate
adds little and the greedy subset spreads over distinct examples. Self-information
``-1/2 log(1 - h_i)`` (the entropy increase at x_i itself) is :meth:`self_information`. Exact mode
factorises the D x D matrix A: small parameter subsets only (``max_params``).

Information gain with a variance correction (``mode: relaxed``). For any D, and for retrieval over
the whole training set: the information a training example alone gives about q under the prior,

    IG_q(i) = -1/2 log(1 - b_i^2 / (v (1 + h_i))),   psi = phi / sqrt(N lambda)  (no Hessian, no solve),

where the variance correction (1 + h_i) (the example's own prior variance plus the noise) discounts
examples with large gradients (outliers, mislabels) that raw gradient dot products favour. Both
modes are a search over stored vectors: IL = 1/2 log(1 + (psi~_i^T psi^_q)^2) with
psi~_i = psi_i / sqrt(1 - h_i) and IG = -1/2 log(1 - (psi~_i^T psi^_q)^2) with psi~_i = psi_i /
sqrt(1 + h_i), psi^_q = psi_q / |psi_q|: a maximum-|inner-product| search, exact and chunked here
(a vector database would hold psi~). Its greedy subset adds examples (forward information gain),
which is submodular-like: a second copy of an added example gives almost nothing.

Letters: N training examples, T queries, D = len(theta), K selected subset size.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from fex.errors import ConfigError, DataError
from fex.tda.influence import AGGREGATE
from fex.tda.model import LossModel

MODES = ("exact", "relaxed")


def information_from_whitened(b: torch.Tensor, v: torch.Tensor, h: torch.Tensor, mode: str) -> torch.Tensor:
    """Entropy change (nats) of one example: b [.., N] = psi_i^T psi_q, v [.., 1] = |psi_q|^2, h [N] = |psi_i|^2.

    exact: 1/2 log(1 + b^2 / (v (1 - h))) (removal); relaxed: -1/2 log(1 - b^2 / (v (1 + h))) (addition).
    """
    if mode == "exact":
        return 0.5 * torch.log1p(b ** 2 / (v * (1 - h)).clamp_min(1e-300))
    r = (b ** 2 / (v * (1 + h)).clamp_min(1e-300)).clamp(max=1 - 1e-15)
    return -0.5 * torch.log1p(-r)


class InformationAttributor:
    """Information-theoretic attribution for one model and one training set (same interface as Influence).

    Args:
        model: the :class:`LossModel` (parameter subset: tangent features are its loss gradients).
        damping: lambda; prior precision N lambda (the same number as influence's damping).
        mode: ``exact`` (information loss, D x D factorisation) | ``relaxed`` (information gain with
            the variance correction; any D).
        chunk_size: training examples per gradient chunk.
        max_params: largest D the exact mode factorises.
        store: keep the whitened features psi [N, D] (one gradient pass in all); False recomputes
            them per scoring call (memory O(chunk * D), one gradient pass per call).
        pool: greedy subset candidates (the top ``pool`` single-example scores; null: every example).
    """

    def __init__(self, model: LossModel, damping: float = 0.1, mode: str = "exact", noise: float = 0.3,
                 chunk_size: int = 256, max_params: int = 5000, store: bool = True, pool: int | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"information mode must be one of {MODES}, got {mode!r}")
        if float(damping) <= 0:
            raise ConfigError(f"information damping must be positive (the prior precision), got {damping}")
        if mode == "exact" and model.dim > int(max_params):
            raise ConfigError(f"exact information loss factorises a {model.dim} x {model.dim} matrix, above "
                              f"max_params={max_params}; use mode=relaxed or a smaller tda.params")
        if float(noise) <= 0:
            raise ConfigError(f"information noise must be positive (the GP's observation variance), got {noise}")
        self.model, self.damping, self.mode, self.noise = model, float(damping), mode, float(noise)
        self.chunk_size, self.store = int(chunk_size), bool(store)
        self.pool = None if pool is None else int(pool)
        self.timings: dict[str, float] = {}
        self.gradients = 0  # per-example gradients computed so far (the cost unit shared with Influence)

    # ------------------------------------------------------------------ fit
    def _grads(self, a: int, b: int) -> torch.Tensor:
        self.gradients += min(b, self.n) - a
        return self.model.grads(self.z[a:b], self.y[a:b]).double() / math.sqrt(self.noise)

    def fit(self, inputs: Any, y: torch.Tensor) -> "InformationAttributor":
        """Tangent features of the training set; exact mode: A and its Cholesky factor; leverages h [N]."""
        t0 = time.perf_counter()
        y = torch.as_tensor(y).long()
        if len(inputs) != len(y) or len(y) == 0:
            raise DataError(f"{len(inputs)} training inputs but {len(y)} labels")
        self.z, self.y, self.n = self.model.prepare(inputs), y, len(y)
        d, cs = self.model.dim, self.chunk_size
        prior = self.n * self.damping
        t1 = time.perf_counter()
        starts = range(0, self.n, cs)
        held: list[torch.Tensor] = []  # raw tangent features, exact mode with store (else recomputed)
        if self.mode == "exact":
            a = prior * torch.eye(d, dtype=torch.double)
            for s in starts:
                g = self._grads(s, s + cs)
                a += g.T @ g
                if self.store:
                    held.append(g)
            self._chol = torch.linalg.cholesky(a)
        self.h = torch.empty(self.n, dtype=torch.double)
        stored = []
        for j, s in enumerate(starts):
            g = held[j] if held else self._grads(s, s + cs)
            psi = self._whiten(g)
            self.h[s:s + len(g)] = (psi ** 2).sum(1)
            if self.store:
                stored.append(psi.to(self.model.theta0.dtype))
        del held
        self.psi = torch.cat(stored) if self.store else None
        if self.mode == "exact" and float(self.h.max()) >= 1:
            raise DataError(f"leverage {float(self.h.max()):.3g} >= 1: the damping is too small for a stable downdate")
        self.timings.update({"prepare_s": t1 - t0, "fit_s": time.perf_counter() - t1})
        return self

    def _whiten(self, g: torch.Tensor) -> torch.Tensor:
        """Tangent features [M, D] -> psi [M, D]: L^-1 phi (exact) or phi / sqrt(N lambda) (relaxed)."""
        if self.mode == "exact":
            return torch.linalg.solve_triangular(self._chol, g.T.double(), upper=False).T
        return g.double() / math.sqrt(self.n * self.damping)

    def _psi(self, a: int, b: int) -> torch.Tensor:
        if self.psi is not None:
            return self.psi[a:b].double()
        return self._whiten(self._grads(a, b))

    # ------------------------------------------------------------------ queries
    def probs(self, z: torch.Tensor) -> torch.Tensor:
        """Softmax outputs [N, C] of the model on prepared inputs (:meth:`LossModel.probs`, in chunks)."""
        return self.model.probs(z, self.chunk_size)

    def query_vectors(self, inputs: Any, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(whitened query features psi_q [T, D], the explained labels [T]); labels default to the prediction."""
        zt = self.model.prepare(inputs)
        if y is None:
            y = self.probs(zt).argmax(-1)
        y = torch.as_tensor(y).long()
        return self._whiten(self.model.grads(zt, y)), y

    def group_vector(self, inputs: Any, y: torch.Tensor, aggregate: str = "loss") -> torch.Tensor:
        """psi [1, D] for a group of queries (e.g. every input showing a behaviour): ``loss`` whitens the
        gradient of their *mean* loss; ``unit`` averages their whitened vectors each scaled to unit length
        (every query counts once, as in :meth:`Influence.group_scores <fex.tda.influence.Influence.group_scores>`)."""
        if aggregate not in AGGREGATE:
            raise ConfigError(f"information aggregate must be one of {AGGREGATE}, got {aggregate!r}")
        zt, y = self.model.prepare(inputs), torch.as_tensor(y).long()
        if aggregate == "loss":
            return self._whiten(self.model.mean_grad(zt, y).unsqueeze(0))
        psi = self._whiten(self.model.grads(zt, y))
        return (psi / psi.norm(dim=1, keepdim=True).clamp_min(1e-300)).mean(0, keepdim=True)

    def scores_for(self, psi_q: torch.Tensor) -> torch.Tensor:
        """psi_q [T, D] -> signed information [T, N]: magnitude the entropy change at each query (nats),
        sign that of the tangent-space influence b (positive = helpful: removing it raises q's loss)."""
        t0 = time.perf_counter()
        psi_q = psi_q.double()
        v = (psi_q ** 2).sum(1, keepdim=True)  # [T, 1]
        out = torch.empty(len(psi_q), self.n, dtype=torch.double)
        for a in range(0, self.n, self.chunk_size):
            p = self._psi(a, a + self.chunk_size)
            b = psi_q @ p.T  # [T, chunk]
            out[:, a:a + len(p)] = torch.sign(b) * information_from_whitened(b, v, self.h[a:a + len(p)], self.mode)
        self.timings["score_s"] = time.perf_counter() - t0
        return out

    def scores(self, inputs: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Signed information [T, N] of every training example at each query (see :meth:`scores_for`)."""
        return self.scores_for(self.query_vectors(inputs, y)[0])

    def group_scores(self, inputs: Any, y: torch.Tensor, aggregate: str = "loss") -> torch.Tensor:
        """Signed information [N] at a group of queries (:meth:`group_vector`)."""
        return self.scores_for(self.group_vector(inputs, y, aggregate))[0]

    def self_information(self) -> torch.Tensor:
        """-1/2 log(1 - h_i) [N]: the entropy increase at x_i itself when i is removed (exact) or
        1/2 log(1 + h_i), the information x_i gives about itself under the prior (relaxed)."""
        return -0.5 * torch.log1p(-self.h) if self.mode == "exact" else 0.5 * torch.log1p(self.h)

    # ------------------------------------------------------------------ subsets
    def select_for(self, psi_q: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Greedy subset of size k for one whitened query psi_q [D] (or [1, D]).

        exact: remove one example at a time, each the largest information loss given those already
        removed (rank-one Sherman-Morrison downdates of A); relaxed: add one at a time from the
        prior, each the largest information gain given those already added. Returns ``indices``
        [K] (positions in the training set, in selection order), ``gains`` [K] (nats each step) and
        ``total`` (the subset's information, nats: their sum, exact for the chosen subset).
        """
        psi_q = psi_q.reshape(-1).double()
        sgn = 1.0 if self.mode == "exact" else -1.0  # +1: downdate (removal), -1: update (addition)
        single = self.scores_for(psi_q.unsqueeze(0))[0].abs()
        k = min(int(k), self.n)
        pool = torch.arange(self.n) if self.pool is None or self.pool >= self.n else torch.topk(single, self.pool).indices
        pool = pool.sort().values
        if k > len(pool):
            raise ConfigError(f"subset size {k} exceeds the greedy pool of {len(pool)} candidates")
        p = torch.cat([self._psi(a, a + self.chunk_size) for a in range(0, self.n, self.chunk_size)])[pool] \
            if self.psi is None else self.psi[pool].double()  # [M, D]
        b, h = p @ psi_q, self.h[pool].clone()  # [M], [M]
        v = float(psi_q @ psi_q)
        us: list[torch.Tensor] = []  # M_t = I + sgn * sum u u^T (the whitened downdated inverse)
        alive = torch.ones(len(pool), dtype=torch.bool)
        picked, gains = [], []
        for _ in range(k):
            d = 1 - sgn * h
            gain = sgn * 0.5 * torch.log1p(sgn * b ** 2 / (v * d).clamp_min(1e-300))
            gain = torch.where(alive, gain, torch.full_like(gain, -math.inf))
            j = int(gain.argmax())
            picked.append(int(pool[j]))
            gains.append(float(gain[j]))
            alive[j] = False
            mpsi = p[j].clone()  # M psi_j
            for u in us:
                mpsi += sgn * u * (u @ p[j])
            dj = float(d[j])
            u = mpsi / math.sqrt(dj)
            us.append(u)
            c = p @ u  # [M] = psi_m^T M psi_j / sqrt(d_j)
            bj = float(b[j])
            v += sgn * bj ** 2 / dj
            b = b + sgn * c * (bj / math.sqrt(dj))
            h = h + sgn * c ** 2
        g = torch.tensor(gains, dtype=torch.double)
        return {"indices": torch.tensor(picked, dtype=torch.long), "gains": g, "total": g.sum()}

    def select(self, inputs: Any, y: torch.Tensor | None = None, k: int = 10) -> list[dict[str, torch.Tensor]]:
        """Greedy subset of size k for each query (see :meth:`select_for`)."""
        psi_q, _ = self.query_vectors(inputs, y)
        return [self.select_for(row, k) for row in psi_q]

    def subset_information(self, psi_q: torch.Tensor, subset: torch.Tensor) -> float:
        """The information (nats) of a given subset at one whitened query, in closed form (Woodbury):
        exact: 1/2 log(1 + b_S^T (I - K_S)^-1 b_S / v); relaxed: -1/2 log(1 - b_S^T (I + K_S)^-1 b_S / v),
        with K_S = Psi_S Psi_S^T. The reference for :meth:`select_for`'s running total."""
        psi_q = psi_q.reshape(-1).double()
        p = torch.cat([self._psi(int(i), int(i) + 1) for i in subset])  # [S, D]
        b, v = p @ psi_q, float(psi_q @ psi_q)
        sgn = 1.0 if self.mode == "exact" else -1.0
        m = torch.eye(len(p), dtype=torch.double) - sgn * (p @ p.T)
        return float(sgn * 0.5 * torch.log1p(sgn * (b @ torch.linalg.solve(m, b)) / v))
