"""Scaling on the feature axis: cost and quality per method at several patch grids, and break-even.

    python benchmarks/scaling.py                      # 7x7, 14x14, 28x28 (49, 196, 784 features)
    python benchmarks/scaling.py --quick --out /tmp/s  # tiny smoke run (seconds of training, 4 digits)

One run does everything, side by side: for each grid it trains an explainer
(``fex.tasks.train.train``, short, validating several times per epoch so the CSV log holds a
training-cost curve), then runs the batch-evaluation benchmark (``fex.bench``, as bench_mnist.py:
same test digits, same features, same metrics, cost accounting of ``fex/compare.py``) for
fex, KernelShap, Lime, FeatureAblation, RISE and IntegratedGradients. From those numbers:

- time / queries per explanation against the number of features (``scaling_time.png``),
- break-even: fex's total cost (training + n explanations) against n explanations of
  KernelShap or FeatureAblation, in black-box queries and in seconds (``break_even.png``),
- training cost curve: val/reward and val/deletion_auc against training queries
  (``training_curve.png``), read from each run's ``logs/version_0/metrics.csv``.

Prints markdown tables (also written to ``<out>/report.md``) and ``<out>/scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

from fex.bench import bench, load, machine, read_training_curve, train_explainer, train_overrides  # noqa: E402,F401

METHODS = "fex,banzhaf,kernel_shap,lime,feature_ablation,rise,integrated_gradients"
COMPARED = ("kernel_shap", "feature_ablation")  # per-instance methods fex must amortize against


# --------------------------------------------------------------------------- pure cost logic
def cumulative_cost(fixed: float, per_explanation: float, n: Iterable[int]) -> list[float]:
    """Total cost of ``n`` explanations: a one-off ``fixed`` cost plus ``per_explanation`` each."""
    return [fixed + per_explanation * int(k) for k in n]


def break_even(fixed: float, per_explanation: float, other_per_explanation: float) -> int | None:
    """Smallest number of explanations n >= 1 after which ``fixed + per_explanation * n`` is strictly
    cheaper than ``other_per_explanation * n``; ``None`` if it never is (other is as cheap per explanation).

    Example: training 1000 queries + 1 per explanation against 50 per explanation -> 21.
    """
    gain = other_per_explanation - per_explanation
    if gain <= 0:
        return None
    n = max(1, math.floor(fixed / gain) + 1)
    while fixed + per_explanation * n >= other_per_explanation * n:  # float rounding at the boundary
        n += 1
    while n > 1 and fixed + per_explanation * (n - 1) < other_per_explanation * (n - 1):
        n -= 1
    return n


def queries_to_reach(curve: Sequence[dict], key: str, fraction: float = 0.95, higher_is_better: bool = True) -> float | None:
    """Training queries at the first validation reaching ``fraction`` of the way from the first to the
    best value of ``key`` on the curve (e.g. 95% of the reward gain); None on an empty curve."""
    pts = [p for p in curve if p.get(key) is not None]
    if not pts:
        return None
    vals = [p[key] if higher_is_better else -p[key] for p in pts]
    goal = vals[0] + fraction * (max(vals) - vals[0])
    return next(p["train_queries"] for p, v in zip(pts, vals) if v >= goal - 1e-12)


def break_even_rows(grid_rows: Sequence[dict], against: Sequence[str] = COMPARED) -> list[dict]:
    """Per grid and per compared method: break-even in queries and in seconds.

    ``grid_rows``: one dict per grid with ``features``, ``train_queries``, ``train_seconds`` and
    ``methods`` (``{name: {"queries_per_expl", "sec_per_expl"}}``, including ``fex``)."""
    out = []
    for g in grid_rows:
        fex = g["methods"]["fex"]
        for name in against:
            m = g["methods"].get(name)
            if m is None:
                continue
            out.append({
                "features": g["features"], "grid": g.get("grid"), "method": name,
                "train_queries": g["train_queries"], "fex_queries_per_expl": fex["queries_per_expl"],
                "other_queries_per_expl": m["queries_per_expl"],
                "break_even_queries": break_even(g["train_queries"], fex["queries_per_expl"], m["queries_per_expl"]),
                "train_seconds": g["train_seconds"], "fex_sec_per_expl": fex["sec_per_expl"],
                "other_sec_per_expl": m["sec_per_expl"],
                "break_even_seconds": break_even(g["train_seconds"], fex["sec_per_expl"], m["sec_per_expl"]),
            })
    return out


# --------------------------------------------------------------------------- running
def trained(checkpoint: str) -> dict:
    """Training cost and curve of an explainer trained beforehand (its run directory's log)."""
    from fex.explainer import read_checkpoint

    run = Path(checkpoint).parent
    csv_path = run / "logs" / "version_0" / "metrics.csv"
    curve = read_training_curve(csv_path) if csv_path.is_file() else []
    meta = read_checkpoint(checkpoint)["fex"]
    summary = run / "train_metrics.json"  # written by the train task
    seconds = json.loads(summary.read_text()).get("train/seconds") if summary.is_file() else None
    return {"checkpoint": checkpoint, "train_queries": float(meta.get("train_queries") or 0),
            "train_seconds": float(seconds) if seconds is not None else float("nan"),
            "val_reward": None, "val_deletion_auc": None, "curve": curve}


def run_grid(grid: int, out: Path, a: argparse.Namespace) -> dict:
    """Train fex for one grid (or take --checkpoints), then the side-by-side benchmark of every method."""
    given = dict(kv.split("=", 1) for kv in a.checkpoints.split(",")) if a.checkpoints else {}
    tr = (trained(given[str(grid)]) if str(grid) in given else
          train_explainer(grid, out / f"train_{grid}x{grid}", a.epochs, a.val_per_epoch, a.limit))
    overrides = [f"compare.steps={a.steps}", f"method.kernel_shap.n_samples={a.kernel_shap_samples}",
                 f"method.lime.n_samples={a.lime_samples}", f"method.rise.n_masks={a.rise_masks}",
                 f"method.integrated_gradients.n_steps={a.ig_steps}"]
    cfg, bb, explainer, ds = load(tr["checkpoint"], a.methods, overrides)
    x = ds.x[: a.n]
    rows = bench(cfg, bb, explainer, x, a.batch_size)
    methods = {r["method"]: {k: v for k, v in r.items() if k not in ("scores", "curves")} for r in rows}
    return {"grid": f"{grid}x{grid}", "features": grid * grid, "n": len(x), **tr, "methods": methods}


# --------------------------------------------------------------------------- reporting
def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _n(v: int | None) -> str:
    return "never" if v is None else f"{v} explanations"


def method_table(grids: Sequence[dict]) -> str:
    lines = ["| features | method | queries/expl | ms/expl | deletion AUC (lower better) | insertion AUC "
             "| speedup vs kernel_shap | queries vs kernel_shap |", "|---|---|---|---|---|---|---|---|"]
    for g in grids:
        for name, m in g["methods"].items():
            if "error" in m:
                lines.append(f"| {g['features']} | {name} | failed: {m['error'][:60]} | | | | | |")
                continue
            lines.append(f"| {g['features']} | {name} | {m['queries_per_expl']:.0f} | {m['sec_per_expl'] * 1e3:.3g} "
                         f"| {m['deletion_auc']:.4f} | {m['insertion_auc']:.4f} | {_f(m.get('speedup_vs_ref'), '.3g')}x "
                         f"| {_f(m.get('queries_vs_ref'), '.3g')} |")
    return "\n".join(lines)


def growth_table(grids: Sequence[dict]) -> str:
    """Time per explanation per method across grids, with the ratio largest / smallest grid."""
    names = [n for n in grids[0]["methods"] if all("error" not in g["methods"].get(n, {"error": 1}) for g in grids)]
    head = "| method | " + " | ".join(f"ms/expl F={g['features']}" for g in grids) + \
        f" | ratio F={grids[-1]['features']} / F={grids[0]['features']} |"
    lines = [head, "|" + "---|" * (len(grids) + 2)]
    for n in names:
        t = [g["methods"][n]["sec_per_expl"] for g in grids]
        lines.append(f"| {n} | " + " | ".join(f"{v * 1e3:.3g}" for v in t) + f" | {t[-1] / t[0]:.3g}x |")
    return "\n".join(lines)


def training_table(grids: Sequence[dict]) -> str:
    lines = ["| features | training queries | training s | val reward (best) | val deletion AUC (last) "
             "| best val deletion AUC (at queries) | test deletion AUC (fex) | queries to 95% of reward gain | validations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in grids:
        fx = g["methods"].get("fex", {})
        d = [p for p in g["curve"] if p["deletion_auc"] is not None]
        best = min(d, key=lambda p: p["deletion_auc"]) if d else None
        best_s = f"{best['deletion_auc']:.4f} ({best['train_queries']:.0f})" if best else "-"
        lines.append(f"| {g['features']} | {g['train_queries']:.0f} | {g['train_seconds']:.0f} | {_f(g['val_reward'], '.4f')} "
                     f"| {_f(g['val_deletion_auc'], '.4f')} | {best_s} | {_f(fx.get('deletion_auc'), '.4f')} "
                     f"| {_f(queries_to_reach(g['curve'], 'reward'), '.0f')} | {len(g['curve'])} |")
    return "\n".join(lines)


def break_even_table(rows: Sequence[dict]) -> str:
    lines = ["| features | vs | fex training queries | queries/expl fex / other | break-even (queries) "
             "| fex training s | ms/expl fex / other | break-even (seconds) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['features']} | {r['method']} | {r['train_queries']:.0f} | {r['fex_queries_per_expl']:.0f} / "
                     f"{r['other_queries_per_expl']:.0f} | {_n(r['break_even_queries'])} "
                     f"| {r['train_seconds']:.0f} | {r['fex_sec_per_expl'] * 1e3:.3g} / {r['other_sec_per_expl'] * 1e3:.3g} "
                     f"| {_n(r['break_even_seconds'])} |")
    return "\n".join(lines)


def plot_time(grids: Sequence[dict], path: Path) -> Path:
    from fex.render.plots import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    feats = [g["features"] for g in grids]
    for name in grids[0]["methods"]:
        ok = [g["methods"].get(name, {}) for g in grids]
        if any("error" in m or not m for m in ok):
            continue
        axes[0].plot(feats, [m["sec_per_expl"] * 1e3 for m in ok], "o-", label=name)
        axes[1].plot(feats, [max(m["queries_per_expl"], 0.5) for m in ok], "o-", label=name)
    for ax, lab in zip(axes, ("ms per explanation", "queries per explanation (fex: 0, drawn at 0.5)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xticks(feats)
        ax.set_xticklabels([str(f) for f in feats])
        ax.set_xlabel("number of features (patches)")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Cost per explanation vs number of features (MNIST CNN, CPU)", fontsize=9)
    return save_figure(fig, path, dpi=90)


def plot_break_even(grids: Sequence[dict], rows: Sequence[dict], path: Path) -> Path:
    from fex.render.plots import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(2, len(grids), figsize=(3.6 * len(grids), 6.2), squeeze=False)
    for j, g in enumerate(grids):
        mine = [r for r in rows if r["features"] == g["features"]]
        for i, (unit, fixed_key, per_key) in enumerate((("queries", "train_queries", "queries_per_expl"),
                                                         ("seconds", "train_seconds", "sec_per_expl"))):
            ax = axes[i][j]
            bes = [r[f"break_even_{unit}"] for r in mine if r[f"break_even_{unit}"] is not None]
            n_max = int(max(bes) * 2) if bes else 1000
            ns = [int(n_max * k / 100) for k in range(101)]
            fex = g["methods"]["fex"]
            ax.plot(ns, cumulative_cost(g[fixed_key], fex[per_key], ns), label="fex (training + inference)", color="k")
            for r in mine:
                m = g["methods"][r["method"]]
                ax.plot(ns, cumulative_cost(0.0, m[per_key], ns), label=r["method"])
                be = r[f"break_even_{unit}"]
                if be is not None:
                    ax.axvline(be, ls=":", lw=0.8, color=ax.lines[-1].get_color())
                    ax.annotate(str(be), (be, 0), textcoords="offset points", xytext=(2, 4), fontsize=7)
            ax.set_title(f"{g['grid']} ({g['features']} features)", fontsize=8)
            ax.set_xlabel("number of explanations", fontsize=8)
            ax.set_ylabel(f"cumulative {unit}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    fig.suptitle("Break-even: cumulative cost vs number of explanations (dotted: fex becomes cheaper)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def plot_training_curve(grids: Sequence[dict], path: Path) -> Path:
    from fex.render.plots import learning_curves

    return learning_curves([(f"{g['features']} features", g["curve"]) for g in grids],
                           [("reward", "val/reward (higher better; scale grows with F)"),
                            ("deletion_auc", "val/deletion_auc, fixed val subset (lower better)")], path,
                           title="Training cost curve: explainer quality vs queries (stop when it flattens)")


def report(grids: Sequence[dict], header: str) -> tuple[str, list[dict]]:
    rows = break_even_rows(grids)
    text = "\n\n".join([
        header,
        "### Per method and grid (side by side, same digits and features)\n\n" + method_table(grids),
        "### Time per explanation as features grow\n\n" + growth_table(grids),
        "### fex training cost and quality per grid\n\n" + training_table(grids),
        "### Break-even: explanations after which fex (training + inference) is cheaper\n\n" + break_even_table(rows),
    ])
    return text + "\n", rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", default="7,14,28", help="patches per side, comma-separated")
    p.add_argument("--epochs", type=int, default=20, help="explainer training epochs per grid")
    p.add_argument("--val-per-epoch", type=int, default=4, help="validations per epoch (points on the training curve)")
    p.add_argument("--limit", type=int, default=None, help="cap each data split (quick runs)")
    p.add_argument("--n", type=int, default=32, help="test digits explained by every method")
    p.add_argument("--batch-size", type=int, default=16, help="explanations per timed batch")
    p.add_argument("--steps", type=int, default=49, help="deletion/insertion curve steps (same for every grid)")
    p.add_argument("--kernel-shap-samples", type=int, default=200)
    p.add_argument("--lime-samples", type=int, default=200)
    p.add_argument("--rise-masks", type=int, default=1000)
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--checkpoints", default="", help="grid=checkpoint,... trained beforehand (not retrained)")
    p.add_argument("--out", default=str(ROOT / "outputs/scaling"))
    p.add_argument("--figures", default=None, help="where the PNGs go (default: <out>)")
    p.add_argument("--quick", action="store_true", help="tiny smoke settings (numbers are meaningless)")
    p.add_argument("--from-json", default=None, help="re-render tables and figures of a saved run's scaling.json")
    a = p.parse_args(argv)
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        return render(saved["grids"], saved["header"], Path(a.out), Path(a.figures or a.out), saved.get("quick", False))
    if a.quick:
        a.grids, a.epochs, a.val_per_epoch, a.limit, a.n, a.batch_size = "2,4", 1, 2, 128, 4, 2
        a.steps, a.kernel_shap_samples, a.lime_samples, a.rise_masks, a.ig_steps = 4, 16, 16, 16, 4
    out = Path(a.out)
    figs = Path(a.figures or out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    grids = []
    for g in (int(s) for s in a.grids.split(",")):
        grids.append(run_grid(g, out, a))
        print(f"grid {g}x{g} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    header = (f"MNIST CNN target, patch grids {a.grids} ({', '.join(str(g['features']) for g in grids)} features), "
              f"{grids[0]['n']} test digits per method, batches of {a.batch_size}, curves of {a.steps} steps; "
              f"fex trained {a.epochs} epoch(s) per grid{f' on data.limit={a.limit}' if a.limit else ''}; budgets: "
              f"KernelShap {a.kernel_shap_samples}, Lime {a.lime_samples}, RISE {a.rise_masks} masks, IG {a.ig_steps} "
              f"steps, FeatureAblation F+1. {machine()}. Wall time {time.perf_counter() - t0:.0f}s."
              + (" QUICK MODE: smoke settings, numbers are not meaningful." if a.quick else ""))
    return render(grids, header, out, figs, a.quick)


def render(grids: Sequence[dict], header: str, out: Path, figs: Path, quick: bool) -> dict:
    """Tables (printed, ``report.md``), figures and ``scaling.json`` from one run's per-grid records."""
    out.mkdir(parents=True, exist_ok=True)
    text, be_rows = report(grids, header)
    files = {"time": str(plot_time(grids, figs / "scaling_time.png")),
             "break_even": str(plot_break_even(grids, be_rows, figs / "break_even.png")),
             "training_curve": str(plot_training_curve(grids, figs / "training_curve.png"))}
    (out / "report.md").write_text(text)
    result = {"header": header, "grids": grids, "break_even": be_rows, "files": files, "quick": quick}
    (out / "scaling.json").write_text(json.dumps(result, indent=2, default=float))
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
