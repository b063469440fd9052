"""tda(cfg): which training examples made these predictions (influence functions, conf/tda.yaml).

1. Build the data and the target (the same ``data``/``target`` groups as training); the target
   must be an ``nn.Module`` (influence needs its gradients).
2. :class:`fex.tda.Influence` over ``tda.params`` (last layer by default): sample the Hessian
   subset (``tda_sampler``), set up the IHVP solver (``tda_solver``: LiSSA from dattri, or exact),
   and score every training example for each test input in ``tda.test_examples``, streaming
   per-example gradients in chunks of ``tda.chunk_size``.
3. Optionally the exact full-data reference (``tda.reference``): Spearman/Pearson of the scores
   against the damped full Hessian's, and the overlap of the top-k sets.
4. Write ``scores.npz`` (scores [T, N], training rows, test rows), ``table.md`` (also printed),
   ``metrics.json`` and ``influence.png`` (images) or ``influence.html`` (texts).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from fex.config import build, build_blackbox, build_data, to_dict
from fex.errors import ConfigError, DataError, TargetError
from fex.io import atomic_write, write_json, write_text
from fex.render import markdown_table
from fex.tda import ExactSolver, FullSampler, Influence, LossModel, top_k
from fex.tda.evaluation import pearson, spearman
from fex.tda.render import describe, render

log = logging.getLogger("fex")


def split_arrays(datamodule: Any, split: str, limit: int | None = None) -> tuple[Any, torch.Tensor, list[int]]:
    """(inputs: a tensor [N, ...] or a list of strings, labels [N], dataset rows) of a split."""
    ds = datamodule.dataset(split)
    inputs = getattr(ds, "texts", None)
    if inputs is None:
        inputs = getattr(ds, "x", None)
    if inputs is None:
        raise DataError(f"the {split!r} split has neither .x nor .texts; tda needs in-memory inputs")
    y = torch.as_tensor(ds.y).long()
    rows = [int(i) for i in getattr(ds, "index", range(len(y)))]
    if limit:
        inputs, y, rows = inputs[: int(limit)], y[: int(limit)], rows[: int(limit)]
    return inputs, y, rows


def _params(p: Any) -> Any:
    p = to_dict(p)
    return p if isinstance(p, str) else list(p)


def tda(cfg: DictConfig) -> tuple[dict, dict]:
    """Returns (metrics, objects)."""
    pl.seed_everything(int(cfg.seed), workers=True)
    t = cfg.tda
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = build_data(cfg.data)
    bb = build_blackbox(cfg.target, num_classes=cfg.get("num_classes"))
    model = bb.model
    if not isinstance(model, torch.nn.Module):
        raise TargetError("training-data attribution needs the target's gradients: the target must be an nn.Module")
    x_tr, y_tr, rows_tr = split_arrays(dm, "train", t.train_limit)
    x_te, y_te, rows_te = split_arrays(dm, "test")
    pos = [int(i) for i in t.test_examples]
    if not pos or max(pos) >= len(y_te) or min(pos) < 0:
        raise ConfigError(f"tda.test_examples must be positions in the test split (0..{len(y_te) - 1}), got {pos}")
    xt = [x_te[i] for i in pos] if isinstance(x_te, list) else x_te[pos]
    names = getattr(dm, "label_names", None)

    lm = LossModel(model, _params(t.params), chunk_size=int(t.chunk_size))
    sampler = build(cfg.tda_sampler, what="tda_sampler")
    solver = build(cfg.tda_solver, what="tda_solver")
    infl = Influence(lm, sampler, solver, chunk_size=int(t.chunk_size), seed=int(cfg.seed))
    t0 = time.perf_counter()
    infl.fit(x_tr, y_tr)
    label = None if t.explain == "pred" else y_te[pos]
    s_test, explained = infl.test_vectors(xt, label)
    scores = infl.scores_for(s_test)  # [T, N]
    seconds = time.perf_counter() - t0
    probs = infl.probs(lm.prepare(xt))

    metrics: dict[str, Any] = {
        "tda/params": lm.dim, "tda/train_size": infl.n, "tda/subset_size": int(len(infl.subset)),
        "tda/sampler": sampler.name, "tda/solver": getattr(infl.solver, "name", type(infl.solver).__name__),
        "tda/seconds": seconds, **{f"tda/{k}": v for k, v in infl.timings.items()}}
    if t.reference and lm.dim <= int(t.reference_max_params):
        ref = Influence(lm, FullSampler(), lambda m, z, y, w: ExactSolver(m, z, y, w, damping=float(t.damping),
                                                                          max_params=int(t.reference_max_params)),
                        chunk_size=int(t.chunk_size))
        ref.z, ref.y, ref.n = infl.z, infl.y, infl.n  # same prepared training set
        ref.subset, ref.weights = FullSampler().sample(infl.n)
        ref.solver = ref.solver_factory(lm, infl.z, infl.y, None)
        ref_scores = ref.scores_for(ref.solver.solve(lm.grads(lm.prepare(xt), explained)))
        k = int(t.top_k)
        metrics["tda/spearman_vs_exact_full"] = float(np.mean([spearman(a, b) for a, b in zip(scores, ref_scores)]))
        metrics["tda/pearson_vs_exact_full"] = float(np.mean([pearson(a, b) for a, b in zip(scores, ref_scores)]))
        metrics["tda/topk_overlap_vs_exact_full"] = float(np.mean([
            len(set(top_k(a, k)["helpful"].tolist()) & set(top_k(b, k)["helpful"].tolist())) / k
            for a, b in zip(scores, ref_scores)]))

    with atomic_write(out / "scores.npz", "wb") as fh:
        np.savez(fh, scores=scores.float().numpy(), train_rows=np.asarray(rows_tr), test_rows=np.asarray(rows_te)[pos],
                 explained=explained.numpy(), subset=infl.subset.numpy(), subset_weights=infl.weights.numpy())

    k = int(t.top_k)
    shown, lines = [], []
    for j, p in enumerate(pos):
        tk = top_k(scores[j], k)

        def cell(ix):
            return ", ".join(f"{rows_tr[i]}:{describe(y_tr[i], names)} {float(scores[j, i]):+.3g}" for i in ix[:3].tolist())

        pred = int(probs[j].argmax())
        lines.append([rows_te[p], describe(y_te[p], names), f"{describe(pred, names)} ({float(probs[j].max()):.2f})",
                      describe(explained[j], names), cell(tk["helpful"]), cell(tk["harmful"])])

        def item(i):
            return {"x": x_tr[i], "title": f"#{rows_tr[i]} y={describe(y_tr[i], names)} {float(scores[j, i]):+.2g}"}

        shown.append({"x": xt[j], "title": f"#{rows_te[p]} y={describe(y_te[p], names)} pred={describe(pred, names)}",
                      "helpful": [item(i) for i in tk["helpful"].tolist()],
                      "harmful": [item(i) for i in tk["harmful"].tolist()]})
    summary = (f"\n{metrics['tda/sampler']} sampler: Hessian on {metrics['tda/subset_size']} of {infl.n} training "
               f"examples; {metrics['tda/solver']} IHVP over {lm.dim} parameters ({t.params}); {seconds:.1f}s")
    if "tda/spearman_vs_exact_full" in metrics:
        summary += (f"; vs exact full-data Hessian: Spearman {metrics['tda/spearman_vs_exact_full']:.3f}, "
                    f"top-{k} overlap {metrics['tda/topk_overlap_vs_exact_full']:.2f}")
    table = markdown_table(["test row", "label", "pred (p)", "explained", "most helpful (row:label score)",
                            "most harmful (row:label score)"], lines) + "\n" + summary + "\n"
    write_text(out / "table.md", table)
    picture = render(shown, out)
    write_json(out / "metrics.json", metrics)
    print(table)
    print(f"fex-tda: {picture} | {out / 'table.md'} | {out / 'scores.npz'}", flush=True)
    return metrics, {"scores": scores, "influence": infl, "picture": picture, "test_positions": pos}
