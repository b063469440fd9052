"""Regional leave-one-covariate-out explanations (R-LOCO; after Amoukou & Brunel).

Letters: B batch, F features, n valid features, R regions, N reference inputs.

LOCO effect of feature i on one input: ``d_i = p(target | x) - p(target | x without i)`` through the
masker (``n + 1`` queries, the masker's baseline replaces the feature). R-LOCO groups inputs whose
LOCO vectors look alike into ``R`` regions (k-means on the reference inputs' LOCO vectors,
scikit-learn; on ``|d| / ||d||``, so a region is a set of inputs where the same features matter in the
same proportions, whatever the sign or scale) and explains an input by its *region's* mean LOCO vector: a regional explanation,
stable across the region, in which a feature the model ignores throughout the region gets exactly
zero. An input is assigned to a region either by its own LOCO vector (``assign=loco``: nearest
centroid, ``n + 1`` queries) or, without queries, by a decision tree over the raw inputs fitted to
the reference regions (``assign=input``; tensor inputs of a fixed feature count).

Call :meth:`RegionalLOCO.fit` on reference inputs first. Without it (e.g. ``evaluate.py
method=rloco``) the first batch explained becomes the reference (documented: regions then depend on
that batch; batch size >= ``n_regions`` is needed).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fex.blackbox import BlackBox
from fex.errors import InputError
from fex.maskers.base import Masker
from fex.methods.baselines import Method, _as_target

ASSIGN = ("loco", "input")


class RegionalLOCO(Method):
    """R-LOCO over the masker's features.

    Args:
        n_regions: k of k-means over LOCO vectors (fewer if fewer reference inputs).
        assign: ``loco`` (nearest centroid of the input's LOCO vector) or ``input`` (decision tree on
            the flattened input; 0 queries per explanation after :meth:`fit`).
        tree_depth: ``max_depth`` of the ``assign=input`` tree (``null``: unlimited).
    """

    name = "rloco"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_regions: int = 4, assign: str = "loco",
                 tree_depth: int | None = None, seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if assign not in ASSIGN:
            raise InputError(f"rloco assign must be one of {ASSIGN}, got {assign!r}")
        if int(n_regions) < 1:
            raise InputError(f"rloco needs n_regions >= 1, got {n_regions}")
        self.n_regions, self.assign = int(n_regions), assign
        self.tree_depth = None if tree_depth is None else int(tree_depth)
        self.centroids: torch.Tensor | None = None  # [R, F] region explanations (mean LOCO vectors)
        self.labels: torch.Tensor | None = None  # [N] region of each reference input
        self.fit_queries = 0
        self._tree = None

    # ------------------------------------------------------------------ LOCO
    def loco(self, x: Any, target: Any) -> torch.Tensor:
        """LOCO vectors [B, F] (0 on invalid features): n + 1 queries per input."""
        self.masker.validate(x)
        valid = self.masker.valid(x).cpu()
        b, f = valid.shape
        t = _as_target(target, b)
        out = torch.zeros(b, f)
        for i in range(b):
            idx = valid[i].nonzero().flatten()
            xi = self.masker.select(x, torch.tensor([i], device=self.masker.device_of(x)))
            g = self.presence_fn(xi, int(t[i]), idx, f)
            z = torch.cat([torch.ones(1, idx.numel()), 1 - torch.eye(idx.numel())])  # full, then each one out
            p = g(z)
            out[i, idx] = p[0] - p[1:]
        return out

    # ------------------------------------------------------------------ regions
    def fit(self, x: Any, target: Any) -> "RegionalLOCO":
        """Regions from reference inputs: k-means on their LOCO vectors (queries in ``fit_queries``)."""
        from sklearn.cluster import KMeans

        with self.blackbox.counting() as c:
            d = self.loco(x, target)
        self.fit_queries = c.n
        prof = self._profile(d).numpy()
        k = min(self.n_regions, len(np.unique(prof.round(12), axis=0)))  # no more regions than distinct profiles
        km = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(prof)
        self.labels = torch.as_tensor(km.labels_, dtype=torch.long)
        self.centroids = torch.stack([d[self.labels == r].mean(0) for r in range(k)])
        if self.assign == "input":
            from sklearn.tree import DecisionTreeClassifier

            self._tree = DecisionTreeClassifier(max_depth=self.tree_depth, random_state=self.seed)
            self._tree.fit(self._flat(x), self.labels.numpy())
        return self

    @staticmethod
    def _profile(d: torch.Tensor) -> torch.Tensor:
        """What regions are clustered on: |LOCO| rows scaled to unit length (zero rows stay zero)."""
        a = d.double().abs()
        return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _flat(self, x: Any) -> np.ndarray:
        if not isinstance(x, torch.Tensor):
            raise InputError("rloco assign=input needs tensor inputs (use assign=loco for text)")
        return x.detach().flatten(1).double().cpu().numpy()

    def regions(self, x: Any, target: Any) -> torch.Tensor:
        """Region id [B] of each input."""
        if self.centroids is None:
            self.fit(x, target)
        if self.assign == "input":
            return torch.as_tensor(self._tree.predict(self._flat(x)), dtype=torch.long)
        d = self.loco(x, target)
        prof = self._profile(self.centroids)  # nearest region profile (the k-means centres' analogue)
        return torch.cdist(self._profile(d), prof[:, : d.shape[1]]).argmin(1)

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        self.masker.validate(x)
        valid = self.masker.valid(x).cpu()
        r = self.regions(x, target)
        f = valid.shape[1]
        cent = torch.zeros(self.centroids.shape[0], max(f, self.centroids.shape[1]))
        cent[:, : self.centroids.shape[1]] = self.centroids
        return cent[r][:, :f] * valid
