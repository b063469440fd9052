"""Path-sampled integrated gradients (PS-IG; Kamalov, Thabtah, Sivaraj, Abdelhamid).

Letters: B batch, F features, n valid features of one example, m path points, D input size.

IG with a baseline ``x'`` sampled on the straight path from the reference ``xb`` to ``x``,
``x'(t) = xb + t (x - xb)``, ``t ~ p`` on [0, 1], averaged over ``t``::

    PSIG(x) = E_t[ IG(x; x'(t)) ] = (x - xb) ⊙ ∫_0^1 F(s) ∇f(xb + s (x - xb)) ds

with ``F`` the CDF of ``p`` (substitute ``s = t + a (1 - t)`` in IG's path integral and swap the
integrals). So PS-IG is path-weighted IG with weight ``F(s)``; for the uniform density
``F(s) = s``. We evaluate it as a deterministic weighted Riemann sum over ``m`` midpoints
``s_k = (k - 1/2) / m`` (``m`` gradient evaluations), not by sampling. Identities (tested):

* completeness: ``sum_i PSIG_i = f(x) - E_t[f(xb + t (x - xb))]`` (``= f(x) - ∫ F'(s) f(γ(s)) ds``);
* ``f = x1 x2``, ``xb = 0``, uniform: ``PSIG = (x1 x2 / 3, x1 x2 / 3)``; linear ``f = w·x``:
  ``PSIG = w ⊙ (x - xb) / 2``.

:class:`PathSampledIG` applies it, like :class:`fex.methods.baselines.IntegratedGradients`, to the black
box as a function of the presence vector ``z`` of the masker's features (path from "all removed",
``z = 0``, to the input, ``z = 1``): a white-box method pooled to the same features.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fex.blackbox import BlackBox
from fex.errors import InputError, TargetError
from fex.maskers.base import Masker
from fex.methods.baselines import Method

DENSITIES = ("uniform", "beta")


def path_cdf(density: str = "uniform", a: float = 1.0, b: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """CDF ``F(s)`` on [0, 1] of the baseline-sampling density (``uniform`` or ``beta(a, b)``)."""
    if density == "uniform":
        return lambda s: s.clamp(0, 1)
    if density == "beta":
        if a <= 0 or b <= 0:
            raise InputError(f"beta density needs a, b > 0, got {a}, {b}")
        from scipy.special import betainc

        return lambda s: torch.as_tensor(betainc(a, b, s.clamp(0, 1).double().cpu().numpy()), dtype=s.dtype,
                                         device=s.device)
    raise InputError(f"psig density must be one of {DENSITIES}, got {density!r}")


def riemann_nodes(m: int, cdf: Callable[[torch.Tensor], torch.Tensor], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints ``s`` [m] and weights ``F(s) / m`` [m] of the weighted Riemann sum."""
    if m < 1:
        raise InputError(f"psig needs n_steps >= 1, got {m}")
    s = (torch.arange(m, dtype=dtype) + 0.5) / m
    return s, cdf(s) / m


def path_sampled_ig(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, baseline: torch.Tensor,
                    n_steps: int = 50, cdf: Callable | None = None, batch: int = 64) -> torch.Tensor:
    """PS-IG of a scalar function ``f: [m, *shape] -> [m]`` at ``x`` [*shape] from ``baseline``.

    ``n_steps`` gradient evaluations of ``f`` (in chunks of ``batch`` path points).
    """
    cdf = cdf or path_cdf("uniform")
    s, w = riemann_nodes(int(n_steps), cdf, dtype=x.dtype if x.is_floating_point() else torch.float64)
    s, w = s.to(x.device), w.to(x.device)
    delta = (x - baseline).detach()
    grad = torch.zeros_like(delta)
    for start in range(0, len(s), batch):
        sk, wk = s[start:start + batch], w[start:start + batch]
        pts = (baseline.detach() + sk.view(-1, *[1] * x.dim()) * delta).requires_grad_(True)
        with torch.enable_grad():
            out = f(pts)
            (g,) = torch.autograd.grad((out * wk.to(out.dtype)).sum(), pts)
        grad += g.sum(0).to(grad.dtype)
    return delta * grad


class PathSampledIG(Method):
    """PS-IG over the masker's feature presence (white box: ``n_steps`` forward+backward passes).

    Needs ``blackbox.model`` to be a differentiable ``nn.Module`` and a masker whose ``apply`` is
    differentiable in the masks (image patches). Each path point is counted as one query, like
    :class:`fex.methods.baselines.IntegratedGradients`.

    Args:
        n_steps: path points ``m`` of the Riemann sum (= gradient evaluations per explanation).
        density: ``uniform`` (weight ``F(s) = s``) or ``beta`` (``F`` = the Beta(a, b) CDF).
        internal_batch_size: path points per forward/backward pass.
    """

    name = "psig"

    def __init__(self, blackbox: BlackBox, masker: Masker, n_steps: int = 50, density: str = "uniform",
                 a: float = 1.0, b: float = 1.0, internal_batch_size: int = 64, seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if not isinstance(self.blackbox.model, nn.Module):
            raise TargetError("psig needs a differentiable nn.Module target; this target is a "
                              f"{type(self.blackbox.model).__name__} (drop the method for black-box targets)")
        self.n_steps, self.internal_batch_size = int(n_steps), int(internal_batch_size)
        self.cdf = path_cdf(density, float(a), float(b))
        riemann_nodes(self.n_steps, self.cdf)  # validate early

    def attribute_one(self, x: Any, target: int, idx: torch.Tensor, f: int) -> torch.Tensor:
        n = idx.numel()
        dev = self.masker.device_of(x)
        idx_d = idx.to(dev)

        def g(z: torch.Tensor) -> torch.Tensor:  # presence [m, n] -> p(target) [m]
            m = torch.zeros(z.shape[0], f, dtype=z.dtype, device=dev).index_copy(1, idx_d, z)
            inputs = self.masker.apply(x, m.unsqueeze(0))
            if not isinstance(inputs, torch.Tensor) or not inputs.requires_grad:
                raise InputError(f"psig needs a masker that is differentiable in its masks (image patches); "
                                 f"{type(self.masker).__name__} is not (for text use integrated_gradients_words)")
            self.blackbox.queries += z.shape[0]
            return self.blackbox.probs_with_grad(inputs)[:, target]

        z1 = torch.ones(n, device=dev)
        return path_sampled_ig(g, z1, torch.zeros_like(z1), self.n_steps, self.cdf, self.internal_batch_size)
