"""Which method answers which question at what cost: every method side by side on MNIST patches.

    python benchmarks/bench_methods.py --checkpoint outputs/bench/train_default/explainer.ckpt   # idle machine
    python benchmarks/bench_methods.py --quick                                                  # validation only

Every method explains the same test digits (explained class = the CNN's prediction, computed once
and charged to nobody) on the same 7x7 patch features, in one process, one after another. Per
method it records (fex.compare.explain_all; definitions in fex/compare.py and fex/methods/cost.py):
black-box queries, forward and backward passes of the target (rows), policy calls (fex), median
wall time and peak memory per explanation; quality (deletion/insertion AUC) scored identically;
and the **null-feature share** (fex.metrics.null_feature): the same method run against a wrapper of
the CNN that provably ignores the ``--null`` patches (fex.methods.nullcheck.IgnoreFeatures), and the
share of |attribution| those patches receive (0 is right; random is about |null|/49). R-LOCO fits
its regions on ``--reference`` training digits first (those queries are reported as fit cost).
FEX's explainer was trained against the unwrapped CNN, so its null-feature share measures what an
amortized explainer does when the target changes under it (retrain it to test it fairly).
Budgets come from conf/method/*.yaml; override them after ``--`` (e.g. ``method.spex.budget=2000``).
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
from hydra.utils import get_class, instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fex import compare  # noqa: E402
from fex import metrics as M  # noqa: E402
from fex.methods.baselines import Fex  # noqa: E402
from fex.blackbox import BlackBox  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.methods.nullcheck import IgnoreFeatures  # noqa: E402
from fex.render import markdown_table  # noqa: E402
from fex.config import build_blackbox, build_data, conf_dir  # noqa: E402

METHODS = ("fex,kernel_shap,lime,feature_ablation,shapley_sampling,banzhaf,integrated_gradients,psig,rise,rloco,"
           "spex,proxyspex,random")
NULL = "16,17,18,23,24,25,30,31,32"  # the centre 3x3 patches of the 7x7 grid: where the digits are
QUESTION = {
    "fex": "which patches matter (amortized: trained once)",
    "kernel_shap": "which features matter (Shapley, sampled)",
    "lime": "which features matter (local linear surrogate)",
    "feature_ablation": "what each feature's removal does (LOCO)",
    "shapley_sampling": "which features matter (Shapley, permutations)",
    "integrated_gradients": "which features matter (gradients, white box)",
    "psig": "which features matter (IG averaged over path baselines, white box)",
    "rise": "which features matter (random masks)",
    "banzhaf": "which features matter (Banzhaf values, sample reuse)",
    "rloco": "which features matter in this input's region",
    "spex": "which features act together (interactions) + Shapley values",
    "proxyspex": "which features act together (interactions) + Shapley values",
    "random": "nothing (the floor)",
}
QUICK = ["method.kernel_shap.n_samples=40", "method.lime.n_samples=40", "method.shapley_sampling.n_samples=1",
         "method.integrated_gradients.n_steps=8", "method.psig.n_steps=8", "method.rise.n_masks=64", "method.banzhaf.n_masks=64",
         "method.spex.budget=600", "method.proxyspex.budget=200",
         "+method.proxyspex.proxy_grid={max_depth:[3],max_iter:[100],learning_rate:[0.1]}"]


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def build(mcfg, bb: BlackBox, masker, explainer):
    extra = {"explainer": explainer} if issubclass(get_class(mcfg._target_), Fex) else {}
    return instantiate(mcfg, blackbox=bb, masker=masker, **extra)


def fit(method, x_ref, bb: BlackBox) -> int:
    """Fit methods that have a reference stage (R-LOCO); returns its queries."""
    if not hasattr(method, "fit"):
        return 0
    with bb.uncounted():
        target = bb(x_ref).argmax(-1)
    method.fit(x_ref, target)
    return int(getattr(method, "fit_queries", 0))


def run(cfg, names: list[str], bb: BlackBox, masker, explainer, x, x_ref, null: list[int], batch_size: int,
        log=print) -> list[dict]:
    with bb.uncounted():
        target = bb(x).argmax(-1)
    f = masker.num_features(x)
    wrapped = BlackBox(IgnoreFeatures(bb.model, masker, null, f), output=bb.output, max_batch_size=bb.max_batch_size)
    with wrapped.uncounted():
        target_null = wrapped(x).argmax(-1)
    null_mask = wrapped.model.null_mask()
    rows = []
    for name in names:
        if name == "fex" and explainer is None:
            log("fex: skipped (no --checkpoint)")
            continue
        mcfg = cfg.method[name]
        try:
            method = build(mcfg, bb, masker, explainer)
            fit_q = fit(method, x_ref, bb)
            rec = compare.explain_all(method, masker, x, target, batch_size)
            q = compare.score_all(bb, masker, x, rec["scores"], target, steps=cfg.compare.steps, seed=int(cfg.seed))
            m_null = build(mcfg, wrapped, masker, explainer)
            fit(m_null, x_ref, wrapped)
            with wrapped.uncounted():
                s_null = m_null.attribute(x, target_null)
            share = M.null_feature(s_null, null_mask, masker.valid(x))
        except Exception as exc:  # noqa: BLE001 - one broken method must not sink the table
            log(f"{name}: failed: {type(exc).__name__}: {exc}")
            rows.append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        row = {"method": name, "question": QUESTION.get(name, ""),
               **{k: v for k, v in rec.items() if k != "scores"}, "fit_queries": fit_q,
               "deletion_auc": float(q["deletion_auc"].mean()), "insertion_auc": float(q["insertion_auc"].mean()),
               "null_feature": float(share.mean()), "null_feature_max": float(share.max()),
               "budget": {k: v for k, v in OmegaConf.to_container(mcfg, resolve=True).items() if k != "_target_"}}
        rows.append(row)
        log(f"{name}: {row['sec_per_expl'] * 1e3:.2f} ms/expl, {row['queries_per_expl']:.0f} queries, "
            f"fwd {row['forward_passes']}, bwd {row['backward_passes']}, null share {row['null_feature']:.3f}")
    return rows


def _n(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ["method", "question it answers", "queries/expl", "target fwd/expl", "target bwd/expl", "policy calls/expl",
            "fit queries", "ms/expl", "peak MiB", "deletion AUC", "insertion AUC", "null-feature share (mean, max)"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["method"], f"failed: {r['error'][:80]}"])
            continue
        lines.append([r["method"], r["question"], f"{r['queries_per_expl']:.0f}", _n(r["forward_passes"]),
                      _n(r["backward_passes"]), _n(r["policy_calls"], ".3g"), r["fit_queries"],
                      f"{r['sec_per_expl'] * 1e3:.3g}", f"{r['peak_mem_mib']:.1f}", f"{r['deletion_auc']:.4f}",
                      f"{r['insertion_auc']:.4f}", f"{r['null_feature']:.3f}, {r['null_feature_max']:.3f}"])
    return markdown_table(head, lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="fex explainer (omit: fex is skipped)")
    p.add_argument("--n", type=int, default=32, help="test digits explained by every method")
    p.add_argument("--reference", type=int, default=64, help="training digits R-LOCO fits its regions on")
    p.add_argument("--batch-size", type=int, default=8, help="explanations per timed batch")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--null", default=NULL, help="patch ids the null-feature wrapper ignores")
    p.add_argument("--quick", action="store_true", help="4 digits, tiny budgets (validation, not for timing)")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/methods"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/evaluate.yaml (e.g. method.spex.budget=2000)")
    a = p.parse_args(argv)
    names = [m for m in a.methods.split(",") if m]
    overrides = list(a.overrides)
    if a.quick:
        a.n, a.reference, a.batch_size = 4, 8, 2
        overrides = [o for o in QUICK if o.split("=")[0].lstrip("+").split(".")[1] in names] + overrides
    explainer = None
    if a.checkpoint:  # the checkpoint's own data/target configs (fex.bench.load), as bench_mnist does
        from fex.bench import load

        cfg, bb, explainer, _ = load(a.checkpoint, ",".join(names), overrides)
        masker = explainer.masker
    else:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("evaluate", ["checkpoint=none", "data=mnist", "target=mnist_cnn", f"method=[{','.join(names)}]",
                                       "output_dir=.", *overrides])
        bb = build_blackbox(cfg.target, num_classes=int(cfg.data.num_classes))
        masker = instantiate(OmegaConf.load(conf_dir() / "masker/patch.yaml"), input_shape=list(cfg.data.input_shape))
    data = build_data(cfg.data)
    x, x_ref = data.dataset("test").x[: a.n], data.dataset("train").x[: a.reference]
    null = [int(i) for i in a.null.split(",")]
    rows = run(cfg, names, bb, masker, explainer, x, x_ref, null, a.batch_size)
    header = (f"MNIST CNN, {masker.num_features(x)} patch features, {len(x)} test digits in batches of {a.batch_size}; "
              f"R-LOCO regions from {len(x_ref)} training digits; null-feature wrapper ignores patches {null}; "
              f"{machine()}{' (QUICK: not for timing)' if a.quick else ''}\n")
    out = Path(a.out)
    write_text(out / "table.md", header + "\n" + table(rows) + "\n")
    write_json(out / "metrics.json", {"machine": machine(), "quick": a.quick, "n": len(x), "batch_size": a.batch_size,
                                      "reference": len(x_ref), "null": null, "checkpoint": a.checkpoint,
                                      "methods": rows})
    print(header + "\n" + table(rows))
    return rows


if __name__ == "__main__":
    main()
