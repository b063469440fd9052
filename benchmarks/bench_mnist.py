"""FEX against per-instance baselines on the MNIST default, side by side in one run.

    python train.py hydra.run.dir=outputs/bench/seed0                  # the explainer (once per seed:
    python train.py hydra.run.dir=outputs/bench/seed1 seed=1 data.seed=0 target.model.seed=0   # same data/target)
    python benchmarks/bench_mnist.py --checkpoint outputs/bench/seed0/explainer.ckpt outputs/bench/seed1/explainer.ckpt ...

With several checkpoints (training seeds) the fex row is their mean, with the spread across seeds
(``± std``) and one row per seed; every other method runs once.

Every method explains the same test digits (explained class = the CNN's prediction) on the
same 7x7 patch features; quality is scored identically (fex.metrics.faithfulness). Prints a
markdown table with ratios relative to KernelShap and writes metrics.json + plots to --out.
Cost definitions (queries, median time per explanation, peak memory) are in fex/compare.py.
Extra Hydra overrides (e.g. method.kernel_shap.n_samples=500 masker grids) go after ``--``.
With ``kmeans_prototypes`` among the methods, its nearest-prototype classifier's test accuracy is
printed beside the CNN's (``kmeans.json``) and its prototypes and concept maps drawn (``prototypes.png``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401  (torchvision shim before lightning)
from fex import compare  # noqa: E402
from fex.bench import bench_seeds, machine  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.render import plots  # noqa: E402
from fex.tasks.common import build_data  # noqa: E402
from fex.tasks.evaluate import build_methods  # noqa: E402

DEFAULT_METHODS = ("fex,banzhaf,kernel_shap,lime,feature_ablation,shapley_sampling,integrated_gradients,rise,"
                   "kmeans_prototypes,random")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", nargs="+", default=[str(ROOT / "outputs/bench/seed0/explainer.ckpt")],
                   help="one explainer checkpoint per training seed")
    p.add_argument("--n", type=int, default=64, help="test digits explained by every method")
    p.add_argument("--batch-size", type=int, default=16, help="explanations per timed batch")
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--out", default=str(ROOT / "outputs/bench/mnist"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml (data/target: the checkpoint's)")
    a = p.parse_args(argv)
    rows, cfg, explainer, x = bench_seeds(a.checkpoint, a.methods, a.overrides, a.n, a.batch_size)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    table = compare.markdown_table(rows)
    budgets = {k: {kk: vv for kk, vv in OmegaConf.to_container(v, resolve=True).items() if kk != "_target_"}  # lists: plain (JSON)
               for k, v in cfg.method.items()}
    header = (f"MNIST CNN, {explainer.masker.num_features()} patch features, {len(x)} test digits, batches of "
              f"{a.batch_size}; fex over {len(a.checkpoint)} training seed(s); {machine()}\nbudgets: {budgets}\n")
    write_text(out / "table.md", header + "\n" + table + "\n")
    write_json(out / "metrics.json", {"machine": machine(), "n": len(x), "batch_size": a.batch_size,
                                      "checkpoint": a.checkpoint, "budgets": budgets,
                                      "methods": compare.json_rows(rows)})
    plots.curves(rows, out / "curves.png")
    plots.quality_vs_time(rows, out / "quality_vs_time.png")
    explainer.masker.renderer().gallery(x[:8], plots.method_rows(rows, 8), out / "gallery")
    print(header + "\n" + table)
    if "kmeans_prototypes" in a.methods.split(","):
        kmeans_report(cfg, explainer, x, out)
    return rows


def kmeans_report(cfg, explainer, x, out: Path) -> dict:
    """The k-means classifier's test accuracy beside the CNN's (whole test split), and its prototypes."""
    km = build_methods(cfg, explainer.blackbox, explainer)["kmeans_prototypes"]()
    test = build_data(cfg.data).dataset(cfg.split)
    xs, ys = (torch.stack([test[i][j] for i in range(len(test))]) for j in (0, 1))
    acc = {**km.accuracy(xs, ys), "fit": km.fit_info}
    write_json(out / "kmeans.json", acc)
    n = min(8, len(x))
    exp = km.explain(x[:n], explainer.blackbox(x[:n]).argmax(-1))
    explainer.masker.renderer().prototypes(x[:n], exp, km.exemplars, km.proto_class, out / "prototypes",
                                           [f"pred {int(t)}" for t in exp["target"]])
    print(f"kmeans_prototypes: test accuracy {acc['kmeans_accuracy']:.4f} vs the CNN's {acc['cnn_accuracy']:.4f} "
          f"(agreement {acc['agreement']:.4f}, {acc['n']} test digits, {len(km.proto_class)} prototypes)")
    return acc


if __name__ == "__main__":
    main()
