"""FEX against per-instance explainers on the MiniLM Rotten Tomatoes classifier, side by side in one run.

    python train.py experiment=text_rt seed=0 hydra.run.dir=outputs/bench/text_small_seed0     # and seed=1, seed=2
    python benchmarks/bench_text.py --checkpoint outputs/bench/text_small_seed{0,1,2}/explainer.ckpt

Every method explains the same test snippets (explained class = the classifier's prediction) on
the same word features, in batches of --batch-size (64: a user's batch); quality is scored
identically (fex.metrics.faithfulness: deletion/insertion AUC, AOPC, ERASER comprehensiveness and
sufficiency, faithfulness correlation). Several --checkpoint paths are training seeds of one
explainer: each gets its own row (``fex[seed 0]``, ``fex[seed 1]``, ...) and a summary row ``fex`` with the mean
(cost and quality) and the spread over seeds. ``NAME=PATH`` labels another explainer (e.g.
``fex_full=outputs/bench/text_full_seed0/explainer.ckpt`` for ``policy=text_encoder``). Per-instance
methods (KernelShap(200), Lime(200), FeatureAblation, IntegratedGradients on the word embeddings,
the Banzhaf oracle) run once. Snippets of a single word are skipped (KernelShap needs two or more
features). Prints the table and the issue's targets relative to KernelShap(200), and writes
table.md, metrics.json and words.html (highlighted words of every method) to --out.
``--quick`` shrinks everything (8 snippets, small budgets) to check that the script runs.
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
from fex.baselines import Fex  # noqa: E402
from fex.bench import bench, load, machine, mean_row  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402

QUALITY = ("deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency", "faithfulness_corr")
BASELINES = "kernel_shap,lime,feature_ablation,integrated_gradients_words,banzhaf"
QUICK = ["method.kernel_shap.n_samples=16", "method.lime.n_samples=16", "method.integrated_gradients.n_steps=4",
         "compare.faithfulness_subsets=8"]
QUICK_BANZHAF = ["method.banzhaf.n_masks=32"]
# the oracle's budget on text: 500 masks per snippet (~18 words; 2,000 as on MNIST would dominate the run)
TEXT_BANZHAF = ["method.banzhaf.n_masks=500", "method.banzhaf.batch=250"]
# issue 20's targets (on the mean over training seeds), relative to KernelShap(200)
TARGETS = {"comprehensiveness": (">=", 1.0), "deletion_auc": ("<=", 0.95), "insertion_auc": (">=", 1.0),
           "throughput": (">=", 100.0)}


class SeedEnsemble(Fex):
    """The mean of several explainers' scores for the same class (their read-outs share units)."""

    name = "fex_ensemble"

    def __init__(self, blackbox, explainers: list) -> None:
        super().__init__(blackbox, explainer=explainers[0])
        self.members = [Fex(blackbox, explainer=e) for e in explainers]

    def attribute(self, x, target) -> torch.Tensor:
        return torch.stack([m.attribute(x, target) for m in self.members]).mean(0)


def parse_checkpoints(items: list[str]) -> dict[str, list[str]]:
    """``[PATH | NAME=PATH, ...]`` -> {name: [paths]} (unnamed paths are seeds of ``fex``)."""
    out: dict[str, list[str]] = {}
    for it in items:
        name, _, path = it.rpartition("=") if "=" in it else ("fex", "", it)
        out.setdefault(name or "fex", []).append(path)
    return out


def targets(summary: dict, ks: dict) -> dict:
    """Ratios of an explainer's mean to KernelShap's, with the issue's targets and whether each is met."""
    ratio = {"comprehensiveness": summary["comprehensiveness"] / ks["comprehensiveness"] if ks["comprehensiveness"] else None,
             "deletion_auc": summary["deletion_auc"] / ks["deletion_auc"] if ks["deletion_auc"] else None,
             "insertion_auc": summary["insertion_auc"] / ks["insertion_auc"] if ks["insertion_auc"] else None,
             "throughput": ks["sec_per_expl"] / summary["sec_per_expl"] if summary["sec_per_expl"] else None}
    out = {}
    for k, v in ratio.items():
        op, goal = TARGETS[k]
        out[k] = {"ratio": v, "target": f"{op} {goal}x",
                  "met": None if v is None else (v >= goal if op == ">=" else v <= goal)}
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", default=[str(ROOT / "outputs/bench/text_small_seed0/explainer.ckpt")],
                   help="explainer checkpoints: seeds of one explainer, or NAME=PATH for others")
    p.add_argument("--n", type=int, default=200, help="test snippets explained by every method")
    p.add_argument("--batch-size", type=int, default=64, help="explanations per timed batch")
    p.add_argument("--methods", default=BASELINES, help="per-instance methods (comma list of conf/method names)")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/text"))
    p.add_argument("--quick", action="store_true", help="8 snippets, tiny budgets: check that it runs")
    p.add_argument("--ensemble", action="store_true",
                   help="add a row per multi-seed explainer that averages its seeds' scores (a diagnostic: each seed "
                        "runs its own forward pass, so it costs the seeds' time together)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.batch_size = min(a.n, 8), min(a.batch_size, 4)
    ckpts = parse_checkpoints(a.checkpoint)
    first = next(iter(ckpts.values()))[0]
    methods = [m for m in a.methods.split(",") if m]
    oracle = "banzhaf" in methods
    quick = [o for o in QUICK if not o.startswith("method.") or o.split(".")[1] in methods]  # only the methods run
    layers = [TEXT_BANZHAF if oracle else [], (quick + (QUICK_BANZHAF if oracle else [])) if a.quick else [],
              list(a.overrides)]
    over = list({o.split("=")[0]: o for layer in layers for o in layer}.values())  # later layers win
    cfg, bb, explainer, ds = load(first, ",".join(methods) or "fex", over)

    # explainers first (one row per checkpoint: data and target are the checkpoint's), then the
    # per-instance methods (built lazily)
    from fex.explainer import load_explainer
    from fex.tasks.evaluate import build_methods

    runs: dict = {}
    members: dict[str, list[str]] = {}
    for name, paths in ckpts.items():
        for i, path in enumerate(paths):
            row = f"{name}[seed {i}]" if len(paths) > 1 else name
            members.setdefault(name, []).append(row)
            runs[row] = (lambda path=path: Fex(bb, explainer=load_explainer(
                path, target=bb, allow_target_mismatch=bool(cfg.allow_target_mismatch))))
    if a.ensemble:  # one more row per multi-seed explainer: the mean of its seeds' scores (reward units)
        for name, paths in ckpts.items():
            if len(paths) > 1:
                runs[f"{name}[ensemble of {len(paths)}]"] = (lambda paths=paths: SeedEnsemble(bb, [
                    load_explainer(q, target=bb, allow_target_mismatch=bool(cfg.allow_target_mismatch)) for q in paths]))
    runs.update({k: v for k, v in build_methods(cfg, bb, explainer).items() if k != "fex"})

    pos = [i for i, t in enumerate(ds.texts) if len(t.split()) >= 2][: a.n]
    x = explainer.masker.encode([ds.texts[i] for i in pos])
    rows = bench(cfg, bb, explainer, x, a.batch_size, methods=runs)
    summaries = []
    for name, m in members.items():
        got = [r for r in rows if r["method"] in m and "error" not in r]
        if len(m) > 1 and got:
            summaries.append(mean_row(got, name))
    rows = compare.add_ratios(summaries + rows, "kernel_shap")

    ks = next((r for r in rows if r["method"] == "kernel_shap" and "error" not in r), None)
    goals = {}
    if ks is not None:
        for name, m in members.items():
            s = next((r for r in rows if r["method"] == name and "error" not in r), None)
            if s is not None:
                goals[name] = targets(s, ks)
    n_words = explainer.masker.valid(x).sum(1).float()
    ks_name = f"KernelShap({cfg.method.kernel_shap.n_samples})" if "kernel_shap" in cfg.method else "KernelShap"
    budgets = {k: {kk: vv for kk, vv in v.items() if kk != "_target_"} for k, v in cfg.method.items()}
    header = (f"MiniLM Rotten Tomatoes sentiment classifier, word features ({n_words.mean():.1f} words per snippet "
              f"on average, max {int(n_words.max())}), {len(pos)} test snippets, batches of {a.batch_size}; "
              f"{machine()}\ncheckpoints: {ckpts}\nbudgets: {budgets}\n")
    lines = []
    for name, g in goals.items():
        for k, v in g.items():
            status = "-" if v["met"] is None else ("met" if v["met"] else "MISSED")
            what = "throughput" if k == "throughput" else k.replace("_", " ")
            lines.append(f"{name} {what} = {v['ratio']:.3g}x {ks_name} (target {v['target']}): {status}"
                         if v["ratio"] is not None else f"{name} {what}: n/a")
    spread = "\n".join(["| explainer | seeds | " + " | ".join(QUALITY) + " |", "|" + "---|" * (len(QUALITY) + 2)]
                       + [f"| {r['method']} | {r['seeds']} | "
                          + " | ".join(f"{r[k]:.4f} ± {r.get(f'{k}_std', 0.0):.4f}" for k in QUALITY) + " |"
                          for r in summaries])
    table = compare.markdown_table(rows)
    text = header + "\n" + table + "\n\n" + (f"Spread over training seeds (mean ± std):\n\n{spread}\n\n"
                                             if summaries else "") + "\n".join(lines) + "\n"
    out = Path(a.out)
    write_text(out / "table.md", text)
    write_json(out / "metrics.json", {"machine": machine(), "n": len(pos), "batch_size": a.batch_size,
                                      "checkpoints": ckpts, "budgets": budgets, "targets": goals,
                                      "methods": compare.json_rows(rows)})
    write_words(out / "words.html", bb, x, ds, pos, rows, members)
    print(text)
    return rows


def write_words(path: Path, bb, x: dict, ds, pos: list[int], rows: list[dict], members: dict) -> None:
    """Highlighted words of the first 16 snippets: the first explainer, then every other method."""
    from fex.render.text import write_html

    ok = [r for r in rows if "error" not in r and r.get("scores") is not None and "seeds" not in r]
    if not ok:
        return
    with bb.uncounted():
        probs = bb(x)
    pred = probs.argmax(-1)
    names = ["rotten", "fresh"]
    lead = next(iter(members.values()))[0]
    main_row = next((r for r in ok if r["method"] == lead), ok[0])
    k = min(16, len(pos))
    write_html(path, x["words"][:k], main_row["scores"][:k], predictions=[names[int(c)] for c in pred[:k]],
               probabilities=[float(probs[i, pred[i]]) for i in range(k)],
               labels=[names[int(ds.y[i])] for i in pos[:k]],
               method_rows={r["method"]: r["scores"][:k] for r in ok if r is not main_row},
               title="FEX and per-instance explainers on Rotten Tomatoes snippets (MiniLM sentiment)")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
