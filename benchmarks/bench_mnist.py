"""FEX against per-instance baselines on the MNIST default, side by side in one run.

    python train.py hydra.run.dir=outputs/bench/train_default          # the explainer (once)
    python benchmarks/bench_mnist.py --checkpoint outputs/bench/train_default/explainer.ckpt

Every method explains the same test digits (explained class = the CNN's prediction) on the
same 7x7 patch features; quality is scored identically (fex.metrics.faithfulness). Prints a
markdown table with ratios relative to KernelShap and writes metrics.json + plots to --out.
Cost definitions (queries, median time per explanation, peak memory) are in fex/compare.py.
Extra Hydra overrides (e.g. method.kernel_shap.n_samples=500 masker grids) go after ``--``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fex  # noqa: E402,F401  (torchvision shim before lightning)
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from fex import compare, viz  # noqa: E402
from fex import metrics as M  # noqa: E402
from fex.module import ExplainerModule  # noqa: E402
from fex.tasks.common import build_blackbox, build_data  # noqa: E402
from fex.tasks.evaluate import build_methods, write_json, write_text  # noqa: E402

DEFAULT_METHODS = "fex,kernel_shap,lime,feature_ablation,shapley_sampling,integrated_gradients,rise,random"


def load(checkpoint: str, methods: str, overrides: list[str]):
    """(cfg, blackbox, explainer, test dataset) from the evaluate config (same target and data as training)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", [f"checkpoint={checkpoint}", f"method=[{methods}]", "output_dir=.", *overrides])
    bb = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    explainer = ExplainerModule.from_checkpoint(checkpoint, target=bb, allow_target_mismatch=cfg.allow_target_mismatch)
    ds = build_data(cfg.data).dataset(cfg.split)
    return cfg, bb, explainer, ds


def bench(cfg, bb, explainer, x: torch.Tensor, batch_size: int, reference: str = "kernel_shap") -> list[dict]:
    """The side-by-side run: rows with cost, quality and ratios to ``reference``."""
    q0 = bb.queries
    target = bb(x).argmax(-1)
    bb.queries = q0
    rows = compare.run_methods(bb, explainer.masker, x, target, build_methods(cfg, bb, explainer), batch_size,
                               metric_masker=M.with_substrate(explainer.masker, cfg.compare.substrate),
                               metric_kwargs={"steps": cfg.compare.steps, "seed": int(cfg.seed)})
    return compare.add_ratios(rows, reference)


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "outputs/bench/train_default/explainer.ckpt"))
    p.add_argument("--n", type=int, default=64, help="test digits explained by every method")
    p.add_argument("--batch-size", type=int, default=16, help="explanations per timed batch")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--out", default=str(ROOT / "outputs/bench/mnist"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml")
    a = p.parse_args(argv)
    cfg, bb, explainer, ds = load(a.checkpoint, a.methods, a.overrides)
    x = ds.x[: a.n]
    rows = bench(cfg, bb, explainer, x, a.batch_size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare.markdown_table(rows)
    budgets = {k: {kk: vv for kk, vv in v.items() if kk != "_target_"} for k, v in cfg.method.items()}
    header = (f"MNIST CNN, {explainer.masker.num_features()} patch features, {len(x)} test digits, batches of "
              f"{a.batch_size}; {machine()}\nbudgets: {budgets}\n")
    write_text(out / "table.md", header + "\n" + table + "\n")
    write_json(out / "metrics.json", {"machine": machine(), "n": len(x), "batch_size": a.batch_size,
                                      "checkpoint": a.checkpoint, "budgets": budgets,
                                      "methods": compare.json_rows(rows)})
    viz.curves(rows, out / "curves.png")
    viz.quality_vs_time(rows, out / "quality_vs_time.png")
    viz.gallery(x, rows, explainer.masker, out / "gallery.png", 8)
    print(header + "\n" + table)
    return rows


if __name__ == "__main__":
    main()
