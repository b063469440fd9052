"""tda(cfg): which training examples made these predictions (conf/tda.yaml).

``tda_method``: ``influence`` (below) or ``information`` (:class:`fex.tda.information.InformationAttributor`:
signed information per training example and a greedy subset of ``tda.top_k`` per test input).
``tda_task=clean`` runs the poisoned-data cleaning experiment instead (:func:`clean_task`).

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
from fex.targets.mnist_cnn import fit_small_cnn
from fex.tda import ExactSolver, FullSampler, Influence, LossModel, top_k
from fex.tda.clean import cleaning
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
    task = cfg.get("tda_task", {}).get("name", "attribute")
    method = cfg.get("tda_method", {}).get("name", "influence")
    if task == "clean":
        return clean_task(cfg)
    if task != "attribute":
        raise ConfigError(f"tda_task must be attribute or clean, got {task!r}")
    if method not in ("influence", "information"):
        raise ConfigError(f"tda_method must be influence or information, got {method!r}")
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
    label = None if t.explain == "pred" else y_te[pos]
    k = int(t.top_k)
    t0 = time.perf_counter()
    if method == "information":
        infl = build({kk: v for kk, v in to_dict(cfg.tda_method).items() if kk != "name"}, what="tda_method")(lm)
        infl.fit(x_tr, y_tr)
        psi_q, explained = infl.query_vectors(xt, label)
        scores = infl.scores_for(psi_q)  # [T, N] signed information (nats)
        subsets = [infl.select_for(row, k) for row in psi_q]
        seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {
            "tda/method": "information", "tda/mode": infl.mode, "tda/noise": infl.noise, "tda/params": lm.dim,
            "tda/train_size": infl.n, "tda/gradients": infl.gradients, "tda/seconds": seconds,
            "tda/subset_information": float(np.mean([float(r["total"]) for r in subsets])),
            "tda/subset_topk_overlap": float(np.mean([
                len(set(r["indices"].tolist()) & set(top_k(sc.abs(), k)["helpful"].tolist())) / k
                for r, sc in zip(subsets, scores)])),
            **{f"tda/{kk}": v for kk, v in infl.timings.items()}}
    else:
        sampler = build(cfg.tda_sampler, what="tda_sampler")
        solver = build(cfg.tda_solver, what="tda_solver")
        infl = Influence(lm, sampler, solver, chunk_size=int(t.chunk_size), seed=int(cfg.seed),
                         normalize=str(t.normalize))
        infl.fit(x_tr, y_tr)
        s_test, explained = infl.test_vectors(xt, label)
        scores = infl.scores_for(s_test)  # [T, N]
        seconds = time.perf_counter() - t0
        subsets = None
        metrics = {
            "tda/method": "influence", "tda/params": lm.dim, "tda/train_size": infl.n,
            "tda/subset_size": int(len(infl.subset)), "tda/sampler": sampler.name,
            "tda/solver": getattr(infl.solver, "name", type(infl.solver).__name__), "tda/normalize": infl.normalize,
            "tda/seconds": seconds, **{f"tda/{kk}": v for kk, v in infl.timings.items()}}
    probs = infl.probs(lm.prepare(xt))

    if t.reference and lm.dim <= int(t.reference_max_params):
        ref = Influence(lm, FullSampler(), lambda m, z, y, w: ExactSolver(m, z, y, w, damping=float(t.damping),
                                                                          max_params=int(t.reference_max_params)),
                        chunk_size=int(t.chunk_size))
        ref.z, ref.y, ref.n = infl.z, infl.y, infl.n  # same prepared training set
        ref.subset, ref.weights = FullSampler().sample(infl.n)
        ref.solver = ref.solver_factory(lm, infl.z, infl.y, None)
        ref_scores = ref.scores_for(ref.solver.solve(lm.grads(lm.prepare(xt), explained)))
        metrics["tda/spearman_vs_exact_full"] = float(np.mean([spearman(a, b) for a, b in zip(scores, ref_scores)]))
        metrics["tda/pearson_vs_exact_full"] = float(np.mean([pearson(a, b) for a, b in zip(scores, ref_scores)]))
        metrics["tda/topk_overlap_vs_exact_full"] = float(np.mean([
            len(set(top_k(a, k)["helpful"].tolist()) & set(top_k(b, k)["helpful"].tolist())) / k
            for a, b in zip(scores, ref_scores)]))

    with atomic_write(out / "scores.npz", "wb") as fh:
        extra = ({"subset": infl.subset.numpy(), "subset_weights": infl.weights.numpy()} if subsets is None else
                 {"greedy_subsets": np.stack([r["indices"].numpy() for r in subsets]),
                  "greedy_gains": np.stack([r["gains"].numpy() for r in subsets])})
        np.savez(fh, scores=scores.float().numpy(), train_rows=np.asarray(rows_tr), test_rows=np.asarray(rows_te)[pos],
                 explained=explained.numpy(), **extra)

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
    if subsets is None:
        summary = (f"\n{metrics['tda/sampler']} sampler: Hessian on {metrics['tda/subset_size']} of {infl.n} training "
                   f"examples; {metrics['tda/solver']} IHVP over {lm.dim} parameters ({t.params}); {seconds:.1f}s")
    else:
        summary = (f"\ninformation ({infl.mode}, noise {infl.noise:g}) on tangent features of {lm.dim} parameters "
                   f"({t.params}), {infl.n} training examples, {infl.gradients} per-example gradients; {seconds:.1f}s; "
                   f"greedy top-{k} subsets: {metrics['tda/subset_information']:.3g} nats, "
                   f"overlap with the top-{k} single scores {metrics['tda/subset_topk_overlap']:.2f}")
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
    return metrics, {"scores": scores, "influence": infl, "picture": picture, "test_positions": pos, "subsets": subsets}


def clean_table(res: dict) -> str:
    """The cleaning experiment's rows as a markdown table (recall at each removal level, ASR and clean accuracy)."""
    rows = res["rows"]
    recall = [c for c in rows[0] if c.startswith("recall@")]
    head = ["attributor", *recall, "ASR after", "clean acc after", "rank s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        after = [f"{r['after_asr']:.3f}", f"{r['after_clean_acc']:.4f}"] if "after_asr" in r else ["-", "-"]
        lines.append("| " + " | ".join([r["attributor"], *[f"{r[c]:.3f}" for c in recall], *after,
                                          f"{r['rank_s']:.1f}"]) + " |")
    b = res["before"]
    lines.append(f"\npoisoned model ({res['n_poison']} of {res['n_train']} training images): ASR {b['asr']:.3f}, "
                 f"clean accuracy {b['clean_acc']:.4f}")
    if "reference" in res:
        r = res["reference"]
        lines.append(f"model trained on the unpoisoned set: ASR {r['asr']:.3f}, clean accuracy {r['clean_acc']:.4f}")
    return "\n".join(lines) + "\n"


def clean_task(cfg: DictConfig) -> tuple[dict, dict]:
    """``tda_task=clean``: the poisoned-data cleaning experiment (:func:`fex.tda.clean.cleaning`) on
    the configured image data, retraining the MNIST target's architecture with its recipe."""
    pl.seed_everything(int(cfg.seed), workers=True)
    c, t = cfg.tda_task, cfg.tda
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = build_data(cfg.data)
    (x_tr, y_tr, _), (x_val, y_val, _), (x_te, y_te, _) = (split_arrays(dm, s) for s in ("train", "val", "test"))
    if isinstance(x_tr, list):
        raise ConfigError("tda_task=clean plants an image trigger: it needs image data (e.g. data=mnist)")
    rankers = {name: build(spec, what=f"tda_task.attributors.{name}") for name, spec in c.attributors.items()}
    num_classes = int(cfg.get("num_classes") or int(y_tr.max()) + 1)

    def train(x, y):
        return fit_small_cnn(x, y, epochs=int(c.epochs), lr=float(c.lr), seed=int(cfg.seed), num_classes=num_classes)

    p = c.poison
    res = cleaning(train, x_tr, y_tr, x_val, y_val, x_te, y_te, rankers, source=int(p.source), target=int(p.target),
                   fraction=float(p.fraction), patch=int(p.patch), value=float(p.value), queries=int(c.queries),
                   removal=tuple(float(f) for f in c.removal), retrain_at=float(c.retrain_at),
                   retrain=to_dict(c.retrain), reference=bool(c.reference), seed=int(cfg.seed),
                   params=_params(t.params), chunk_size=int(t.chunk_size), log=lambda m: log.info(m))
    table = clean_table(res)
    metrics = {"clean/asr_before": res["before"]["asr"], "clean/clean_acc_before": res["before"]["clean_acc"],
               **{f"clean/{r['attributor']}/{kk}": v for r in res["rows"] for kk, v in r.items() if kk != "attributor"}}
    if "reference" in res:
        metrics.update({"clean/asr_reference": res["reference"]["asr"],
                        "clean/clean_acc_reference": res["reference"]["clean_acc"]})
    write_text(out / "table.md", table)
    write_json(out / "metrics.json", metrics)
    print(table, flush=True)
    return metrics, {"result": res, "table": table}
