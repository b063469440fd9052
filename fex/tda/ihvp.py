"""Inverse-Hessian-vector products (H + damping*I)^-1 v on a (sampled) set of training examples.

* :class:`ExactSolver` - the reference: materialise the weighted mean Hessian [D, D], add the
  damping and factorise it once (Cholesky; eigen-decomposition when it is not positive definite).
  Only where D is small (``exact_max_params``), e.g. the last layer of the MNIST CNN (D = 1,290)
  or of the MiniLM classifier (D = 770).
* :class:`IdentitySolver` - no curvature: H taken as 0, so (0 + damping*I)^-1 v = v / damping and
  influence becomes a gradient dot product (TracIn at one checkpoint, Pruthi et al. 2020); with
  ``Influence(normalize="relatif")`` a gradient cosine (Charpiat et al. 2019). Any D, no Hessian.
* :class:`LissaSolver` - LiSSA (Agarwal, Bullins, Hazan 2017) from the maintained ``dattri``
  library (:func:`dattri.func.hessian.ihvp_lissa`): a stochastic Neumann series of Hessian-vector
  products on random minibatches of the subset, never forming H.

dattri's recursion is ``x <- v + (1 - d) x - H_batch x / s`` and returns ``x / s``, which converges
to ``(H + d*s*I)^-1 v`` when ``s`` exceeds the largest eigenvalue of H. We expose the damping as it
appears in the solved system (``damping`` = lambda in H + lambda*I, the same number the exact
solver uses) and pass ``d = damping / scale`` to dattri. ``scale: auto`` = 1.1 x the largest
eigenvalue of H + lambda*I from power iteration.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from fex.errors import ConfigError
from fex.tda.model import LossModel

log = logging.getLogger("fex")


class ExactSolver:
    """(H + damping*I)^-1 V by a direct solve. H: the weighted mean Hessian over (z, y, w)."""

    name = "exact"

    def __init__(self, model: LossModel, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                 damping: float = 0.01, max_params: int = 5000, hessian: torch.Tensor | None = None) -> None:
        if model.dim > int(max_params):
            raise ConfigError(f"exact inverse Hessian of {model.dim} parameters exceeds tda.solver.max_params="
                              f"{max_params}; use tda_solver=lissa or a smaller tda.params")
        h = model.hessian(z, y, w) if hessian is None else hessian
        self.hessian = h
        a = h + float(damping) * torch.eye(len(h), dtype=h.dtype)
        a = 0.5 * (a + a.T)
        self._chol, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0:  # indefinite (a non-convex subset): solve with the eigen-decomposition
            self._chol = None
            evals, evecs = torch.linalg.eigh(a)
            self._inv = (evecs / evals) @ evecs.T

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """V [K, D] -> (H + damping I)^-1 V, rows [K, D]."""
        if self._chol is not None:
            return torch.cholesky_solve(v.T.to(self._chol.dtype), self._chol).T
        return v.to(self._inv.dtype) @ self._inv


class IdentitySolver:
    """(0 + damping*I)^-1 V = V / damping: influence without the Hessian (gradient similarity)."""

    name = "identity"

    def __init__(self, model: LossModel, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                 damping: float = 0.01) -> None:
        if float(damping) <= 0:
            raise ConfigError(f"identity solver damping must be positive, got {damping}")
        self.damping = float(damping)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """V [K, D] -> V / damping."""
        return v / self.damping


def top_eigenvalue(model: LossModel, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, iters: int = 20,
                   seed: int = 0) -> float:
    """Largest eigenvalue of the weighted mean Hessian over (z, y, w), by power iteration on HVPs."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(model.dim, generator=gen, dtype=model.theta0.dtype)
    v /= v.norm()
    lam = 0.0
    grad_fn = torch.func.grad(model.weighted_loss)
    for _ in range(int(iters)):
        hv = torch.func.jvp(lambda t: grad_fn(t, z, y, w), (model.theta0,), (v,))[1]
        lam = float(v @ hv)
        nrm = hv.norm()
        if nrm == 0:
            break
        v = hv / nrm
    return lam


class LissaSolver:
    """LiSSA IHVPs from dattri on the subset (z, y, w).

    Args:
        damping: lambda in (H + lambda I)^-1.
        scale: LiSSA's s (> largest eigenvalue of H + lambda I) or ``auto``.
        depth: recursion depth (Neumann terms); error shrinks like (1 - (mu + lambda)/s)^depth.
        repeats: independent recursions averaged.
        batch_size: examples per HVP (the subset size: a deterministic Neumann series).
        chunk: right-hand sides solved at once (dattri vmaps over them).
    """

    name = "lissa"

    def __init__(self, model: LossModel, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                 damping: float = 0.01, scale: Any = "auto", depth: int = 1000, repeats: int = 1,
                 batch_size: int | None = 64, chunk: int = 32, seed: int = 0) -> None:
        try:
            from dattri.func.hessian import ihvp_lissa
        except ImportError as exc:
            raise ConfigError("tda_solver=lissa needs dattri: pip install -e '.[tda]'") from exc
        self.model, self.seed, self.chunk = model, int(seed), int(chunk)
        dt = model.theta0.dtype
        # dattri differentiates through every input of the function: integer inputs (labels, token
        # ids) travel as floats and are cast back inside
        self._z_dtype = z.dtype
        self.z, self.y = (z if z.is_floating_point() else z.to(dt)), y.to(dt)
        self.w = torch.ones(len(z), dtype=dt) if w is None else torch.as_tensor(w, dtype=dt)
        self.damping = float(damping)
        if scale in (None, "auto"):
            scale = 1.1 * (top_eigenvalue(model, z, y.long(), self.w, seed=seed) + self.damping)
        self.scale = float(scale)
        if self.scale <= 0:
            raise ConfigError(f"LiSSA scale must be positive, got {self.scale}")
        bs = len(z) if batch_size is None else min(int(batch_size), len(z))
        def loss(theta, zf, yf, w):
            return model.weighted_loss(theta, zf.to(self._z_dtype), yf.long(), w)

        self._ihvp = ihvp_lissa(loss, argnums=0, batch_size=bs, num_repeat=int(repeats),
                                recursion_depth=int(depth), damping=self.damping / self.scale, scaling=self.scale)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """V [K, D] -> LiSSA estimate of (H + damping I)^-1 V, rows [K, D]."""
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for s in range(0, len(v), self.chunk):
                out.append(self._ihvp((self.model.theta0, self.z, self.y, self.w), v[s:s + self.chunk].to(self.model.theta0.dtype),
                                      in_dims=(None, 0, 0, 0)).detach())
        return torch.cat(out)
