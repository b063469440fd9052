"""Objective sweep for the text preset, scored on the VALIDATION split (never the test split).

    python benchmarks/sweep_text.py --parallel 3            # -> outputs/sweep_text/<name>/, table on stdout
    python benchmarks/sweep_text.py --only K4_t0.1 --queries 2000 --out /tmp/sweep

Each row is a short ``python train.py experiment=text_rt_quick <overrides>`` run (the preset of issue 9) with the same budget of
``--queries`` training queries (rows with more masks per input see fewer inputs), scored once at
the end on the first ``--val-examples`` validation snippets. The score is the run's ``val/faithfulness``
(validation insertion AUC - deletion AUC, logged by the module's validation step; the checkpoint
monitor keeps that explainer), with the deletion and insertion AUCs of the same validation, the
training queries and wall time. The table goes to stdout and, with --write, to
benchmarks/SWEEP_text.md. Runs are independent processes (``--parallel`` at a time, one thread each).
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from fex.io import write_text

ROOT = Path(__file__).resolve().parents[1]

# name -> overrides of experiment=text_rt, whose objective (conf/objective/text.yaml) is the base: regression,
# reward prob, K=4 antithetic masks, temperature 0.1, logit read-out (issue 8's options; tau in reward units).
# Every row gets the same number of training QUERIES (--queries), so rows with more masks per input
# see fewer inputs.
GRID: dict[str, list[str]] = {
    "paper (fex reward, PPO, K=5)": ["objective=fex_paper"],
    "K16_t0.1": ["objective.num_samples=16"],
    "K4_t0.1 (the preset, objective=text)": [],
    "K4_t0.03": ["objective.temperature=0.03"],
    "K4_t0.3": ["objective.temperature=0.3"],
    "K4_logprob_t0.3": ["objective.reward=logprob", "objective.temperature=0.3"],
    "K4_keep_minus_remove_t0.2": ["objective.reward=keep_minus_remove", "objective.temperature=0.2"],
    "K4_t0.1_policy_sampler": ["objective.sampler=policy"],
    "banked_logprob (objective=fex, the MNIST default)": ["objective=fex"],
}
PAPER_K = 5


def queries_per_input(overrides: list[str], default_k: int) -> int:
    """Training queries per input per step: the unmasked input, K masks, and K complements if needed."""
    kv = dict(o.split("=", 1) for o in overrides if "=" in o)
    group_k = {"fex_paper": PAPER_K, "fex": 32}.get(kv.get("objective", ""), default_k)
    k = int(kv.get("objective.num_samples", group_k))
    twice = kv.get("objective.reward") == "keep_minus_remove" or float(kv.get("objective.comprehensiveness", 0))
    return 1 + k * (2 if twice else 1)


def read_metrics(run_dir: Path) -> dict:
    """Best val/faithfulness of a run (and the deletion/insertion AUCs and queries of that validation)."""
    f = run_dir / "logs" / "version_0" / "metrics.csv"
    if not f.is_file():
        return {}
    rows = list(csv.DictReader(f.open()))
    val = [r for r in rows if r.get("val/faithfulness")]
    out: dict = {}
    q = [float(r["train/queries"]) for r in rows if r.get("train/queries")]
    if q:
        out["train_queries"] = max(q)
    if val:
        best = max(val, key=lambda r: float(r["val/faithfulness"]))
        out.update({k.split("/")[1]: float(best[k]) for k in ("val/faithfulness", "val/deletion_auc",
                                                               "val/insertion_auc") if best.get(k)})
        out["last_faithfulness"] = float(val[-1]["val/faithfulness"])
        out["validations"] = len(val)
    for k in ("train/mask_frac", "train/entropy"):
        last = [r[k] for r in rows if r.get(k)]
        if last:
            out[k.split("/")[1]] = float(last[-1])
    return out


def command(name: str, overrides: list[str], a: argparse.Namespace) -> list[str]:
    steps = max(1, a.queries // (a.batch_size * queries_per_input(overrides, a.default_k)))
    return [sys.executable, str(ROOT / "train.py"), "experiment=text_rt_quick", f"seed={a.seed}",
            f"trainer.limit_train_batches={steps}", f"trainer.val_check_interval={steps}",
            f"trainer.limit_val_batches={max(1, -(-a.val_examples // a.batch_size))}",
            f"val_auc_examples={a.val_examples}", f"data.batch_size={a.batch_size}", "gallery_size=0",
            "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", *a.extra, *overrides,
            f"hydra.run.dir={Path(a.out) / name.split(' ')[0]}"]


def table(results: dict[str, dict], a: argparse.Namespace) -> str:
    head = ("| objective | overrides | best val faithfulness (ins - del) | val deletion AUC | val insertion AUC "
            "| last val faithfulness | training queries | mask frac (end) | wall s | health |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1].get("faithfulness", -9)):
        def f(k, spec=".4f"):
            return format(r[k], spec) if k in r else "-"
        lines.append(f"| {name} | `{' '.join(GRID[name])}` | {f('faithfulness')} | {f('deletion_auc')} "
                     f"| {f('insertion_auc')} | {f('last_faithfulness')} | {f('train_queries', '.0f')} "
                     f"| {f('mask_frac', '.3f')} | {f('wall', '.0f')} | {r.get('health', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="grid rows to run (default: all)")
    p.add_argument("--queries", type=int, default=3000, help="training queries per run (same for every row)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val-examples", type=int, default=48, help="validation snippets scored (once, at the end)")
    p.add_argument("--default-k", type=int, default=4, help="num_samples of the preset's objective (objective=text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "outputs/sweep_text"))
    p.add_argument("--write", action="store_true", help="write benchmarks/SWEEP_text.md")
    p.add_argument("extra", nargs="*", help="more overrides for every run (e.g. policy=text_small)")
    a = p.parse_args(argv)
    names = a.only or list(GRID)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running, results = list(names), {}, {}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < a.parallel:
            name = pending.pop(0)
            log = open(Path(a.out) / f"{name.split(' ')[0]}.log", "w")
            running[name] = (subprocess.Popen(command(name, GRID[name], a), cwd=ROOT, env=env, stdout=log,
                                              stderr=subprocess.STDOUT), time.perf_counter(), log)
        time.sleep(2)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            r = read_metrics(Path(a.out) / name.split(" ")[0])
            r["wall"] = time.perf_counter() - t0
            summary = [ln for ln in Path(log.name).read_text().splitlines() if ln.startswith("fex: explainer")]
            if summary and "| policy " in summary[-1]:
                r["health"] = summary[-1].split("| policy ")[1].split(" |")[0].split(" (")[0]
            if proc.returncode:
                r["health"] = f"exit {proc.returncode}"
            results[name] = r
            del running[name]
            print(f"{name}: {r}", flush=True)
    text = table(results, a)
    print(text)
    if a.write:
        write_text(ROOT / "benchmarks" / "SWEEP_text.md", text + "\n")
    return results


if __name__ == "__main__":
    main()
