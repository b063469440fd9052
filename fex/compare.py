"""Run attribution methods side by side on the same inputs, features and metrics, with cost accounting.

Letters: B batch, N examples, F features, S curve steps.

Cost, per method:

- ``queries_per_expl``: black-box queries (``BlackBox.queries`` delta) / explanations.
  The explained class is computed once by the caller and handed to every method, so that
  query is not charged to anyone.
- ``sec_per_expl``: median over batches of (batch wall time / batch size), after one
  warm-up example per method (lazy initialisation is not charged).
- ``forward_passes`` / ``backward_passes``: rows evaluated forward / back-propagated through the
  target (``nn.Module`` targets; :class:`fex.cost.PassCounter`) per explanation: a query is
  one forward row, an IG step one forward and one backward row. ``policy_calls``: batched forward
  calls of an amortized explainer's policy per explanation (FEX: one per batch).
- ``peak_mem_mib``: peak resident memory *increase* while the method explains one batch.
  On Linux we release freed heap memory back to the OS (``malloc_trim``), reset the
  kernel's high-water mark (``/proc/self/clear_refs`` = 5) and read ``VmHWM - VmRSS`` around
  the batch; this counts torch's CPU tensors and Python objects alike. Elsewhere it falls
  back to ``tracemalloc``'s peak (Python allocations only) and says so in ``mem_method``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Iterable, Mapping

import torch

from fex import metrics as M
from fex import render
from fex.blackbox import BlackBox
from fex.cost import PassCounter, PeakMemory, method_modules  # noqa: F401 (PeakMemory: re-exported)
from fex.maskers.base import Masker

QUALITY_KEYS = ("deletion_auc", "insertion_auc", "aopc", "comprehensiveness", "sufficiency", "faithfulness_corr")
HIGHER_IS_BETTER = {"deletion_auc": False, "insertion_auc": True, "aopc": True, "comprehensiveness": True,
                    "sufficiency": False, "faithfulness_corr": True}


# --------------------------------------------------------------------------- running
def _batches(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def explain_all(method: Any, masker: Masker, x: Any, target: torch.Tensor, batch_size: int,
                warmup: bool = True) -> dict:
    """Scores [N, F] for all examples plus the cost record of ``method``."""
    bb: BlackBox = method.blackbox
    n = masker.batch_size(x)
    dev = masker.device_of(x)
    if warmup:
        method.attribute(masker.select(x, torch.tensor([0], device=dev)), target[:1])
    target_module, policy = method_modules(method)
    times, scores, mem, mem_method = [], [], 0.0, "none"
    with bb.counting() as queries, PassCounter(target_module) as passes, PassCounter(policy) as pol:
        for i, sl in enumerate(_batches(n, batch_size)):
            xb = masker.select(x, torch.arange(sl.start, sl.stop, device=dev))
            if i == 0:
                with PeakMemory() as pm:
                    t0 = time.perf_counter()
                    s = method.attribute(xb, target[sl])
                    dt = time.perf_counter() - t0
                mem, mem_method = pm.mib, pm.method
            else:
                t0 = time.perf_counter()
                s = method.attribute(xb, target[sl])
                dt = time.perf_counter() - t0
            times.append(dt / (sl.stop - sl.start))
            scores.append(s.float().cpu())
    return {"scores": torch.cat(scores), "sec_per_expl": statistics.median(times),
            "queries_per_expl": queries.n / n, "forward_passes": passes.forward / n if target_module else None,
            "backward_passes": passes.backward / n if target_module else None,
            "policy_calls": pol.calls / n if policy is not None else None, "peak_mem_mib": mem,
            "mem_method": mem_method, "batch_size": batch_size}


def score_all(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
              batch_size: int = 64, **metric_kwargs: Any) -> dict[str, torch.Tensor]:
    """``fex.metrics.faithfulness`` over all examples in batches -> per-example [N] / curves [N, S+1]."""
    n = masker.batch_size(x)
    dev = masker.device_of(x)
    parts: list[dict] = []
    with blackbox.uncounted():  # metric queries are not the method's cost
        for sl in _batches(n, batch_size):
            xb = masker.select(x, torch.arange(sl.start, sl.stop, device=dev))
            parts.append({k: v.cpu() for k, v in M.faithfulness(blackbox, masker, xb, scores[sl], target[sl],
                                                                     **metric_kwargs).items()})
    return {k: _cat_ragged([p[k] for p in parts]) for k in parts[0]}


def _cat_ragged(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0; curves [n, S+1] of batches with different step counts (text with one
    step per word: S is the batch's longest input) are padded to the widest by repeating their last
    point (a curve that has ended stays where it ended)."""
    if parts[0].dim() < 2 or len({p.shape[1] for p in parts}) == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.cat([p, p[:, -1:].expand(-1, width - p.shape[1])], 1) for p in parts])


def run_methods(blackbox: BlackBox, masker: Masker, x: Any, target: torch.Tensor,
                methods: Mapping[str, Callable[[], Any] | Any], batch_size: int = 16, metric_masker: Masker | None = None,
                metric_kwargs: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = print,
                precomputed: Mapping[str, dict] | None = None) -> list[dict]:
    """Explain ``x`` (N examples, explained class ``target`` [N]) with every method and score them.

    ``methods`` maps a name to a method object or a zero-argument factory (built lazily so a
    failing method is reported, not fatal). Metrics use ``metric_masker`` (default ``masker``;
    e.g. another substrate) identically for every method. ``precomputed`` maps a name to a record
    shaped like :func:`explain_all`'s (scores and cost measured elsewhere, e.g. the explainer's
    attribution shards): that method is scored, not run again. Returns one row per method:
    cost fields, mean quality metrics, and (non-JSON) ``scores`` / ``curves`` for plotting.
    """
    mm = metric_masker or masker
    rows = []
    for name, m in methods.items():
        try:
            if name in (precomputed or {}):
                rec = precomputed[name]
            else:
                method = m() if callable(m) and not hasattr(m, "attribute") else m
                rec = explain_all(method, masker, x, target, batch_size)
        except Exception as exc:  # noqa: BLE001 - one broken method must not sink the comparison
            if log:
                log(f"method {name} failed: {type(exc).__name__}: {exc}")
            rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        q = score_all(blackbox, mm, x, rec["scores"], target, **dict(metric_kwargs or {}))
        row = {"method": name, **{k: v for k, v in rec.items() if k != "scores"}}
        row.update({k: float(q[k].mean()) for k in QUALITY_KEYS})
        row.update({f"{k}_sem": float(q[k].std() / max(1, len(q[k])) ** 0.5) if len(q[k]) > 1 else 0.0
                    for k in ("deletion_auc", "insertion_auc")})
        row["scores"] = rec["scores"]
        row["curves"] = {"deletion": q["deletion_curve"].mean(0), "insertion": q["insertion_curve"].mean(0)}
        rows.append(row)
        if log:
            log(f"{name}: {row['sec_per_expl'] * 1e3:.2f} ms/expl, {row['queries_per_expl']:.0f} queries/expl, "
                f"deletion {row['deletion_auc']:.4f}, insertion {row['insertion_auc']:.4f}")
    return rows


# --------------------------------------------------------------------------- reporting
def json_rows(rows: Iterable[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("scores", "curves")} for r in rows]


def add_ratios(rows: list[dict], reference: str = "kernel_shap") -> list[dict]:
    """Add ``*_vs_ref`` ratios relative to the ``reference`` row (throughput = ref time / time)."""
    ref = next((r for r in rows if r["method"] == reference and "error" not in r), None)
    for r in rows:
        if ref is None or "error" in r:
            continue

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        r["speedup_vs_ref"] = ratio(ref["sec_per_expl"], r["sec_per_expl"])
        r["queries_vs_ref"] = ratio(r["queries_per_expl"], ref["queries_per_expl"])
        r["mem_vs_ref"] = ratio(r["peak_mem_mib"], ref["peak_mem_mib"])
        r["deletion_vs_ref"] = ratio(r["deletion_auc"], ref["deletion_auc"])
        r["insertion_vs_ref"] = ratio(r["insertion_auc"], ref["insertion_auc"])
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(rows: list[dict], reference: str = "kernel_shap") -> str:
    """Markdown table of cost and quality (ratios relative to ``reference`` where present)."""
    head = [h.format(r=reference) for h in (
        "method", "ms/expl", "queries/expl", "peak MiB", "deletion AUC (lower better)", "insertion AUC", "AOPC",
        "comprehensiveness", "sufficiency", "faithfulness corr", "speedup vs {r}", "queries vs {r}", "mem vs {r}",
        "deletion vs {r}", "insertion vs {r}")]
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["method"], f"failed: {r['error'][:80]}"])
            continue

        def pm(k: str, r: dict = r) -> str:  # mean +- spread across training seeds, where there are several
            return f"{r[k]:.4f}" + (f" ± {r[k + '_std']:.4f}" if f"{k}_std" in r else "")

        out.append([r["method"], f"{r['sec_per_expl'] * 1e3:.3g}", f"{r['queries_per_expl']:.0f}",
                    _fmt(r["peak_mem_mib"], ".1f"), pm("deletion_auc"), pm("insertion_auc"), f"{r['aopc']:.4f}",
                    f"{r['comprehensiveness']:.4f}", f"{r['sufficiency']:.4f}", f"{r['faithfulness_corr']:.3f}",
                    f"{_fmt(r.get('speedup_vs_ref'), '.3g')}x", _fmt(r.get("queries_vs_ref"), ".3g"),
                    _fmt(r.get("mem_vs_ref"), ".3g"), _fmt(r.get("deletion_vs_ref"), ".3f"),
                    _fmt(r.get("insertion_vs_ref"), ".3f")])
    return render.markdown_table(head, out)
