"""Information-theoretic attribution beside influence (fex.tda.information): agreement, subsets, cost.

Sections (``--sections``, default all but cost):

* ``agreement``  - on a target's last layer: Spearman of each attributor's signed scores with exact
  full-data influence (the damped Hessian), mean over test inputs, and the top-10 overlap.
* ``duplicates`` - synthetic L2 softmax regression (the query's 10 most influential training
  examples planted 9 more times each, tiny noise): planted copies that repeat an already chosen
  example in influence's top-k vs the greedy information subset, k = 10 and 50, per noise value;
  and the single-example Spearman with exact influence at the same noise (3 seeds each).
* ``cost``       - time, peak memory and gradient work of each attributor (fit + 8 test inputs +
  one greedy subset of 10), each in a fresh process. TIMED: on a shared machine, label the numbers.

    python benchmarks/bench_tda_information.py --targets mnist            # agreement + duplicates
    python benchmarks/bench_tda_information.py --targets mnist --sections cost
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from fex.io import write_json, write_text
from fex.tda import ExactSolver, FullSampler, Influence, LissaSolver, LogitSampler, LossModel, top_k
from fex.tda.evaluation import fit_softmax, spearman, synthetic_softmax
from fex.tda.information import InformationAttributor
from fex.tda.model import last_linear

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tda import _rss_kib, features, load_target, md  # noqa: E402  (the sibling benchmark's loaders)

ATTRIBUTORS = ["influence_exact", "influence_logit_lissa", "information_exact", "information_relaxed",
               "self_influence_exact"]


def head(d: dict) -> tuple[LossModel, torch.Tensor, torch.Tensor]:
    """The last layer alone on cached penultimate features (z train, z test)."""
    full = LossModel(d["model"], "last")
    z, zt = features(d, full, "tr"), features(d, full, "te")
    return LossModel(copy.deepcopy(last_linear(d["model"])[1]), "last", chunk_size=256), z, zt


def build(name: str, lm: LossModel, damping: float, noise: float, depth: int):
    exact = lambda m, z, y, w: ExactSolver(m, z, y, w, damping=damping)  # noqa: E731
    if name in ("influence_exact", "self_influence_exact"):
        return Influence(lm, FullSampler(), exact)
    if name == "influence_logit_lissa":
        return Influence(lm, LogitSampler(size=0.1), lambda m, z, y, w: LissaSolver(
            m, z, y, w, damping=damping, depth=depth, batch_size=512))
    return InformationAttributor(lm, damping=damping, noise=noise, mode=name.split("_")[1])


# --------------------------------------------------------------------------- sections
def section_agreement(name, limit, damping, noise, depth, n_test=16):
    d = load_target(name, limit)
    lm, z, zt = head(d)
    y = d["y_tr"]
    zt = zt[:n_test]
    yt = lm.logits(lm.theta0, zt).argmax(-1)
    ref = build("influence_exact", lm, damping, noise, depth).fit(z, y).scores(zt, yt)
    rows = []
    for a in ATTRIBUTORS[1:4]:
        s = build(a, lm, damping, noise, depth).fit(z, y).scores(zt, yt)
        rows.append({"target": name, "attributor": a, "n_train": len(y),
                     "spearman_vs_exact_influence": sum(spearman(p, q) for p, q in zip(s, ref)) / len(s),
                     "top10_overlap": sum(len(set(top_k(p, 10)["helpful"].tolist()) & set(top_k(q, 10)["helpful"].tolist()))
                                          / 10 for p, q in zip(s, ref)) / len(s)})
    return rows


def _duplicated(seed, l2, copies=9, groups=10):
    xtr, ytr, xte, yte = synthetic_softmax(300, 5, 3, seed)
    q, yq = xte[:1], yte[:1]
    exact = lambda m, z, y, w: ExactSolver(m, z, y, w, damping=l2)  # noqa: E731
    lm0 = LossModel(fit_softmax(xtr, ytr, 3, l2), "last")
    top = torch.topk(Influence(lm0, FullSampler(), exact).fit(xtr, ytr).scores(q, yq)[0].abs(), groups).indices
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([xtr, xtr[top].repeat_interleave(copies, 0) + 0.01 * torch.randn(groups * copies, 5, generator=g,
                                                                                   dtype=torch.double)])
    y = torch.cat([ytr, ytr[top].repeat_interleave(copies)])
    group = torch.cat([torch.arange(len(ytr)), top.repeat_interleave(copies)])
    lm = LossModel(fit_softmax(x, y, 3, l2), "last")
    return lm, x, y, q, yq, group, Influence(lm, FullSampler(), exact).fit(x, y).scores(q, yq)[0]


def section_duplicates(noises, seeds=3, l2=0.05):
    rows = []
    for mode in ("exact", "relaxed"):
        for noise in noises:
            row = {"mode": mode, "noise": noise}
            rho = []
            for s in range(seeds):
                xtr, ytr, xte, yte = synthetic_softmax(200, 5, 3, s)
                lm = LossModel(fit_softmax(xtr, ytr, 3, l2), "last")
                ref = Influence(lm, FullSampler(), lambda m, z, y, w: ExactSolver(m, z, y, w, damping=l2)).fit(
                    xtr, ytr).scores(xte[:10], yte[:10])
                sc = InformationAttributor(lm, damping=l2, mode=mode, noise=noise).fit(xtr, ytr).scores(xte[:10], yte[:10])
                rho.append(sum(spearman(a, b) for a, b in zip(sc, ref)) / len(sc))
            row["spearman_min"] = min(rho)
            for k in (10, 50):
                ri, rs = [], []
                for s in range(seeds):
                    lm, x, y, q, yq, group, infl = _duplicated(s, l2)
                    att = InformationAttributor(lm, damping=l2, mode=mode, noise=noise).fit(x, y)
                    red = lambda idx: len(idx) - len(group[idx].unique())  # noqa: E731
                    ri.append(red(top_k(infl.abs(), k)["helpful"]))
                    rs.append(red(att.select(q, yq, k)[0]["indices"]))
                row[f"dups_influence_k{k}"] = "/".join(map(str, ri))
                row[f"dups_subset_k{k}"] = "/".join(map(str, rs))
            rows.append(row)
    return rows


def _one_cost_run(name, attributor, limit, damping, noise, depth, n_test=8, k=10):
    d = load_target(name, limit)
    lm, z, zt = head(d)
    y = d["y_tr"]
    del d
    gc.collect()
    try:  # reset the peak-RSS counter (Linux): the peak is this attributor's, not model loading's
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = _rss_kib("VmRSS")
    zt = zt[:n_test]
    yt = lm.logits(lm.theta0, zt).argmax(-1)
    calls = {"grads": 0}
    grads = lm.grads

    def counted(zz, yy, theta=None):
        calls["grads"] += len(zz)
        return grads(zz, yy, theta)

    lm.grads = counted
    t0 = time.perf_counter()
    att = build(attributor, lm, damping, noise, depth).fit(z, y)
    t1 = time.perf_counter()
    if attributor == "self_influence_exact":
        att.self_influence()
    else:
        att.scores(zt, yt)
    t2 = time.perf_counter()
    if attributor.startswith("information"):
        att.select(zt[:1], yt[:1], k)
    t3 = time.perf_counter()
    print(json.dumps({"fit_s": t1 - t0, "score_s": t2 - t1, "subset_s": t3 - t2, "total_s": t3 - t0,
                      "peak_extra_mib": max(0, _rss_kib("VmHWM") - base) / 1024, "gradients": calls["grads"],
                      "n_train": len(y), "params": lm.dim}))


def section_cost(name, limit, damping, noise, depth):
    d = load_target(name, limit)
    head(d)  # cache the features in the parent
    rows = []
    for a in ATTRIBUTORS:
        cmd = [sys.executable, __file__, "--_one", json.dumps([name, a, limit, damping, noise, depth])]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        rows.append({"target": name, "attributor": a, **json.loads(res.stdout.strip().splitlines()[-1])})
    ref = rows[0]
    for r in rows:
        r["time_vs_influence_exact"] = r["total_s"] / max(ref["total_s"], 1e-9)
        r["mem_vs_influence_exact"] = r["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["mnist"])
    ap.add_argument("--sections", nargs="+", default=["agreement", "duplicates"])
    ap.add_argument("--limit", type=int, default=None, help="first N training examples")
    ap.add_argument("--damping", type=float, default=0.1)
    ap.add_argument("--noise", type=float, default=0.3, help="the information attributor's GP noise")
    ap.add_argument("--noises", nargs="+", type=float, default=[1.0, 0.5, 0.3, 0.1])
    ap.add_argument("--depth", type=int, default=100, help="LiSSA depth")
    ap.add_argument("--out", default="outputs/bench/tda_information")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if a._one:
        _one_cost_run(*json.loads(a._one))
        return
    results, text = {}, []
    if "duplicates" in a.sections:
        rows = section_duplicates(a.noises)
        results["duplicates"] = rows
        text.append("### Planted near-duplicates (synthetic L2 softmax regression, 3 seeds, damping 0.05)\n\n"
                    "repeated copies in the top-k / greedy subset per seed; spearman_min: single examples vs exact "
                    "influence, worst seed\n\n" + md(rows, ["mode", "noise", "spearman_min", "dups_influence_k10",
                                                             "dups_subset_k10", "dups_influence_k50", "dups_subset_k50"]))
    for t in a.targets:
        if "agreement" in a.sections:
            rows = section_agreement(t, a.limit, a.damping, a.noise, a.depth)
            results.setdefault("agreement", []).extend(rows)
            text.append(f"### Agreement with exact full-data influence: {t} (last layer, damping {a.damping}, noise "
                        f"{a.noise}, 16 test inputs)\n\n"
                        + md(rows, ["attributor", "n_train", "spearman_vs_exact_influence", "top10_overlap"]))
        if "cost" in a.sections:
            rows = section_cost(t, a.limit, a.damping, a.noise, a.depth)
            results.setdefault("cost", []).extend(rows)
            text.append(f"### Cost: {t} (fit + 8 test inputs + one greedy subset of 10; each a fresh process)\n\n"
                        + md(rows, ["attributor", "n_train", "params", "gradients", "fit_s", "score_s", "subset_s",
                                    "total_s", "peak_extra_mib", "time_vs_influence_exact", "mem_vs_influence_exact"]))
    report = "\n\n".join(text) + "\n"
    print(report)
    write_json(Path(a.out) / "results.json", results)
    write_text(Path(a.out) / "RESULTS.md", report)


if __name__ == "__main__":
    main()
