"""Learning curves of the text explainer: validation faithfulness against target queries and wall time.

    python benchmarks/learning_text.py                                  # every run of RUNS, full data
    python benchmarks/learning_text.py --only banked_chosen --train-batches 0.25 --epochs 3

Each run is ``python train.py <overrides>`` (one process after another, never two at once), seed 0,
on the MiniLM Rotten Tomatoes target. At every validation the module logs the training queries spent
so far (``val/train_queries``), the wall seconds since the fit started (``val/train_seconds``,
validations included) and the deletion / insertion AUC of its read-out on the first 64 validation
snippets (``val/faithfulness`` = insertion - deletion: the kept checkpoint's criterion). The table
lists every validation point of every run, read back with :func:`fex.bench.read_training_curve`.
Wall times depend on the machine's load: compare them only between runs made alone.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

from fex.bench import read_training_curve  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402

# name -> overrides of conf/train.yaml
RUNS: dict[str, list[str]] = {
    # issue 9's preset: one epoch, K=4 fresh antithetic masks per snippet per step, prob reward at 1/2
    "quick (old preset)": ["experiment=text_rt_quick"],
    # the old value (Banzhaf of p at 1/2, tau 0.1), banked: 32 paired masks per snippet, reused every epoch
    "banked, prob q=0.5": ["experiment=text_rt", "objective.reward=prob", "objective.temperature=0.1"],
    # the chosen value (benchmarks/oracles_text.py: Banzhaf of log p at 1/2): the preset itself
    "banked, logprob q=0.5 (text_rt)": ["experiment=text_rt"],
    # a value whose oracle loses (keep rate 0.9, log-odds), for contrast
    "banked, logodds q=0.9": ["experiment=text_rt", "objective.sampler=uniform", "objective.keep_rate=0.9",
                              "objective.reward=logodds"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="names (or unique prefixes) of RUNS")
    p.add_argument("--epochs", type=int, help="trainer.max_epochs for every run (default: each preset's)")
    p.add_argument("--train-batches", type=float, help="trainer.limit_train_batches (a fraction or a count)")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/text_learning"))
    p.add_argument("--dry", action="store_true", help="read the curves of runs made earlier, train nothing")
    p.add_argument("overrides", nargs="*", help="extra overrides for every run")
    a = p.parse_args(argv)
    names = [n for n in RUNS if not a.only or any(n.startswith(o) for o in a.only)]
    out = Path(a.out)
    table = []
    for i, name in enumerate(names):
        run_dir = out / f"run{list(RUNS).index(name)}"
        own_target = any(o.startswith("target=") for o in a.overrides)  # another target: no MiniLM seed
        over = [*RUNS[name], "seed=0", "data.seed=0", *([] if own_target else ["target.model.seed=0"]),
                f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *a.overrides]
        if a.epochs:
            over.append(f"trainer.max_epochs={a.epochs}")
        if a.train_batches:
            over.append(f"trainer.limit_train_batches={a.train_batches:g}")
        if not a.dry:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "train.py"), *over], cwd=ROOT, check=True)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
        csv_path = run_dir / "logs" / "version_0" / "metrics.csv"
        for pt in read_training_curve(csv_path) if csv_path.is_file() else []:
            table.append({"run": name, **pt})
    lines = ["| run | epoch | training queries | wall s (since fit start) | val deletion AUC | val insertion AUC "
             "| val faithfulness |", "|---|---|---|---|---|---|---|"]
    for r in table:
        d, i, sec = r["deletion_auc"], r["insertion_auc"], r["train_seconds"]
        lines.append(f"| {r['run']} | {r['epoch']} | {r['train_queries']:.0f} | {'-' if sec is None else f'{sec:.0f}'} | "
                     f"{'-' if d is None else f'{d:.4f}'} | {'-' if i is None else f'{i:.4f}'} | "
                     f"{'-' if d is None or i is None else f'{i - d:.4f}'} |")
    text = "\n".join(lines) + "\n"
    write_text(out / "learning.md", text)
    write_json(out / "learning.json", {"runs": {n: RUNS[n] for n in names}, "points": table})
    print(text)
    return table


if __name__ == "__main__":
    main()
