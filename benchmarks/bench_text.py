"""FEX against KernelShap(200) (and other baselines) on the MiniLM Rotten Tomatoes classifier, side by side.

    python train.py experiment=text_rt hydra.run.dir=outputs/bench/train_text         # the explainer (once)
    python benchmarks/bench_text.py --checkpoint outputs/bench/train_text/explainer.ckpt

Every method explains the same test snippets (explained class = the classifier's prediction)
on the same word features; quality is scored identically (fex.metrics.faithfulness, which
includes ERASER comprehensiveness / sufficiency). Snippets of a single word are skipped
(KernelShap needs two or more features). Reuses the batch-evaluation benchmark driver of
``fex.bench`` (as bench_mnist.py does); prints a markdown table with ratios relative to KernelShap,
the two issue targets (throughput >= 50x, comprehensiveness >= 0.95x KernelShap(200)), and
writes metrics.json, table.md and an HTML page of highlighted words to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401
import torch  # noqa: E402
from fex import compare  # noqa: E402
from fex.bench import bench, load, machine  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.render.text import write_html  # noqa: E402

DEFAULT_METHODS = "fex,kernel_shap,lime,feature_ablation,integrated_gradients_words"


def targets(rows: list[dict]) -> dict:
    fx = next((r for r in rows if r["method"] == "fex" and "error" not in r), None)
    ks = next((r for r in rows if r["method"] == "kernel_shap" and "error" not in r), None)
    if not fx or not ks:
        return {}
    return {"throughput_vs_kernel_shap": ks["sec_per_expl"] / fx["sec_per_expl"],
            "comprehensiveness_vs_kernel_shap": fx["comprehensiveness"] / ks["comprehensiveness"]
            if ks["comprehensiveness"] else None}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "outputs/bench/train_text/explainer.ckpt"))
    p.add_argument("--n", type=int, default=64, help="test snippets explained by every method")
    p.add_argument("--batch-size", type=int, default=16, help="explanations per timed batch")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--out", default=str(ROOT / "outputs/bench/text"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = p.parse_args(argv)
    cfg, bb, explainer, ds = load(a.checkpoint, a.methods, list(a.overrides))  # data and target: the checkpoint's
    pos = [i for i, t in enumerate(ds.texts) if len(t.split()) >= 2][: a.n]
    x = explainer.masker.encode([ds.texts[i] for i in pos])
    rows = bench(cfg, bb, explainer, x, a.batch_size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    goal = targets(rows)
    table = compare.markdown_table(rows)
    budgets = {k: {kk: vv for kk, vv in v.items() if kk != "_target_"} for k, v in cfg.method.items()}
    n_words = explainer.masker.valid(x).sum(1).float()
    header = (f"MiniLM Rotten Tomatoes sentiment classifier, word features ({n_words.mean():.1f} words per snippet "
              f"on average, max {int(n_words.max())}), {len(pos)} test snippets, batches of {a.batch_size}; "
              f"{machine()}\nbudgets: {budgets}\n")
    ks = f"KernelShap({cfg.method.kernel_shap.n_samples})" if "kernel_shap" in cfg.method else "KernelShap"
    lines = []
    if goal:
        lines.append(f"FEX throughput = {goal['throughput_vs_kernel_shap']:.1f}x {ks} (target >= 50x KernelShap(200))")
        if goal["comprehensiveness_vs_kernel_shap"] is not None:
            lines.append(f"FEX comprehensiveness = {goal['comprehensiveness_vs_kernel_shap']:.3f}x {ks}'s "
                         "(target >= 0.95x KernelShap(200)'s)")
    write_text(out / "table.md", header + "\n" + table + "\n\n" + "\n".join(lines) + "\n")
    write_json(out / "metrics.json", {"machine": machine(), "n": len(pos), "batch_size": a.batch_size,
                                      "checkpoint": a.checkpoint, "budgets": budgets, "targets": goal,
                                      "methods": compare.json_rows(rows)})
    ok = [r for r in rows if "error" not in r]
    with bb.uncounted():
        probs = bb(x)
    pred = probs.argmax(-1)
    fex_row = next((r for r in ok if r["method"] == "fex"), ok[0] if ok else None)
    if fex_row is not None:
        names = explainer.class_names
        write_html(out / "words.html", x["words"][:16], fex_row["scores"][:16],
                   predictions=[names[int(c)] for c in pred[:16]],
                   probabilities=[float(probs[i, pred[i]]) for i in range(min(16, len(pos)))],
                   labels=[names[int(ds.y[i])] for i in pos[:16]],
                   method_rows={r["method"]: r["scores"][:16] for r in ok if r is not fex_row},
                   title="FEX and baselines on Rotten Tomatoes snippets (MiniLM sentiment)")
    print(header + "\n" + table + "\n\n" + "\n".join(lines))
    return rows


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
