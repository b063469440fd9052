"""The loss of a classifier as a pure function of a flat parameter subset.

Influence functions need, for a chosen parameter subset theta (flat vector of length D):
per-example gradients of the training loss, Hessian-vector products and (when D is small) the
Hessian itself. :class:`LossModel` turns any classifier ``nn.Module`` into that:

* ``params="last"`` (default): theta = weight and bias of the model's last ``nn.Linear`` (the
  layer whose output is the logits). Its input (the penultimate features, captured with a forward
  hook) is computed once per example, so every gradient and HVP is a cheap linear-softmax one.
* ``params="all"`` or a list of parameter-name prefixes (``["net.7", "net.10"]``): theta =
  those parameters; the loss runs the whole model through ``torch.func.functional_call``.

Letters: N examples, D = len(theta), C classes, Z the per-example input of the loss
(features [N, P] for ``last``, model inputs otherwise).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fex.errors import ConfigError, TargetError


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the last ``nn.Linear`` in registration order: the logit layer of
    SmallCNN (``net.10``) and of transformers sequence classifiers (``classifier``)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise TargetError(f"{type(model).__name__} has no nn.Linear layer; use tda.params=all")
    return found[-1]


def _is_text(model: nn.Module) -> bool:
    return hasattr(model, "tokenizer") and hasattr(model, "encode")


class LossModel:
    """Cross-entropy loss of ``model`` as a function of a flat parameter subset ``theta`` [D].

    Args:
        model: the classifier (``nn.Module``: inputs -> logits [N, C]); kept in eval mode.
        params: ``last`` | ``all`` | list of parameter-name prefixes.
        chunk_size: examples per forward pass when preparing inputs (at most ``model.chunk_size`` where
            the model has one: a classifier that runs larger batches in reordered chunks).
    """

    def __init__(self, model: nn.Module, params: str | Sequence[str] = "last", chunk_size: int = 256) -> None:
        if not isinstance(model, nn.Module):
            raise TargetError("training-data attribution needs gradients: the target must be an nn.Module")
        self.model = model.eval()
        self.chunk_size = int(chunk_size)
        inner = getattr(model, "chunk_size", None)  # a classifier that splits (and reorders) larger batches
        if isinstance(inner, int) and inner >= 1:  # (HFTextClassifier): one pass per chunk keeps rows in order
            self.chunk_size = min(self.chunk_size, inner)
        self.text = _is_text(model)
        if params == "last":
            self.mode = "last"
            name, layer = last_linear(model)
            self.layer = layer
            pre = f"{name}." if name else ""
            named = {f"{pre}weight": layer.weight}
            if layer.bias is not None:
                named[f"{pre}bias"] = layer.bias
        else:
            self.mode = "subset"
            prefixes = None if params == "all" else [str(p) for p in params]
            named = {n: p for n, p in model.named_parameters()
                     if prefixes is None or any(n == q or n.startswith(q + ".") for q in prefixes)}
            if not named:
                raise ConfigError(f"tda.params={params!r} selects no parameters of {type(model).__name__}")
        self.names = list(named)
        self.shapes = [p.shape for p in named.values()]
        self.theta0 = torch.cat([p.detach().reshape(-1) for p in named.values()]).clone()
        self._frozen = {n: p.detach() for n, p in model.named_parameters() if n not in named}
        self._frozen.update({n: b.detach() for n, b in model.named_buffers()})

    @property
    def dim(self) -> int:
        return int(self.theta0.numel())

    # ------------------------------------------------------------------ inputs -> Z
    @torch.no_grad()
    def prepare(self, inputs: Any) -> torch.Tensor:
        """Inputs (a tensor batch, or a list of strings for a text target) -> Z, in chunks."""
        n = len(inputs)
        outs = [self._prepare_chunk(inputs[s:s + self.chunk_size]) for s in range(0, n, self.chunk_size)]
        return torch.cat(outs) if outs else torch.zeros(0)

    def _prepare_chunk(self, x: Any) -> torch.Tensor:
        if self.mode == "last":
            got: list[torch.Tensor] = []
            h = self.layer.register_forward_hook(lambda m, inp, out: got.append(inp[0].detach()))
            try:
                logits = self.model(x)
            finally:
                h.remove()
            if len(got) != 1:
                raise TargetError(f"the model called its last nn.Linear {len(got)} times for one batch of {len(x)}; "
                                  "use tda.params=all, or give the model a chunk_size")
            feats = got[0].reshape(len(got[0]), -1)
            if not torch.allclose(self.layer(feats), logits, atol=1e-4, rtol=1e-4):
                raise TargetError("the last nn.Linear's output is not the model's logits; use tda.params=all")
            return feats
        if self.text:  # token ids and attention mask padded to max_length: [N, 2, L]
            enc = self.model.tokenizer(list(x), padding="max_length", truncation=True,
                                       max_length=self.model.max_length, return_tensors="pt")
            return torch.stack([enc["input_ids"], enc["attention_mask"]], 1)
        return torch.as_tensor(x)

    # ------------------------------------------------------------------ the loss
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, [s.numel() for s in self.shapes])
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes)}

    @torch.no_grad()
    def probs(self, z: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Softmax outputs [N, C] at the trained parameters on prepared inputs, in chunks."""
        return torch.cat([self.logits(self.theta0, z[s:s + chunk_size]).softmax(-1)
                          for s in range(0, len(z), chunk_size)])

    def logits(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """theta [D], Z [N, ...] -> logits [N, C]."""
        p = self.unflatten(theta)
        if self.mode == "last":
            w, b = p[self.names[0]], (p[self.names[1]] if len(self.names) > 1 else None)
            return F.linear(z, w, b)
        params = {**self._frozen, **p}
        if self.text:
            inner = self.model.model
            params = {k[len("model."):]: v for k, v in params.items() if k.startswith("model.")}
            return torch.func.functional_call(inner, params, (), {"input_ids": z[:, 0], "attention_mask": z[:, 1]}).logits
        return torch.func.functional_call(self.model, params, (z,))

    def loss(self, theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the batch (a scalar): the function whose Hessian is inverted."""
        return F.cross_entropy(self.logits(theta, z), y)

    def weighted_loss(self, theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_i w_i * loss_i / sum_i w_i (sampler weights)."""
        return (F.cross_entropy(self.logits(theta, z), y, reduction="none") * w).sum() / w.sum()

    # ------------------------------------------------------------------ derivatives
    def grads(self, z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example gradients [N, D] of a chunk (vmap; a loop where vmap cannot run the model)."""
        theta = self.theta0 if theta is None else theta

        def one(t, zi, yi):
            return self.loss(t, zi.unsqueeze(0), yi.unsqueeze(0))

        try:
            return torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))(theta, z, y)
        except (RuntimeError, NotImplementedError):
            return torch.stack([torch.func.grad(one)(theta, zi, yi) for zi, yi in zip(z, y)])

    def mean_grad(self, z: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Gradient [D] of the mean loss over a batch (e.g. all test examples of a class)."""
        theta = (self.theta0 if theta is None else theta).clone().requires_grad_(True)
        return torch.autograd.grad(self.loss(theta, z, y), theta)[0]

    def hessian(self, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                chunk_size: int | None = None) -> torch.Tensor:
        """The (weighted) mean Hessian [D, D] of the loss over Z, accumulated in chunks."""
        n, cs = len(z), int(chunk_size or self.chunk_size)
        dt = self.theta0.dtype
        w = torch.ones(n, dtype=dt) if w is None else torch.as_tensor(w, dtype=dt)
        hfn: Callable = torch.func.hessian(self.weighted_loss)
        total = torch.zeros(self.dim, self.dim, dtype=dt)
        for s in range(0, n, cs):
            ws = w[s:s + cs]
            total += hfn(self.theta0, z[s:s + cs], y[s:s + cs], ws) * ws.sum()
        return total / w.sum()
