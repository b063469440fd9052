"""Where is the learning lost? Every objective variant on the same network, masker and query budget.

    python benchmarks/objectives.py --out outputs/bench/objectives          # all variants (long)
    python benchmarks/objectives.py --variants banked,paper --budget 64      # a subset / smaller budget
    python benchmarks/objectives.py --quick --out /tmp/obj                   # smoke run
    python benchmarks/objectives.py --variants paper,reinforce,disarm,fastshap,banked,ceiling \
        --adopt banked=outputs/bench/cos_seed0      # the default's curve from its `python train.py` run

Each variant trains the default conv policy on the MNIST CNN target (7x7 patches) through
``fex.tasks.train.train`` with the same number of black-box queries per training input
(``--budget`` masks + the prediction), validating several times per epoch, so each run's
``logs/version_0/metrics.csv`` holds a learning curve: validation deletion / insertion AUC of the
read-out against training queries. The ``ceiling`` variant is the same network fitted by supervised
regression to per-input Banzhaf labels (``fex.baselines.Banzhaf``, ``--oracle-masks`` masks each, on
``--ceiling-inputs`` training digits): what the architecture can represent when the labels are given.
Quality numbers only (no timings): safe to run while the machine is busy. Writes ``report.md``,
``objectives.json`` and ``learning_curves.png`` to --out; a variant whose run directory already holds
a finished checkpoint is read back, not retrained.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: F401,E402  (torchvision shim before lightning)
import fex.io  # noqa: E402
from fex.render import markdown_table  # noqa: E402
import torch  # noqa: E402

# name -> (description, overrides, masks per training input per epoch)
VARIANTS = {
    "paper": ("the paper: PPO, reward p*F/(sum m + 1), critic, entropy 1e-4, K=5",
              ["objective=fex_paper"], 5),
    "paper_prob_loo": ("PPO, reward p, leave-one-out, K=8, entropy_weight=2 (the issue's best PPO row)",
                       ["objective=fex_paper", "objective.reward=prob", "objective.baseline=loo",
                        "objective.num_samples=8", "objective.entropy_weight=2.0"], 8),
    "reinforce": ("REINFORCE + exact entropy gradient at tau=0.05, RLOO, on-policy, K=16",
                  ["objective.estimator=reinforce", "objective.sampler=policy", "objective.baseline=loo",
                   "objective.temperature=0.05", "objective.query_budget=0", "objective.num_samples=16",
                   "objective.attribution=logit"], 16),
    "disarm": ("REINFORCE with DisARM antithetic pairs at tau=0.05, K=16",
               ["objective.estimator=reinforce", "objective.sampler=antithetic", "objective.temperature=0.05",
                "objective.query_budget=0", "objective.num_samples=16"], 16),
    "regression_onpolicy": ("regression (linear control variate), on-policy antithetic pairs, fresh masks, K=16",
                            ["objective.sampler=antithetic", "objective.query_budget=0", "objective.num_samples=16"], 16),
    "fastshap": ("FastSHAP: Shapley-kernel pairs, efficiency normalisation, banked like the default",
                 ["objective=fastshap"], None),
    "banked": ("the default: regression at tau -> infinity (paired uniform masks), queried once, reused",
               [], None),
}


def run_variant(name: str, out: Path, a: argparse.Namespace) -> dict:
    from fex.bench import compose
    from fex.tasks.train import train

    desc, overrides, per_epoch = VARIANTS[name]
    run = out / name
    budget = a.budget
    epochs = max(1, round(budget / per_epoch)) if per_epoch else a.banked_epochs
    o = [*overrides, f"trainer.max_epochs={epochs}", f"output_dir={run}", "trainer.enable_progress_bar=false",
         "gallery_size=0", f"seed={a.seed}", f"+trainer.val_check_interval={a.val_interval}"]
    if per_epoch is None:
        o.append(f"objective.query_budget={budget}")
    if a.limit:
        o += [f"data.limit={a.limit}", "trainer.limit_val_batches=2", "val_auc_examples=8"]
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run.exists():  # an unfinished run: its logs would mix into the new curve (logs/version_0)
        shutil.rmtree(run)
    cfg = compose("train", o)
    t0 = time.perf_counter()
    metrics, _ = train(cfg)
    return run_result(name, desc, o, run, float(metrics["train/queries"]), time.perf_counter() - t0, done)


def run_result(name: str, desc: str, overrides: list[str], run: Path, queries: float, seconds: float,
               done: Path) -> dict:
    """A variant's row: its learning curve (the run's ``logs/version_0/metrics.csv``) and best point,
    written to ``done``."""
    from fex.bench import read_training_curve

    curve = [p for p in read_training_curve(run / "logs" / "version_0" / "metrics.csv")
             if p["deletion_auc"] is not None and p["insertion_auc"] is not None]
    best = max(curve, key=lambda p: p["insertion_auc"] - p["deletion_auc"]) if curve else {}
    res = {"variant": name, "description": desc, "overrides": overrides, "train_queries": queries,
           "seconds": seconds, "best_val_deletion_auc": best.get("deletion_auc"),
           "best_val_insertion_auc": best.get("insertion_auc"), "curve": curve}
    fex.io.write_json(done, res)
    return res


def adopt_run(name: str, run: Path, out: Path) -> dict:
    """A variant's row and curve read from a finished ``python train.py`` run directory (e.g. the
    default's seed-0 benchmark run) instead of training it again."""
    done = out / name / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    metrics = json.loads((run / "train_metrics.json").read_text())
    desc = VARIANTS[name][0] if name in VARIANTS else name
    return run_result(name, f"{desc} (read from {run})", [], run, float(metrics["train/queries"]),
                      float(metrics.get("train/seconds", 0.0)), done)


def run_ceiling(out: Path, a: argparse.Namespace) -> dict:
    """The default policy network fitted by supervised regression to per-input Banzhaf labels."""
    from hydra.utils import instantiate

    from fex import metrics as M
    from fex.bench import compose
    from fex.methods.baselines import Banzhaf
    from fex.config import build_blackbox, build_data

    done = out / "ceiling" / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = compose("train", [f"seed={a.seed}", "output_dir=."])
    torch.manual_seed(a.seed)
    bb = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    dm = build_data(cfg.data)
    masker = instantiate(cfg.masker)
    train, val = dm.dataset("train"), dm.dataset("val")
    x = train.x[: a.ceiling_inputs]
    t0 = time.perf_counter()
    with bb.counting() as spent:
        cls = bb(x).argmax(-1)
        labels = Banzhaf(bb, masker, n_masks=a.oracle_masks, seed=a.seed).attribute(x, cls)
    policy = instantiate(cfg.policy)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    tau = float(cfg.objective.temperature)
    xv = val.x[:64]
    with bb.uncounted():
        cv = bb(xv).argmax(-1)
    curve = []
    for ep in range(a.ceiling_epochs):
        perm = torch.randperm(len(x))
        for s0 in range(0, len(x), 64):
            i = perm[s0:s0 + 64]
            theta = policy(x[i], masker)[0].gather(-1, cls[i].view(-1, 1, 1).expand(-1, masker.num_features(), 1))[..., 0]
            loss = ((tau * theta - labels[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (ep + 1) % max(1, a.ceiling_epochs // 5) == 0:
            with torch.no_grad(), bb.uncounted():
                sv = policy(xv, masker)[0].gather(-1, cv.view(-1, 1, 1).expand(-1, masker.num_features(), 1))[..., 0]
                curve.append({"epoch": ep + 1, "train_queries": float(spent.n),
                              "deletion_auc": float(M.deletion_auc(bb, masker, xv, sv, cv, 20).mean()),
                              "insertion_auc": float(M.insertion_auc(bb, masker, xv, sv, cv, 20).mean())})
    best = max(curve, key=lambda p: p["insertion_auc"] - p["deletion_auc"])
    res = {"variant": "ceiling", "description": f"supervised on Banzhaf labels ({a.oracle_masks} masks each) of "
           f"{len(x)} training digits", "overrides": [], "train_queries": float(spent.n),
           "seconds": time.perf_counter() - t0, "best_val_deletion_auc": best["deletion_auc"],
           "best_val_insertion_auc": best["insertion_auc"], "curve": curve}
    fex.io.write_json(done, res)
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join([*VARIANTS, "ceiling"]))
    p.add_argument("--ceiling-inputs", type=int, default=1000, help="training digits with oracle labels")
    p.add_argument("--oracle-masks", type=int, default=1000, help="masks per oracle label")
    p.add_argument("--ceiling-epochs", type=int, default=40)
    p.add_argument("--budget", type=int, default=128, help="masks per training input (same for every variant)")
    p.add_argument("--banked-epochs", type=int, default=20, help="epochs of the banked variants")
    p.add_argument("--val-interval", type=float, default=0.5, help="validations per epoch = 1 / this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "outputs/bench/objectives"))
    p.add_argument("--adopt", nargs="*", default=[], metavar="NAME=RUN_DIR",
                   help="read these variants from finished `python train.py` run directories instead of training them")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    adopted = dict(item.split("=", 1) for item in a.adopt)
    if a.quick:
        a.budget, a.banked_epochs, a.limit, a.val_interval = 8, 2, 128, 1.0
        a.ceiling_inputs, a.oracle_masks, a.ceiling_epochs = 32, 64, 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_ceiling(out, a) if v == "ceiling" else adopt_run(v, Path(adopted[v]), out) if v in adopted
            else run_variant(v, out, a) for v in a.variants.split(",") if v]
    def auc(v):
        return v if v is None else format(v, ".4f")

    table = markdown_table(["variant", "what", "training queries", "best val deletion AUC", "its val insertion AUC"],
                           [[r["variant"], r["description"], f"{r['train_queries']:.0f}", auc(r["best_val_deletion_auc"]),
                             auc(r["best_val_insertion_auc"])] for r in rows])
    fex.io.write_text(out / "report.md", table + "\n")
    fex.io.write_json(out / "objectives.json", rows)
    plot(rows, out / "learning_curves.png")
    print(table, flush=True)
    return {"rows": rows}


def plot(rows: list[dict], path: Path) -> None:
    from fex.render.plots import learning_curves

    learning_curves([(r["variant"], r["curve"]) for r in rows],
                    [("deletion_auc", "val deletion AUC (lower better)"),
                     ("insertion_auc", "val insertion AUC (higher better)")], path)


if __name__ == "__main__":
    main()
