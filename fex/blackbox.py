"""The black box: the classifier being explained, queried but never trained or saved.

It is deliberately *not* an ``nn.Module``: assigning it to a LightningModule attribute
does not register the target's parameters, so they never reach a state_dict, an
optimizer, DDP's gradient sync or a checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Any, Callable, Iterator

import torch
from torch import nn

from fex.errors import TargetError

OUTPUT_KINDS = ("logits", "probs", "log_probs")
log = logging.getLogger("fex")
PROB_TOL = 1e-3  # rows of probabilities must sum to 1 within this (float32 softmax of a real model: ~1e-6)


def _slice(inputs: Any, start: int, stop: int) -> Any:
    """Chunk a batch of model inputs: a tensor, a list/tuple of items or a dict of tensors."""
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop]
    if isinstance(inputs, dict):
        return {k: _slice(v, start, stop) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return list(inputs[start:stop])
    raise TargetError(f"cannot batch inputs of type {type(inputs).__name__}")


def batch_len(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return batch_len(next(iter(inputs.values())))
    return len(inputs)


class BlackBox:
    """Wrap any ``nn.Module`` or callable mapping a batch of inputs to class scores [N, C].

    Calls run under ``torch.no_grad()`` (not ``inference_mode``: outputs feed a loss),
    in chunks of at most ``max_batch_size``, and count every input evaluated in
    ``self.queries``. The result is always probabilities [N, C] (float32).

    Args:
        model: ``nn.Module`` (put in eval mode) or callable.
        output: what ``model`` returns: ``"logits"``, ``"probs"`` or ``"log_probs"``.
        max_batch_size: largest chunk passed to ``model`` at once.
        num_classes: expected C; checked on every call when given.
        name: human-readable identity used in the fingerprint (e.g. the config's _target_).
    """

    def __init__(
        self,
        model: nn.Module | Callable[[Any], torch.Tensor],
        output: str = "logits",
        max_batch_size: int = 512,
        num_classes: int | None = None,
        name: str | None = None,
        config: dict | None = None,
    ) -> None:
        if isinstance(model, BlackBox):
            raise TypeError("model is already a BlackBox")
        if not callable(model):
            raise TargetError(f"target must be an nn.Module or callable, got {type(model).__name__}")
        if output not in OUTPUT_KINDS:
            raise TargetError(f"target output must be one of {OUTPUT_KINDS}, got {output!r}")
        if max_batch_size < 1:
            raise TargetError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.output = output
        self.max_batch_size = int(max_batch_size)
        self.num_classes = num_classes
        self.name = name or _qualname(model)
        self.config = dict(config) if config else {}
        self.queries = 0
        self._warned_kind = False
        self.device = torch.device("cpu")
        if isinstance(model, nn.Module):
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            try:
                self.device = next(model.parameters()).device
            except StopIteration:
                pass

    # ------------------------------------------------------------------ queries
    def to(self, device: torch.device | str) -> "BlackBox":
        self.device = torch.device(device)
        if isinstance(self.model, nn.Module):
            self.model.to(self.device)
        return self

    def __call__(self, inputs: Any) -> torch.Tensor:
        """Class probabilities [N, C] for a batch of N inputs (counted as N queries)."""
        n = batch_len(inputs)
        if n == 0:
            raise TargetError("black box called with an empty batch")
        chunks = []
        with torch.no_grad():
            for start in range(0, n, self.max_batch_size):
                part = _slice(inputs, start, start + self.max_batch_size)
                if isinstance(part, torch.Tensor):
                    part = part.to(self.device)
                out = self.model(part)
                out = getattr(out, "logits", out)  # transformers ModelOutput
                chunks.append(self._check(out, batch_len(part)))
        self.queries += n
        scores = torch.cat(chunks)
        if self.output == "logits":
            return torch.softmax(scores, dim=-1)
        if self.output == "log_probs":
            return scores.exp()
        return scores

    def _check(self, out: Any, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            try:
                out = torch.as_tensor(out)
            except Exception as exc:  # noqa: BLE001 - report what came back
                raise TargetError(f"target returned {type(out).__name__}, expected a tensor of class scores [N, C]") from exc
        if out.dim() != 2 or out.shape[0] != n:
            raise TargetError(f"target returned shape {tuple(out.shape)} for {n} inputs; expected class scores [{n}, C]")
        if self.num_classes is not None and out.shape[1] != self.num_classes:
            raise TargetError(f"target returned {out.shape[1]} classes; expected {self.num_classes} "
                              "(the explainer's / data config's class count)")
        out = out.float()
        if not torch.isfinite(out).all():
            raise TargetError("target returned NaN or Inf scores")
        self._check_kind(out)
        return out

    def _check_kind(self, out: torch.Tensor) -> None:
        """Scores must be of the declared kind: a wrong ``output`` would silently squash or blow up rewards."""
        if self.output == "probs":
            if (out < -1e-4).any() or (out > 1 + 1e-4).any() or ((out.sum(-1) - 1).abs() > PROB_TOL).any():
                raise TargetError("target was declared output=probs but its rows are not probabilities "
                                  f"(values {out.min():.3g}..{out.max():.3g}, row sums up to {out.sum(-1).max():.3g}); "
                                  "use output=logits or output=log_probs")
        elif self.output == "log_probs":
            lse = torch.logsumexp(out, dim=-1)
            if (out > 1e-4).any() or (lse.abs() > PROB_TOL).any():
                raise TargetError("target was declared output=log_probs but its rows are not log-probabilities "
                                  f"(max {out.max():.3g}, logsumexp up to {lse.abs().max():.3g} from 0); use output=logits")
        elif not self._warned_kind and out.shape[1] > 1 and (out >= 0).all() and (out <= 1).all() \
                and ((out.sum(-1) - 1).abs() <= PROB_TOL).all():
            self._warned_kind = True
            log.warning("target %s is declared output=logits but returns rows that look like probabilities "
                        "(in [0, 1], summing to 1); if so, set target.output=probs (softmax of probabilities "
                        "flattens every reward)", self.name)

    def probs_with_grad(self, inputs: Any) -> torch.Tensor:
        """Class probabilities of a differentiable ``nn.Module`` target WITH autograd (white-box methods such
        as integrated gradients); not chunked and not counted: the caller counts its gradient passes."""
        out = self.model(inputs)
        out = getattr(out, "logits", out)
        return torch.softmax(out, -1) if self.output == "logits" else out.exp() if self.output == "log_probs" else out

    def reset_queries(self) -> int:
        n, self.queries = self.queries, 0
        return n

    @contextlib.contextmanager
    def counting(self) -> Iterator["QueryCount"]:
        """``with bb.counting() as c: ...`` -> ``c.n`` queries made inside (they still count in ``queries``)."""
        c = QueryCount()
        start = self.queries
        try:
            yield c
        finally:
            c.n = self.queries - start

    @contextlib.contextmanager
    def uncounted(self) -> Iterator["QueryCount"]:
        """Queries made inside (metrics, validation, bookkeeping) are not charged to ``queries``;
        the yielded ``QueryCount`` still tells how many there were."""
        start = self.queries
        try:
            with self.counting() as c:
                yield c
        finally:
            self.queries = start

    # -------------------------------------------------------------- identity
    def fingerprint(self) -> dict:
        """Identity of the target: its name/config and a hash of its weights (if any)."""
        return {"name": self.name, "output": self.output, "config": self.config, "weights_sha256": weights_hash(self.model)}


class QueryCount:
    """How many black-box queries a ``with bb.counting()`` / ``bb.uncounted()`` block made (``n``)."""

    def __init__(self) -> None:
        self.n = 0

    def __repr__(self) -> str:
        return f"QueryCount(n={self.n})"


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', type(obj).__name__)}"


def weights_hash(model: Any) -> str | None:
    """sha256 over a module's state_dict (names, shapes, bytes); None for weightless callables."""
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        return None
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(json.dumps([list(t.shape), str(t.dtype)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_num_classes(bb: BlackBox, num_classes: int) -> None:
    """The explainer explains ``num_classes`` classes: a black box declared with another count is refused
    now; one without a declared count gets it, so its first query checks what it returns."""
    if bb.num_classes is not None and int(bb.num_classes) != int(num_classes):
        raise TargetError(f"the target has {bb.num_classes} classes but the explainer explains {num_classes}")
    bb.num_classes = int(num_classes)


def fingerprints_match(saved: dict, current: dict) -> tuple[bool, str]:
    """Compare two fingerprints; returns (ok, reason)."""
    if saved.get("weights_sha256") != current.get("weights_sha256"):
        return False, (
            f"target weights differ (checkpoint {str(saved.get('weights_sha256'))[:12]}, "
            f"given {str(current.get('weights_sha256'))[:12]})"
        )
    if saved.get("weights_sha256") is None and saved.get("name") != current.get("name"):
        return False, f"target differs (checkpoint {saved.get('name')}, given {current.get('name')})"
    return True, ""
