"""Cost accounting: forward and backward passes of a target (or any ``nn.Module``), and peak memory.

Letters: B batch (rows), N explanations.

``with PassCounter(module) as pc: ...`` counts, in input rows, every *outermost* forward call of
``module`` (or of a submodule holding at least half of its parameters, so wrappers that call their
inner model directly, like :class:`fex.targets.text.HFTextClassifier`, are counted once, and an
embedding layer called on its own is not) and every backward pass through such a call's output:

* ``pc.forward`` - rows evaluated forward (a black-box query of one input = 1);
* ``pc.backward`` - rows whose output was back-propagated (one gradient evaluation per row);
* ``pc.calls`` - outermost forward calls (batched calls count once).

So IG with ``m`` steps costs ``m`` forward and ``m`` backward rows per explanation, KernelShap(N)
``N`` forward rows and none backward, and FEX one policy call per batch.
"""
from __future__ import annotations

import ctypes
import gc
import tracemalloc
from typing import Any

import torch
from torch import nn


def _rows(args: tuple, kwargs: dict) -> int:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor):
            return int(v.shape[0]) if v.dim() else 1
        if isinstance(v, dict):
            for t in v.values():
                if isinstance(t, torch.Tensor):
                    return int(t.shape[0])
            if "text" in v:
                return len(v["text"])
        if isinstance(v, (list, tuple)):
            return len(v)
    return 1


def _out_tensor(out: Any) -> torch.Tensor | None:
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


class PassCounter:
    """Count forward/backward rows through ``module`` inside a ``with`` block (see the module docstring)."""

    def __init__(self, module: Any) -> None:
        self.module = module if isinstance(module, nn.Module) else None
        self.forward = self.backward = self.calls = 0
        self._depth = 0
        self._handles: list = []

    def _roots(self) -> list[nn.Module]:
        m = self.module
        total = sum(p.numel() for p in m.parameters())
        roots = [m]
        for sub in m.modules():
            if sub is not m and total and sum(p.numel() for p in sub.parameters()) * 2 >= total:
                roots.append(sub)
        return roots

    def __enter__(self) -> "PassCounter":
        if self.module is None:
            return self
        for r in self._roots():
            self._handles.append(r.register_forward_pre_hook(self._pre, with_kwargs=True))
            self._handles.append(r.register_forward_hook(self._post, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._depth == 0:
            self._rows_now = _rows(args, kwargs)
        self._depth += 1

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        self._depth -= 1
        if self._depth:
            return
        rows = self._rows_now
        self.forward += rows
        self.calls += 1
        t = _out_tensor(out)
        if t is not None and t.requires_grad:
            def count(grad: torch.Tensor, rows: int = rows) -> None:
                self.backward += rows

            t.register_hook(count)


def method_modules(method: Any) -> tuple[Any, Any]:
    """(target module or None, explainer policy or None) of a :class:`fex.methods.baselines.Method`."""
    bb = getattr(method, "blackbox", None)
    target = getattr(bb, "model", None)
    explainer = getattr(method, "explainer", None)
    return (target if isinstance(target, nn.Module) else None,
            getattr(explainer, "policy", None) if explainer is not None else None)


# --------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager measuring the peak memory increase (MiB) of the enclosed code."""

    def __init__(self) -> None:
        self.mib = 0.0
        self.method = "rss-hwm"

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._base = _status_kib("VmRSS")
            if self._base is None:
                raise OSError
        except (OSError, AttributeError):
            self.method = "tracemalloc"
            tracemalloc.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.method == "tracemalloc":
            self.mib = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        else:
            self.mib = max(0, (_status_kib("VmHWM") or 0) - self._base) / 1024
