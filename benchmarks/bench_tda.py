"""Training-data attribution benchmark: Hessian subset samplers side by side (fex.tda).

Sections (``--sections``, default all but timing):

* ``hessian``  - relative Frobenius error |H_S - H|_F / |H|_F of each sampler's subset Hessian
  against the full-data Hessian, mean +- std over seeds, at equal subset sizes; plus the Spearman
  correlation of the resulting influence scores with the exact full-Hessian scores.
* ``mislabel`` - flip 5% of the training labels, retrain, rank by self-influence: the fraction of
  flipped examples in the top 10% (random ranking: 0.10; training-loss ranking for context).
  MNIST: the small CNN retrained (a few epochs); text: last-layer-only retraining (LBFGS).
* ``removal``  - class removal: drop the k training examples credited most for a class's test
  predictions, retrain the last layer (LBFGS to convergence), class F1 drop vs k random ones.
* ``timing``   - time and peak memory of each sampler at equal quality (the subset size at which
  its Hessian error reaches uniform's error at ``--ref-size``), each run in a fresh process.
  TIMED: run alone on an idle machine.

Targets: ``mnist`` (the cached SmallCNN, last layer: 1,290 parameters) and ``text`` (the cached
MiniLM Rotten Tomatoes classifier, last layer: 770 parameters). Features of the training set are
computed once and cached under $FEX_CACHE/tda/.

    python benchmarks/bench_tda.py --quick                          # seconds: validates every section
    python benchmarks/bench_tda.py --targets mnist text             # non-timing sections
    python benchmarks/bench_tda.py --targets mnist text --sections timing   # idle machine only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from fex.io import write_json, write_text
from fex.paths import default_cache_dir
from fex.render import markdown_table
from fex.tda import ExactSolver, FeatureSampler, FullSampler, Influence, LissaSolver, LogitSampler, LossModel, UniformSampler
from fex.tda.evaluation import (class_removal, detection_rate, fit_softmax, flip_labels, hessian_error, spearman)

CACHE = default_cache_dir()
SAMPLERS = {"uniform": UniformSampler, "logit": LogitSampler, "feature": FeatureSampler}


# --------------------------------------------------------------------------- data + features
def load_target(name: str, limit: int | None):
    """-> dict(model, x_tr, y_tr, x_te, y_te, num_classes, label)."""
    if name == "mnist":
        from fex.data.mnist import MNISTDataModule
        from fex.targets.mnist_cnn import pretrained_mnist_cnn

        dm = MNISTDataModule()
        tr, te = dm.dataset("train"), dm.dataset("test")
        d = {"model": pretrained_mnist_cnn(cache_dir=str(CACHE)), "x_tr": tr.x, "y_tr": tr.y, "x_te": te.x,
             "y_te": te.y, "num_classes": 10}
    elif name == "text":
        from fex.data.text import load_splits
        from fex.targets.text import minilm_sentiment

        splits, names = load_splits("rotten_tomatoes", str(CACHE), 1000, 1000, 0)
        d = {"model": minilm_sentiment(cache_dir=str(CACHE)), "x_tr": splits["train"].texts, "y_tr": splits["train"].y,
             "x_te": splits["test"].texts, "y_te": splits["test"].y, "num_classes": len(names)}
    else:
        raise SystemExit(f"unknown target {name!r}")
    if limit:
        d.update(x_tr=d["x_tr"][:limit], y_tr=d["y_tr"][:limit], x_te=d["x_te"][: max(50, limit // 5)],
                 y_te=d["y_te"][: max(50, limit // 5)])
    d["name"] = name
    return d


def features(d: dict, lm: LossModel, split: str) -> torch.Tensor:
    """Penultimate features of a split, cached on disk per target and size."""
    x = d[f"x_{split}"]
    path = CACHE / "tda" / f"features_{d['name']}_{split}_{len(x)}.pt"
    if path.is_file():
        return torch.load(path)
    f = lm.prepare(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(f, tmp)
    os.replace(tmp, path)
    return f


def setup(name: str, limit: int | None):
    d = load_target(name, limit)
    lm = LossModel(d["model"], "last", chunk_size=256)
    z, zt = features(d, lm, "tr"), features(d, lm, "te")
    with torch.no_grad():
        probs = lm.logits(lm.theta0, z).softmax(-1)
    return d, lm, z, zt, probs


def exact_factory(damping):
    return lambda m, z, y, w: ExactSolver(m, z, y, w, damping=damping)


# --------------------------------------------------------------------------- sections
def section_hessian(name, sizes, seeds, damping, limit, n_test=16):
    d, lm, z, zt, probs = setup(name, limit)
    y = d["y_tr"]
    h = lm.hessian(z, y)
    yt = lm.logits(lm.theta0, zt[:n_test]).argmax(-1)
    g = lm.grads(zt[:n_test], yt)
    gtr = torch.cat([lm.grads(z[s:s + 1000], y[s:s + 1000]) for s in range(0, len(z), 1000)])  # [N, D]: D is small here
    ref = ExactSolver(lm, z, y, None, damping=damping, hessian=h).solve(g) @ gtr.T
    rows = []
    for size in sizes:
        smp = {k: cls(size=size) for k, cls in SAMPLERS.items()}
        err = hessian_error(lm, z, y, smp, seeds, probs=probs, features=z, full_hessian=h)
        for k, s in smp.items():
            rho = []
            for seed in seeds:
                idx, w = s.sample(len(z), probs=probs, features=z, seed=seed)
                sc = ExactSolver(lm, z[idx], y[idx], w, damping=damping).solve(g) @ gtr.T
                rho.append(sum(spearman(a, b) for a, b in zip(sc, ref)) / len(sc))
            r = torch.tensor(rho)
            rows.append({"target": name, "size": err[k]["size"], "sampler": k, "hess_err_mean": err[k]["mean"],
                         "hess_err_std": err[k]["std"], "spearman_mean": float(r.mean()), "spearman_std": float(r.std())})
    return rows


def retrain_cnn(x, y, epochs, seed=0):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from fex.data.mnist import IndexedTensorDataset
    from fex.targets.classifier import fit
    from fex.targets.mnist_cnn import SmallCNN, mnist_classifier

    pl.seed_everything(seed, workers=True)
    model = SmallCNN()
    model(torch.zeros(1, 1, 28, 28))
    loader = DataLoader(IndexedTensorDataset(x, y), batch_size=64, shuffle=True)
    return fit(mnist_classifier(model, 2e-3), epochs=epochs, train_dataloaders=loader)


def section_mislabel(name, size, damping, limit, epochs, lissa_depth):
    d = load_target(name, limit)
    y_flip, flipped = flip_labels(d["y_tr"], d["num_classes"], 0.05, seed=0)
    if name == "mnist":  # retrain the whole CNN on the noisy labels (a few epochs)
        lm = LossModel(retrain_cnn(d["x_tr"], y_flip, epochs), "last")
        z = lm.prepare(d["x_tr"])
        how = f"SmallCNN retrained {epochs} epochs on the flipped labels"
    else:  # last-layer-only retraining on frozen features
        base = LossModel(d["model"], "last")
        z = features(d, base, "tr")
        lm = LossModel(fit_softmax(z.double(), y_flip, d["num_classes"], damping), "last")
        z = z.double()
        how = "last layer retrained (LBFGS, L2=damping) on frozen MiniLM features with the flipped labels"
    with torch.no_grad():
        probs = lm.logits(lm.theta0, z.to(lm.theta0.dtype)).softmax(-1)
        loss = torch.nn.functional.cross_entropy(lm.logits(lm.theta0, z.to(lm.theta0.dtype)), y_flip, reduction="none")
    gen = torch.Generator().manual_seed(0)
    rnd = sum(detection_rate(torch.rand(len(z), generator=gen), flipped) for _ in range(100)) / 100
    row = {"target": name, "retrain": how, "flipped": len(flipped), "n": len(z), "random": rnd,
           "training_loss": detection_rate(loss, flipped)}
    methods = {"full_exact": (FullSampler(), exact_factory(damping))}
    for k, cls in SAMPLERS.items():
        methods[f"{k}_exact"] = (cls(size=size), exact_factory(damping))
    methods["logit_lissa"] = (LogitSampler(size=size), lambda m, zz, yy, w: LissaSolver(
        m, zz, yy, w, damping=damping, depth=lissa_depth, batch_size=512))
    for k, (smp, sol) in methods.items():
        infl = Influence(lm, smp, sol, chunk_size=512)
        infl.z, infl.y, infl.n = z.to(lm.theta0.dtype), y_flip, len(z)
        infl.subset, infl.weights = smp.sample(len(z), probs=probs, features=z, seed=0)
        infl.solver = sol(lm, infl.z[infl.subset], y_flip[infl.subset], infl.weights.to(lm.theta0.dtype))
        row[k] = detection_rate(infl.self_influence(), flipped)
    return row


def section_removal(name, size, damping, limit, k):
    d, lm, z, zt, probs = setup(name, limit)

    def method(smp, sol):
        def make(head):
            infl = Influence(head, smp, sol, chunk_size=1024)
            zz = z.double()
            infl.z, infl.y, infl.n = zz, d["y_tr"], len(zz)
            p = head.logits(head.theta0, zz).softmax(-1).detach()
            infl.subset, infl.weights = smp.sample(len(zz), probs=p, features=zz, seed=0)
            infl.solver = sol(head, zz[infl.subset], d["y_tr"][infl.subset], infl.weights.double())
            return infl
        return make

    methods = {"full_exact": method(FullSampler(), exact_factory(damping))}
    for key, cls in SAMPLERS.items():
        methods[f"{key}_exact"] = method(cls(size=size), exact_factory(damping))
    res = class_removal(z, d["y_tr"], zt, d["y_te"], d["num_classes"], damping, methods, k)
    return {"target": name, "k": k, **{f"drop_{m}": v for m, v in res["mean_f1_drop"].items()},
            "f1_before_mean": sum(r["f1_before"] for r in res["rows"]) / len(res["rows"])}


# --------------------------------------------------------------------------- timing (fresh process per run)
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _one_timed_run(name, sampler, size, damping, limit, solver, depth):
    import copy
    import gc

    from fex.tda.model import last_linear

    d = load_target(name, limit)
    z = features(d, LossModel(d["model"], "last"), "tr")  # cached by the parent
    zt = features(d, LossModel(d["model"], "last"), "te")[:8]
    y = d["y_tr"]
    lm = LossModel(copy.deepcopy(last_linear(d["model"])[1]), "last", chunk_size=256)  # the head alone
    del d
    gc.collect()
    try:  # reset the peak-RSS counter (Linux): the peak below is this pipeline's, not model loading's
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    base = _rss_kib("VmRSS")
    smp = FullSampler() if sampler == "full" else SAMPLERS[sampler](size=size)
    sol = exact_factory(damping) if solver == "exact" else (
        lambda m, zz, yy, w: LissaSolver(m, zz, yy, w, damping=damping, depth=depth, batch_size=None))
    t0 = time.perf_counter()
    infl = Influence(lm, smp, sol, chunk_size=256)
    infl.z, infl.y, infl.n = z, y, len(z)
    t1 = time.perf_counter()
    p = infl.probs(z) if "probs" in smp.needs else None
    infl.subset, infl.weights = smp.sample(len(z), probs=p, features=z, seed=0)
    t2 = time.perf_counter()
    infl.solver = sol(lm, z[infl.subset], y[infl.subset], infl.weights)
    s = infl.solver.solve(lm.grads(zt, lm.logits(lm.theta0, zt).argmax(-1)))
    t3 = time.perf_counter()
    infl.scores_for(s)
    t4 = time.perf_counter()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"sample_s": t2 - t1, "hessian_ihvp_s": t3 - t2, "score_s": t4 - t3, "total_s": t4 - t0,
                      "peak_extra_mib": max(0, peak - base) / 1024}))


def section_timing(name, ref_size, grid, seeds, damping, limit, solver, depth):
    d, lm, z, zt, probs = setup(name, limit)
    y = d["y_tr"]
    h = lm.hessian(z, y)
    target = hessian_error(lm, z, y, {"u": UniformSampler(ref_size)}, seeds, full_hessian=h)["u"]["mean"]
    rows = []
    for key, cls in SAMPLERS.items():
        size = None
        for g in grid:  # the smallest grid size whose mean error reaches the uniform reference's
            e = hessian_error(lm, z, y, {key: cls(size=g)}, seeds, probs=probs, features=z, full_hessian=h)[key]["mean"]
            if e <= target * 1.0001:
                size, err = g, e
                break
        if size is None:
            size, err = grid[-1], e
        cmd = [sys.executable, __file__, "--_one", json.dumps([name, key, size, damping, limit, solver, depth])]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        m = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"target": name, "sampler": key, "size": size, "hess_err": err, "target_err": target, **m})
    u = next(r for r in rows if r["sampler"] == "uniform")
    for r in rows:
        r["time_vs_uniform"] = r["total_s"] / max(u["total_s"], 1e-9)
        r["mem_vs_uniform"] = r["peak_extra_mib"] / max(u["peak_extra_mib"], 1e-9)
    return rows


# --------------------------------------------------------------------------- tables
def md(rows, cols):
    def f(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return markdown_table(cols, [[f(r.get(c, "")) for c in cols] for r in rows])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["mnist"])
    ap.add_argument("--sections", nargs="+", default=["hessian", "mislabel", "removal"])
    ap.add_argument("--sizes", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--damping", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=None, help="first N training examples")
    ap.add_argument("--epochs", type=int, default=4, help="CNN retraining epochs (mislabel)")
    ap.add_argument("--removal-k", type=float, default=0.03, help="examples removed: count or fraction of N")
    ap.add_argument("--ref-size", type=float, default=0.1, help="timing: uniform's size that sets the quality bar")
    ap.add_argument("--solver", default="lissa", choices=["lissa", "exact"], help="timing: IHVP solver")
    ap.add_argument("--depth", type=int, default=100, help="LiSSA depth (timing, mislabel)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes to validate the script (numbers meaningless)")
    ap.add_argument("--out", default="outputs/bench/tda")
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if a._one:
        _one_timed_run(*json.loads(a._one))
        return
    if a.quick:
        a.limit, a.seeds, a.sizes, a.epochs, a.depth = a.limit or 400, 2, [0.05, 0.1], 1, 20
    seeds = list(range(a.seeds))
    out = Path(a.out)
    results, text = {}, []
    for t in a.targets:
        n = len(load_target(t, a.limit)["y_tr"])
        size = 0.1
        if "hessian" in a.sections:
            rows = section_hessian(t, a.sizes, seeds, a.damping, a.limit)
            results.setdefault("hessian", []).extend(rows)
            text.append(f"### Hessian estimate vs full data: {t} (last layer, {len(seeds)} seeds, damping {a.damping})\n\n"
                        + md(rows, ["size", "sampler", "hess_err_mean", "hess_err_std", "spearman_mean", "spearman_std"]))
        if "mislabel" in a.sections:
            row = section_mislabel(t, size, a.damping, a.limit, a.epochs, a.depth)
            results.setdefault("mislabel", []).append(row)
            text.append(f"### Mislabeled-example detection: {t} ({row['flipped']} of {row['n']} labels flipped; "
                        f"{row['retrain']}; subset size {size})\n\nfraction of flipped examples in the top 10% by score\n\n"
                        + md([row], ["random", "training_loss", "full_exact", "uniform_exact", "logit_exact",
                                     "feature_exact", "logit_lissa"]))
        if "removal" in a.sections:
            k = int(a.removal_k if a.removal_k >= 1 else math.ceil(a.removal_k * n))
            row = section_removal(t, size, a.damping, a.limit, k)
            results.setdefault("removal", []).append(row)
            text.append(f"### Class removal: {t} (remove top-{k} credited, retrain last layer; mean class F1 drop)\n\n"
                        + md([row], ["f1_before_mean", "drop_random", "drop_full_exact", "drop_uniform_exact",
                                     "drop_logit_exact", "drop_feature_exact"]))
        if "timing" in a.sections:
            grid = sorted({round(x, 4) for x in [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3]})
            rows = section_timing(t, a.ref_size, grid, seeds, a.damping, a.limit, a.solver, a.depth)
            results.setdefault("timing", []).extend(rows)
            text.append(f"### Time and peak memory at equal Hessian error: {t} ({a.solver}; quality bar = uniform at "
                        f"{a.ref_size}; each run a fresh process)\n\n"
                        + md(rows, ["sampler", "size", "hess_err", "target_err", "sample_s", "hessian_ihvp_s", "score_s",
                                    "total_s", "peak_extra_mib", "time_vs_uniform", "mem_vs_uniform"]))
    report = "\n\n".join(text) + "\n"
    print(report)
    write_json(out / "results.json", results)
    write_text(out / "RESULTS.md", report)


if __name__ == "__main__":
    main()
