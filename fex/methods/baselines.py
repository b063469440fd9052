"""Per-instance attribution methods over the masker's features (Captum's, RISE, Banzhaf, random), and
:class:`Fex`, the amortized explainer as a method, for fair comparison on the same features.

Letters: B batch, F features, N perturbations, n valid features of one example.

Every method explains the *same* features: for one example x the black box is seen as a
function of a presence vector ``z`` [N, n] over x's valid features,
``g(z) = p(target | masker.apply(x, z))``, and Captum's perturbation methods run on
``input = ones(1, n)``, ``baselines = zeros(1, n)``, ``feature_mask = arange(n)``. This is
modality-free (images, text: anything with a :class:`~fex.maskers.base.Masker`); methods
go one example at a time through ``masker.select`` so variable-length inputs need nothing
special. Queries are whatever the black box counts (``blackbox.queries``).

Integrated Gradients integrates the same ``g`` along ``z = alpha * 1``; with a masker that
interpolates linearly (``base + z * (x - base)``) that equals pixel IG summed over each
feature's region. It needs a differentiable ``nn.Module`` target (a white-box reference).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fex import objective as obj
from fex.blackbox import BlackBox
from fex.errors import InputError, TargetError
from fex.maskers.base import Masker
from fex.module import load_explainer

ORACLE_REWARDS = ("prob", "logprob", "logodds")  # rewards of the target's probability alone (fex.objective)


def _as_target(target: Any, b: int) -> torch.Tensor:
    t = torch.as_tensor(target).long().flatten()
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise InputError(f"target has {t.numel()} entries for a batch of {b}")
    return t


class Method:
    """Base: ``attribute(x, target) -> scores [B, F]`` (0 on invalid features)."""

    name = "method"

    def __init__(self, blackbox: BlackBox, masker: Masker, seed: int = 0) -> None:
        if not isinstance(blackbox, BlackBox):
            blackbox = BlackBox(blackbox)
        self.blackbox = blackbox
        self.masker = masker
        self.seed = int(seed)

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        self.masker.validate(x)
        valid = self.masker.valid(x)
        b, f = valid.shape
        t = _as_target(target, b)
        out = torch.zeros(b, f)
        for i in range(b):
            xi = self.masker.select(x, torch.tensor([i], device=self.masker.device_of(x)))
            idx = valid[i].nonzero().flatten().cpu()
            if idx.numel():
                out[i, idx] = self.attribute_one(xi, int(t[i]), idx, f).detach().float().cpu().flatten()
        return out

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        """Scores [n] for the valid features ``idx`` of a single example ``x`` (batch of 1)."""
        raise NotImplementedError

    # the black box as a function of presence vectors z [N, n] over the valid features
    def presence_fn(self, x: Any, target: int, idx: torch.Tensor, f: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def g(z: torch.Tensor) -> torch.Tensor:
            m = torch.zeros(z.shape[0], f, dtype=torch.float32)
            m[:, idx] = z.detach().float().cpu()
            probs = self.blackbox(self.masker.apply(x, m.to(self.masker.device_of(x)).unsqueeze(0)))
            return probs[:, target].cpu()

        return g


class _Captum(Method):
    """Shared driver for Captum perturbation methods on presence vectors."""

    captum_cls: Any = None

    def __init__(self, blackbox: BlackBox, masker: Masker, perturbations_per_eval: int = 256, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(blackbox, masker, seed)
        self.perturbations_per_eval = int(perturbations_per_eval)
        self.kwargs = kwargs

    def make(self, g: Callable) -> Any:
        return self.captum_cls(g)

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        n = idx.numel()
        g = self.presence_fn(x, target, idx, f)
        torch.manual_seed(self.seed)
        attr = self.make(g).attribute(torch.ones(1, n), baselines=torch.zeros(1, n),
                                      feature_mask=torch.arange(n).unsqueeze(0),
                                      perturbations_per_eval=self.perturbations_per_eval, **self.kwargs)
        return attr[0]


class KernelShap(_Captum):
    """Captum KernelShap; ``n_samples`` coalitions per explanation (= queries)."""

    name = "kernel_shap"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_samples: int = 200, perturbations_per_eval: int = 256,
                 seed: int = 0) -> None:
        super().__init__(blackbox, masker, perturbations_per_eval, seed, n_samples=int(n_samples))

    @property
    def captum_cls(self):  # noqa: D401 - lazy import keeps `import fex` light
        from captum.attr import KernelShap as K

        return K

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        # Captum's coalition-size distribution is empty for one feature (a one-word snippet): its
        # Shapley value is exact, g(1) - g(0) (efficiency), for 2 queries.
        if idx.numel() == 1:
            v = self.presence_fn(x, target, idx, f)(torch.tensor([[1.0], [0.0]]))
            return (v[0] - v[1]).reshape(1)
        return super().attribute_one(x, target, idx, f)


class Lime(_Captum):
    """Captum Lime with its default Lasso surrogate; ``n_samples`` perturbations (= queries)."""

    name = "lime"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_samples: int = 200, perturbations_per_eval: int = 256,
                 alpha: float = 0.01, seed: int = 0) -> None:
        super().__init__(blackbox, masker, perturbations_per_eval, seed, n_samples=int(n_samples))
        self.alpha = float(alpha)

    def make(self, g: Callable) -> Any:
        from captum._utils.models.linear_model import SkLearnLasso
        from captum.attr import Lime as L

        return L(g, interpretable_model=SkLearnLasso(alpha=self.alpha))


class FeatureAblation(_Captum):
    """Occlusion of each feature in turn (n + 1 queries)."""

    name = "feature_ablation"

    @property
    def captum_cls(self):
        from captum.attr import FeatureAblation as FA

        return FA


class ShapleyValueSampling(_Captum):
    """Captum ShapleyValueSampling; ``n_samples`` permutations (about ``n_samples * n + 1`` queries)."""

    name = "shapley_sampling"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_samples: int = 4, perturbations_per_eval: int = 256,
                 seed: int = 0) -> None:
        super().__init__(blackbox, masker, perturbations_per_eval, seed, n_samples=int(n_samples))

    @property
    def captum_cls(self):
        from captum.attr import ShapleyValueSampling as S

        return S


class IntegratedGradients(Method):
    """White-box reference: Captum IG over presence vectors (``n_steps`` forward+backward passes).

    Needs ``blackbox.model`` to be a differentiable ``nn.Module`` and a masker whose ``apply``
    is differentiable in the masks. Each step is counted as one query.
    """

    name = "integrated_gradients"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_steps: int = 50, internal_batch_size: int = 64,
                 seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if not isinstance(self.blackbox.model, nn.Module):
            raise TargetError("integrated_gradients needs a differentiable nn.Module target; this target is a "
                              f"{type(self.blackbox.model).__name__} (drop the method for black-box targets)")
        self.n_steps = int(n_steps)
        self.internal_batch_size = int(internal_batch_size)

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        from captum.attr import IntegratedGradients as IG

        n = idx.numel()
        dev = self.masker.device_of(x)
        idx_d = idx.to(dev)

        def g(z: torch.Tensor) -> torch.Tensor:
            m = torch.zeros(z.shape[0], f, dtype=z.dtype, device=dev).index_copy(1, idx_d, z.to(dev))
            inputs = self.masker.apply(x, m.unsqueeze(0))
            self.blackbox.queries += z.shape[0]
            return self.blackbox.probs_with_grad(inputs)[:, target]

        z1 = torch.ones(1, n, device=dev)
        with torch.enable_grad():
            attr = IG(g).attribute(z1, baselines=torch.zeros_like(z1), n_steps=self.n_steps,
                                   internal_batch_size=self.internal_batch_size)
        return attr[0]


class Rise(Method):
    """RISE (Petsiuk et al. 2018) on the same features: ``n_masks`` Bernoulli(p) feature masks,
    score_f = E[p(target | masked x) * m_f] / p. ``batch`` masks per black-box call."""

    name = "rise"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_masks: int = 1000, p: float = 0.5, batch: int = 500,
                 seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if not 0 < p < 1:
            raise InputError(f"rise p must be in (0, 1), got {p}")
        self.n_masks, self.p, self.batch = int(n_masks), float(p), int(batch)

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        g = self.presence_fn(x, target, idx, f)
        total = torch.zeros(idx.numel())
        for start in range(0, self.n_masks, self.batch):
            z = (torch.rand(min(self.batch, self.n_masks - start), idx.numel(), generator=gen) < self.p).float()
            total += (g(z)[:, None] * z).sum(0)
        return total / (self.n_masks * self.p)


class Banzhaf(Method):
    """Per-instance Banzhaf values by maximum sample reuse (Wang & Jia, "Data Banzhaf", 2023).

    ``n_masks`` masks with every feature kept independently with probability ``keep_rate``;
    ``score_i = mean(r | m_i = 1) - mean(r | m_i = 0)`` over the same masks, an estimate of
    ``Delta_i(p) = E_{m_-i}[r(m_i=1, m_-i) - r(m_i=0, m_-i)]`` (the Banzhaf value at p = 1/2).
    The reward ``r`` is ``prob`` (p(target | masked x)), ``logprob`` or ``logodds`` (as in
    :func:`fex.objective.compute_reward`). When ``2^n <= n_masks``
    every mask is enumerated once, weighted by its probability: the exact value.
    This is the quantity fex's regression objective learns (``fex.objective``): the oracle.
    """

    name = "banzhaf"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_masks: int = 2000, keep_rate: float = 0.5,
                 reward: str = "prob", batch: int = 1000, seed: int = 0, eps: float = 1e-6) -> None:
        super().__init__(blackbox, masker, seed)
        if not 0 < keep_rate < 1:
            raise InputError(f"banzhaf keep_rate must be in (0, 1), got {keep_rate}")
        if reward not in ORACLE_REWARDS:
            raise InputError(f"banzhaf reward must be one of {ORACLE_REWARDS}, got {reward!r}")
        if n_masks < 2:
            raise InputError(f"banzhaf needs n_masks >= 2, got {n_masks}")
        self.n_masks, self.keep_rate, self.reward = int(n_masks), float(keep_rate), reward
        self.batch, self.eps = int(batch), float(eps)

    def masks(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Presence vectors [N, n] and their weights [N] (enumeration) or uniform weights (sampling)."""
        if 2 ** n <= self.n_masks:
            z = ((torch.arange(2 ** n).unsqueeze(1) >> torch.arange(n)) & 1).float()
            w = (self.keep_rate ** z * (1 - self.keep_rate) ** (1 - z)).prod(1)
            return z, w
        gen = torch.Generator().manual_seed(self.seed)
        z = (torch.rand(self.n_masks, n, generator=gen) < self.keep_rate).float()
        return z, torch.ones(self.n_masks)

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        z, w = self.masks(idx.numel())
        g = self.presence_fn(x, target, idx, f)
        r = torch.cat([g(z[s:s + self.batch]) for s in range(0, len(z), self.batch)]).float()
        r = obj.compute_reward(r[None], z[None], idx.numel(), self.reward, eps=self.eps)[0]
        return msr_difference(r, z, w)


def msr_difference(r: torch.Tensor, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted ``mean(r | z_i = 1) - mean(r | z_i = 0)`` per feature: r [N], z [N, n], w [N] -> [n].
    A feature never (or always) present gets 0."""
    w = torch.ones_like(r) if w is None else w
    wr = (w * r).unsqueeze(1)
    on, off = (w.unsqueeze(1) * z).sum(0), (w.unsqueeze(1) * (1 - z)).sum(0)
    diff = (wr * z).sum(0) / on.clamp_min(1e-12) - (wr * (1 - z)).sum(0) / off.clamp_min(1e-12)
    return torch.where((on > 0) & (off > 0), diff, torch.zeros_like(diff))


class RandomAttribution(Method):
    """Uniform random scores (no queries): the floor every method should beat."""

    name = "random"

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        self.masker.validate(x)
        valid = self.masker.valid(x).cpu()
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(valid.shape, generator=gen) * valid


class Fex(Method):
    """The amortized explainer: one policy forward pass per batch, no black-box queries
    (the explained class is given). Pass a loaded ``explainer`` or a ``checkpoint`` path."""

    name = "fex"

    def __init__(self, blackbox: BlackBox, masker: Masker | None = None, explainer: Any = None,
                 checkpoint: str | None = None, allow_target_mismatch: bool = False, seed: int = 0) -> None:
        if explainer is None:
            if checkpoint is None:
                raise InputError("method fex needs a checkpoint (checkpoint=path/to/explainer.ckpt)")
            explainer = load_explainer(checkpoint, target=blackbox, allow_target_mismatch=allow_target_mismatch)
        super().__init__(blackbox, masker if masker is not None else explainer.masker, seed)
        self.explainer = explainer

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        b = self.masker.batch_size(x)
        return self.explainer.explain(x, _as_target(target, b))["scores"].float().cpu()
