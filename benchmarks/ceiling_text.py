"""How far can a per-word score go on text? Ceilings of fex's value against KernelShap(200), in one run.

    python benchmarks/ceiling_text.py --checkpoint outputs/bench/text_rt_heads_seed0/explainer.ckpt   # 64 snippets
    python benchmarks/ceiling_text.py --quick target=text_callable target.model.path=tests.text_helpers.planted_great target.output=probs

Issue 20 asks fex for deletion AUC <= 0.95x KernelShap(200) with insertion and comprehensiveness >= 1.0x.
This asks what is reachable at all, per input, with unlimited queries, on the same test snippets as
``bench_text.py`` (the first ``--n`` of two or more words; explained class = the target's prediction;
every row scored by ``fex.metrics.faithfulness`` with 10 curve steps, as ``bench_text.py`` scores it).
Rows, with their target queries per snippet:

* ``fex`` (the checkpoint, 0 queries) and ``fex, 2 passes``: the same policy run again on the text with
  its top ``--top`` share of words masked, which re-ranks the rest (0 queries, 2 policy passes);
* the value fex learns, Banzhaf of log p at keep rate 1/2 fitted by least squares
  (``fex.objective.regression_solution``, exactly what the regression objective converges to per input),
  from ``--masks`` and from ``--masks-ceiling`` paired masks: the value's ceiling;
* ``value, 2 passes``: that value on the full text ranks the top ``--top`` share; the value refitted with
  those words masked ranks the rest (a per-input oracle of ``fex, 2 passes``);
* greedy deletion / greedy insertion: remove (add) one word at a time, always the one that lowers (raises)
  p(y) most, about n^2/2 queries: a ranking built for one metric, the ceiling of any score on it;
* KernelShap(200) (Captum, as in ``bench_text.py``).

``--rows`` picks the rows (KernelShap always); ``--also NAME=CKPT`` adds other explainers of the same target,
each with its 1- and 2-pass rows, e.g. the two read-outs of several checkpoints on all 200 snippets:

    python benchmarks/ceiling_text.py --n 200 --rows fex,fex2 --also masked=outputs/bench/text_rt_masked_seed0/explainer.ckpt

Quality only: nothing here is timed (``bench_text.py`` times fex and KernelShap). Writes ceiling.md and
ceiling.json to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401  (compat shims before lightning)
import torch  # noqa: E402

from fex import compare  # noqa: E402
from fex import metrics as M  # noqa: E402
from fex import objective as obj  # noqa: E402
from fex.bench import load, machine  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.methods.baselines import KernelShap  # noqa: E402
from oracles_text import snippets  # noqa: E402  (the benchmark's snippets, one definition)

SHOWN = ("deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency")


def pick(probs: torch.Tensor, cls: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """Black-box output [B*K, C] -> p(cls) [B, K]."""
    return probs.view(b, k, -1).gather(2, cls.view(b, 1, 1).expand(b, k, 1)).squeeze(2)


def ratio(row: dict, ref: dict, key: str) -> float:
    """row[key] / ref[key]; nan where the reference is 0."""
    return row[key] / ref[key] if ref[key] else float("nan")


def top_share(scores: torch.Tensor, valid: torch.Tensor, share: float) -> torch.Tensor:
    """[B, F] bool: each input's ``round(share * n)`` (at least 1) highest-scored valid words."""
    k = (valid.sum(1).float() * share).round().long().clamp_min(1)
    rank = (-scores.masked_fill(~valid, -float("inf"))).argsort(1).argsort(1)
    return (rank < k[:, None]) & valid


def two_pass(first: torch.Tensor, second: torch.Tensor, top: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One ranking from two passes: the ``top`` words in the first pass's order, then the rest in the second's."""
    lift = first.abs().max() + second.abs().max() + 1
    return torch.where(top, first + 2 * lift, second) * valid


def value(bb, masker, x: dict, cls: torch.Tensor, valid: torch.Tensor, n_masks: int,
          gen: torch.Generator) -> torch.Tensor:
    """Banzhaf of log p at keep rate 1/2 over the ``valid`` words (the others masked in every query), by
    least squares on ``n_masks`` paired masks: fex's regression fixed point."""
    b, f = valid.shape
    masks, centre = obj.sample_coupled(torch.full((b, f), 0.5), n_masks, valid, "paired_uniform", 0.5, gen)
    prob = pick(bb(masker.apply(x, masks)), cls, b, n_masks)
    reward = obj.compute_reward(prob, masks, valid.sum(1), "logprob")
    return obj.regression_solution(reward, masks, centre, valid)


def greedy(bb, masker, x: dict, cls: torch.Tensor, valid: torch.Tensor, mode: str) -> torch.Tensor:
    """Scores [B, F] from a greedy order: ``deletion`` removes, ``insertion`` adds, one word per step, the one
    that moves p(y) most (first chosen = highest score). Each step asks every input all F one-word moves in one
    batch (moves of words already taken, or padding, repeat the current text and are ignored), so this asks
    more than the n(n + 1)/2 queries a greedy order needs; the table reports n(n + 1)/2."""
    b, f = valid.shape
    out = torch.zeros(b, f)
    on = valid.clone() if mode == "deletion" else torch.zeros_like(valid)
    rows = torch.arange(b)
    for step in range(f):
        todo = on if mode == "deletion" else valid & ~on
        if not todo.any():
            break
        move = torch.eye(f, dtype=torch.bool).unsqueeze(0) & todo.unsqueeze(1)  # [B, F moves, F]
        masks = (on.unsqueeze(1) & ~move) if mode == "deletion" else (on.unsqueeze(1) | move)
        p = pick(bb(masker.apply(x, masks.float())), cls, b, f)
        p = p.masked_fill(~todo, float("inf") if mode == "deletion" else -float("inf"))
        j = p.argmin(1) if mode == "deletion" else p.argmax(1)
        has = todo.any(1)
        out[rows[has], j[has]] = (valid.sum(1) - step).float()[has]
        on[rows[has], j[has]] = mode != "deletion"
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "outputs/bench/text_rt_heads_seed0/explainer.ckpt"))
    p.add_argument("--n", type=int, default=64, help="test snippets")
    p.add_argument("--chunk", type=int, default=16, help="snippets per round")
    p.add_argument("--masks", type=int, default=128, help="paired masks of the value row")
    p.add_argument("--masks-ceiling", type=int, default=1024, help="paired masks of the value's ceiling row")
    p.add_argument("--masks-pass", type=int, default=256, help="paired masks per pass of the 2-pass value row")
    p.add_argument("--top", type=float, default=0.2, help="share of words the first pass ranks")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/text_ceiling"))
    p.add_argument("--rows", default="fex,fex2,v,vc,v2,gd,gi,ks",
                   help="comma-separated rows to compute: fex,fex2,v,vc,v2,gd,gi,ks (ks is always computed)")
    p.add_argument("--also", nargs="*", default=[], metavar="NAME=CKPT",
                   help="more explainers (same target and data) scored like --checkpoint: rows 'NAME' and 'NAME, 2 passes'")
    p.add_argument("--quick", action="store_true", help="4 snippets, small budgets: check that it runs")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.chunk, a.masks, a.masks_ceiling, a.masks_pass = min(a.n, 4), 4, 16, 32, 16
    cfg, bb, explainer, ds = load(a.checkpoint, "fex", ["compare.steps=10", *a.overrides])
    masker = explainer.masker
    wanted = set(a.rows.split(",")) | {"ks"}
    explainers = {"fex": explainer}
    for spec in a.also:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in ("fex", "fex2", "v", "vc", "v2", "gd", "gi", "ks"):
            p.error(f"--also wants NAME=CKPT with a new NAME, got {spec!r}")
        explainers[name] = load(path, "fex", ["compare.steps=10", *a.overrides])[2]
    texts = [ds.texts[i] for i in snippets(ds, a.n)]
    ks_n = 16 if a.quick else 200
    names = {"fex": "fex (the checkpoint)", "fex2": f"fex, 2 passes (top {a.top:g} first)",
             "v": f"value: Banzhaf of log p at 1/2, {a.masks} masks",
             "vc": f"value, {a.masks_ceiling} masks (its ceiling)",
             "v2": f"value, 2 passes (top {a.top:g} first), {a.masks_pass} masks per pass",
             "gd": "greedy deletion", "gi": "greedy insertion", "ks": f"KernelShap({ks_n})"}
    for name in list(explainers)[1:]:
        names[name], names[name + "2"] = name, f"{name}, 2 passes (top {a.top:g} first)"
    quality: dict[str, list[dict]] = {}
    queries: dict[str, int] = {}
    for s in range(0, len(texts), a.chunk):
        x = masker.encode(texts[s:s + a.chunk])
        valid = masker.valid(x)
        gen = torch.Generator().manual_seed(int(cfg.seed) + s)
        with bb.uncounted():
            cls = bb(x).argmax(-1)
        rows: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, ex in explainers.items():
                rows[name] = ex.explain(x, cls)["scores"]
                if name + "2" in wanted or name != "fex":
                    top = top_share(rows[name], valid, a.top)
                    masked = masker.encode(masker.apply(x, (valid & ~top).float().unsqueeze(1)))
                    second = ex.explain(masked, cls)["scores"][:, : valid.shape[1]]
                    rows[name + "2"] = two_pass(rows[name], second, top, valid)
        jobs = {"v": lambda: value(bb, masker, x, cls, valid, a.masks, gen),
                "vc": lambda: value(bb, masker, x, cls, valid, a.masks_ceiling, gen),
                "gd": lambda: greedy(bb, masker, x, cls, valid, "deletion"),
                "gi": lambda: greedy(bb, masker, x, cls, valid, "insertion"),
                "ks": lambda: KernelShap(bb, masker, n_samples=ks_n, seed=int(cfg.seed)).attribute(x, cls)}
        for key, job in jobs.items():
            if key not in wanted:
                continue
            with bb.counting() as c:
                rows[key] = job()
            n = valid.sum(1)
            queries[key] = queries.get(key, 0) + (int((n * (n + 1) // 2).sum()) if key in ("gd", "gi") else c.n)
        if "v2" in wanted:
            with bb.counting() as c:
                first = value(bb, masker, x, cls, valid, a.masks_pass, gen)
                top = top_share(first, valid, a.top)
                rows["v2"] = two_pass(first, value(bb, masker, x, cls, valid & ~top, a.masks_pass, gen), top, valid)
            queries["v2"] = queries.get("v2", 0) + c.n
        with bb.uncounted():
            for key, sc in rows.items():
                q = M.faithfulness(bb, masker, x, sc.float(), cls, steps=10, seed=int(cfg.seed))
                quality.setdefault(key, []).append({k: q[k] for k in SHOWN})
        print(f"{min(s + a.chunk, len(texts))}/{len(texts)} snippets", flush=True)
    table = []
    for key, parts in quality.items():
        row = {"method": names[key], "queries_per_snippet": queries.get(key, 0) / len(texts)}
        for k in SHOWN:
            v = torch.cat([pp[k] for pp in parts]).float()
            row[k], row[f"{k}_sem"] = float(v.mean()), float(v.std() / len(v) ** 0.5)
        table.append(row)
    order = ["fex", "fex2", *[k for n in list(explainers)[1:] for k in (n, n + "2")], "v", "vc", "v2", "gd", "gi", "ks"]
    table.sort(key=lambda r: order.index(next(k for k, v in names.items() if v == r["method"])))
    ks = table[-1]
    n_words = float(masker.valid(masker.encode(texts)).sum(1).float().mean())
    lines = [f"{len(texts)} test snippets ({n_words:.1f} words on average); target {cfg.target.model._target_}; "
             f"checkpoint {a.checkpoint}; {machine()}", "",
             "| ranking | target queries per snippet | deletion AUC (lower better) | insertion AUC | comprehensiveness "
             "| sufficiency (lower better) | deletion vs KS | insertion vs KS | compr. vs KS |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['queries_per_snippet']:.0f} | {r['deletion_auc']:.4f} ± {r['deletion_auc_sem']:.4f} "
                     f"| {r['insertion_auc']:.4f} ± {r['insertion_auc_sem']:.4f} | {r['comprehensiveness']:.4f} | "
                     f"{r['sufficiency']:.4f} | {ratio(r, ks, 'deletion_auc'):.3f} | "
                     f"{ratio(r, ks, 'insertion_auc'):.3f} | {ratio(r, ks, 'comprehensiveness'):.3f} |")
    text = "\n".join(lines) + "\n\n(± standard error of the mean over snippets)\n"
    print(text)
    write_text(Path(a.out) / "ceiling.md", text)
    write_json(Path(a.out) / "ceiling.json", {"n": len(texts), "args": vars(a), "machine": machine(),
                                              "rows": compare.json_rows(table)})
    return table


if __name__ == "__main__":
    main()
