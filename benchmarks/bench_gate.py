"""Trust gate on MNIST: does it catch the explanations that are wrong, and what does it cost?

    python benchmarks/bench_gate.py --checkpoint outputs/gate/mnist_direct/explainer.ckpt \
        [--proxy-checkpoint outputs/gate/mnist_proxy/explainer.ckpt] [--quick]

1. Calibrates the gate of ``--checkpoint`` on ``--n-val`` validation digits at false-alarm rate
   ``--alpha`` and writes ``<checkpoint>.gate.json``.
2. Scenarios, ``--n-test`` test digits each: ``in_distribution``; ``ood_inverted`` (1 - x);
   ``ood_noise`` (x + N(0, 0.5^2), clipped); ``other_target`` (the explainer used on the MNIST CNN
   retrained with seed 1); ``corrupted`` (the explainer's output features permuted).
3. "Wrong" per input: the explanation's deletion AUC (one step per feature) exceeds the per-instance
   reference's (FeatureAblation on the same features) by more than ``--margin``.
4. Per scenario: how many are wrong, the gate's catch rate (failed | wrong), its false-alarm rate
   (failed | not wrong) and overall fail rate, queries per explanation (check + fallbacks) against
   the reference on everything (F + 1 per explanation, plus the prediction both need), and the
   deletion AUC of the final (gated) attributions against the explainer's and the reference's.
5. With ``--proxy-checkpoint`` (an explainer trained on ``target=mnist_proxy``): screen it on the real
   target, gate it, and compare fidelity and total target-query cost with the directly trained one.

Counts and rates are exact for this run and may be measured on a shared machine. The
``ms/expl`` columns are wall times: **rerun on an idle machine before quoting them**.
Writes ``<out>/gate.json`` and ``<out>/gate.md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import fex  # noqa: F401  (torchvision compat shim first)
from fex import metrics as M
from fex.baselines import FeatureAblation
from fex.blackbox import BlackBox
from fex.data.mnist import MNISTDataModule
from fex.gate import Gate, Screen, fidelity
from fex.io import write_json, write_text
from fex.module import ExplainerModule
from fex.targets.mnist_cnn import pretrained_mnist_cnn


class PermutedExplainer:
    """A deliberately corrupted explainer: the wrapped one's output features, permuted."""

    name = "fex_corrupted"

    def __init__(self, explainer: ExplainerModule, seed: int = 0) -> None:
        self.inner, self.masker, self.blackbox = explainer, explainer.masker, explainer.blackbox
        f = explainer.masker.num_features()
        self.perm = torch.randperm(f, generator=torch.Generator().manual_seed(seed))

    def explain(self, x, target=None):
        out = dict(self.inner.explain(x, target))
        out["scores"] = out["scores"][:, self.perm]
        return out


def deletion(bb: BlackBox, masker, x, scores, target) -> torch.Tensor:
    with bb.uncounted():  # measurement, not cost
        return M.deletion_auc(bb, masker, x, scores, target).cpu()


def run_scenario(name: str, explainer, bb: BlackBox, x: torch.Tensor, gate: Gate, margin: float,
                 batch_size: int) -> dict:
    """Gate every input (counted), then label wrong explanations against FeatureAblation (uncounted)."""
    masker = explainer.masker
    f = masker.num_features()
    ref = FeatureAblation(bb, masker)
    gate = copy.copy(gate)
    gate.blackbox = bb
    passed, wrong, queries, d_e, d_r, d_final, stat = [], [], [], [], [], [], []
    t_gate = t_ref = t_fex = 0.0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        t0 = time.perf_counter()
        out = gate.verify(explainer, xb)
        t_gate += time.perf_counter() - t0
        t = out["target"]
        t0 = time.perf_counter()
        with torch.no_grad():
            explainer.explain(xb, t)
        t_fex += time.perf_counter() - t0
        with bb.uncounted():
            t0 = time.perf_counter()
            r = ref.attribute(xb, t)
            t_ref += time.perf_counter() - t0
        de, dr = deletion(bb, masker, xb, out["explainer_scores"], t), deletion(bb, masker, xb, r, t)
        d_final.append(deletion(bb, masker, xb, out["scores"], t))
        passed.append(out["passed"])
        queries.append(out["queries"])
        stat.append(out["statistic"])
        d_e.append(de)
        d_r.append(dr)
        wrong.append(de - dr > margin)
    cat = lambda v: torch.cat(v)  # noqa: E731
    passed, wrong, queries, d_e, d_r, d_final, stat = map(cat, (passed, wrong, queries, d_e, d_r, d_final, stat))
    failed = ~passed
    n = len(x)
    rate = lambda num, den: float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")  # noqa: E731
    ref_queries = f + 1 + 1  # FeatureAblation (F + 1) + the prediction
    return {"scenario": name, "n": n, "wrong": int(wrong.sum()), "wrong_rate": float(wrong.float().mean()),
            "fail_rate": float(failed.float().mean()), "catch_rate": rate(failed & wrong, wrong),
            "false_alarm_rate": rate(failed & ~wrong, ~wrong),
            "queries_per_expl": float(queries.float().mean()), "check_queries_per_expl": gate.queries_per_input,
            "reference_queries_per_expl": ref_queries, "cost_vs_reference": float(queries.float().mean()) / ref_queries,
            "deletion_explainer": float(d_e.mean()), "deletion_reference": float(d_r.mean()),
            "deletion_gated": float(d_final.mean()), "statistic_median": float(stat.median()),
            "ms_per_expl_gated": 1e3 * t_gate / n, "ms_per_expl_fex": 1e3 * t_fex / n,
            "ms_per_expl_reference": 1e3 * t_ref / n}


COLUMNS = [("scenario", "scenario", "{}"), ("n", "n", "{}"), ("wrong", "wrong", "{}"),
           ("catch_rate", "caught (fail given wrong)", "{:.2f}"), ("false_alarm_rate", "false alarms (fail given right)", "{:.2f}"),
           ("fail_rate", "fail rate", "{:.2f}"), ("queries_per_expl", "queries/expl (gated)", "{:.1f}"),
           ("reference_queries_per_expl", "queries/expl (FA on all)", "{}"), ("cost_vs_reference", "cost vs FA on all", "{:.2f}"),
           ("deletion_explainer", "del. AUC fex", "{:.3f}"), ("deletion_gated", "del. AUC gated", "{:.3f}"),
           ("deletion_reference", "del. AUC FA", "{:.3f}"), ("statistic_median", "median T", "{:.3f}"),
           ("ms_per_expl_gated", "ms/expl gated*", "{:.2f}"), ("ms_per_expl_reference", "ms/expl FA*", "{:.2f}")]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(c[2].format(r[c[0]]) for c in COLUMNS) + " |\n" for r in rows)


def proxy_section(args, data, real: BlackBox, direct: ExplainerModule, gate_direct: Gate, x_test, x_val) -> dict:
    """Screen and gate the proxy-trained explainer on the real target; cost against direct training."""
    from fex.targets.proxy import proxy_info

    proxy_ex = ExplainerModule.from_checkpoint(args.proxy_checkpoint, target=real, allow_target_mismatch=True)
    info = proxy_info(args.cache_dir, seed=args.seed, val_size=data.val_size, test_size=data.test_size)
    masker = proxy_ex.masker
    out = {"proxy": info}
    # screen on the real target: validation digits, at most 50, sequential
    screens = {}
    for metric in ("deletion", "insertion"):
        for name, ex in (("proxy", proxy_ex), ("direct", direct)):
            with real.counting() as c:
                r = Screen(real, masker, ratio=args.ratio, alpha=0.05, max_inputs=50, metric=metric).run(ex, x_val[:60])
            screens[f"{name}_{metric}"] = {k: v for k, v in r.items() if not k.startswith("wealth")} | {"queries": c.n}
    out["screen"] = screens
    # fidelity on the real target over the test digits
    fids = {}
    with real.uncounted():
        t = real(x_test).argmax(-1).cpu()
        for name, ex in (("proxy", proxy_ex), ("direct", direct)):
            s = ex.explain(x_test, t)["scores"]
            fids[name] = {"deletion_auc": float(M.deletion_auc(real, masker, x_test, s, t).mean()),
                          "insertion_auc": float(M.insertion_auc(real, masker, x_test, s, t).mean()),
                          "fid_deletion": float(fidelity(real, masker, x_test, s, t, "deletion").mean()),
                          "fid_insertion": float(fidelity(real, masker, x_test, s, t, "insertion").mean())}
        s_fa = FeatureAblation(real, masker).attribute(x_test, t)
        fids["feature_ablation"] = {"deletion_auc": float(M.deletion_auc(real, masker, x_test, s_fa, t).mean()),
                                    "insertion_auc": float(M.insertion_auc(real, masker, x_test, s_fa, t).mean()),
                                    "fid_deletion": float(fidelity(real, masker, x_test, s_fa, t, "deletion").mean()),
                                    "fid_insertion": float(fidelity(real, masker, x_test, s_fa, t, "insertion").mean())}
    out["fidelity"] = fids
    # gate the proxy explainer with its own calibration (on the real target, validation digits)
    gate = Gate(real, masker, alpha=args.alpha)
    with real.counting() as c_cal:
        gate.calibrate(proxy_ex, x_val[: args.n_val])
    gate.save(args.proxy_checkpoint)
    g = run_scenario("proxy_in_distribution", proxy_ex, real, x_test, gate, args.margin, args.batch_size)
    out["gate"] = g | {"calibration_queries": c_cal.n}
    out["gate_direct_calibration_queries"] = gate_direct.calibration.get("queries")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--proxy-checkpoint")
    ap.add_argument("--direct-train-queries", type=int, default=None,
                    help="target queries the direct explainer was trained with (default: read from its run's metrics)")
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="~/.cache/fex")
    ap.add_argument("--out", default="outputs/bench/gate")
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the script works (40 digits)")
    args = ap.parse_args()
    if args.quick:
        args.n_val, args.n_test, args.batch_size = 40, 40, 20
    torch.manual_seed(args.seed)
    out_dir = Path(args.out)

    data = MNISTDataModule(val_size=500, test_size=1000, seed=args.seed)
    data.setup()
    x_val = data.dataset("val").x[: max(args.n_val, 60)]
    x_test = data.dataset("test").x[: args.n_test]
    real = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed), num_classes=10, name="mnist_cnn_seed0")
    other = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed + 1), num_classes=10, name="mnist_cnn_seed1")
    explainer = ExplainerModule.from_checkpoint(args.checkpoint, target=real)

    gate = Gate(real, explainer.masker, alpha=args.alpha)
    gate.calibrate(explainer, x_val[: args.n_val])
    side = gate.save(args.checkpoint)
    print(f"gate: threshold {gate.threshold:.4f} at alpha {args.alpha} from {args.n_val} validation digits "
          f"({gate.calibration['queries']} queries) -> {side}", flush=True)

    g = torch.Generator().manual_seed(args.seed)
    noisy = (x_test + 0.5 * torch.randn(x_test.shape, generator=g)).clamp(0, 1)
    other_ex = copy.copy(explainer)
    scenarios = [("in_distribution", explainer, real, x_test), ("ood_inverted", explainer, real, 1 - x_test),
                 ("ood_noise", explainer, real, noisy), ("other_target", other_ex, other, x_test),
                 ("corrupted", PermutedExplainer(explainer, args.seed), real, x_test)]
    rows = []
    for name, ex, bb, x in scenarios:
        if ex is other_ex:
            ex = ExplainerModule.from_checkpoint(args.checkpoint, target=bb, allow_target_mismatch=True)
        rows.append(run_scenario(name, ex, bb, x, gate, args.margin, args.batch_size))
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}), flush=True)
    wrong_rows = [r for r in rows if r["scenario"] != "in_distribution"]
    n_wrong = sum(r["wrong"] for r in wrong_rows)
    caught = sum(r["catch_rate"] * r["wrong"] for r in wrong_rows if r["wrong"])
    summary = {"catch_rate_all_wrong_cases": caught / n_wrong if n_wrong else float("nan"),
               "false_alarm_rate_in_distribution": rows[0]["false_alarm_rate"],
               "fail_rate_in_distribution": rows[0]["fail_rate"], "threshold": gate.threshold, "alpha": args.alpha,
               "margin": args.margin, "check_queries": gate.queries_per_input}
    result = {"args": vars(args), "calibration": gate.calibration, "rows": rows, "summary": summary}
    md = [f"Gate on MNIST ({args.n_test} test digits per scenario; threshold {gate.threshold:.4f} calibrated at "
          f"alpha={args.alpha} on {args.n_val} validation digits; wrong = deletion AUC > FeatureAblation's + {args.margin}). "
          "Columns marked * are wall times: rerun on an idle machine before quoting.\n", table(rows),
          f"\nAll wrong cases outside in-distribution: {caught:.0f}/{n_wrong} caught "
          f"({summary['catch_rate_all_wrong_cases']:.2f}); in-distribution false alarms {summary['false_alarm_rate_in_distribution']:.2f}, "
          f"fail rate {summary['fail_rate_in_distribution']:.2f}.\n"]
    if args.proxy_checkpoint:
        p = proxy_section(args, data, real, explainer, gate, x_test, x_val)
        direct_q = args.direct_train_queries
        if direct_q is None:
            direct_q = _train_queries(args.checkpoint)
        per_expl = p["gate"]["queries_per_expl"]
        scr = p["screen"]["proxy_deletion"]["queries"]
        p["cost"] = {"proxy_distillation": p["proxy"]["teacher_queries"], "explainer_training_on_proxy": 0,
                     "screening": scr, "gate_calibration": p["gate"]["calibration_queries"],
                     "proxy_total_before_use": p["proxy"]["teacher_queries"] + scr + p["gate"]["calibration_queries"],
                     "direct_training": direct_q,
                     "direct_total_before_use": (direct_q or 0) + (p["gate_direct_calibration_queries"] or 0),
                     "gated_queries_per_expl_proxy": per_expl, "gated_queries_per_expl_direct": rows[0]["queries_per_expl"]}
        c = p["cost"]
        if direct_q:
            c["proxy_cost_fraction"] = c["proxy_total_before_use"] / c["direct_total_before_use"]
        result["proxy"] = p
        fd, fp = p["fidelity"]["direct"], p["fidelity"]["proxy"]
        md.append("\nProxy-trained explainer on the real target:\n\n| explainer | del. AUC | ins. AUC | fid (1 - del/p) | fid (ins/p) |\n|---|---|---|---|---|\n")
        for k, v in p["fidelity"].items():
            md.append(f"| {k} | {v['deletion_auc']:.3f} | {v['insertion_auc']:.3f} | {v['fid_deletion']:.3f} | {v['fid_insertion']:.3f} |\n")
        md.append(f"\nproxy/direct fidelity: deletion {fp['fid_deletion'] / fd['fid_deletion']:.3f}, insertion "
                  f"{fp['fid_insertion'] / fd['fid_insertion']:.3f}\n\nScreens (ratio {args.ratio} of FeatureAblation, alpha 0.05, N <= 50):\n\n")
        md.append("| explainer | metric | decision | inputs | queries | fidelity ratio |\n|---|---|---|---|---|---|\n")
        for k, v in p["screen"].items():
            md.append(f"| {k.split('_')[0]} | {v['metric']} | {v['decision']} | {v['n']} | {v['queries']} | {v['ratio_estimate']:.3f} |\n")
        md.append("\nCost in real-target queries:\n\n" + "\n".join(f"- {k}: {v}" for k, v in c.items()) + "\n")
        md.append("\nGate on the proxy-trained explainer (in distribution):\n\n" + table([p["gate"]]))
    text = "".join(md)
    write_json(out_dir / "gate.json", result)
    write_text(out_dir / "gate.md", text)
    print(text, flush=True)


def _train_queries(checkpoint: str) -> int | None:
    """train/queries of the run that wrote ``checkpoint`` (its csv log), if found."""
    import csv

    for log in sorted(Path(checkpoint).parent.glob("logs/version_*/metrics.csv")):
        vals = []
        with open(log, newline="") as fh:
            for row in csv.DictReader(fh):
                v = row.get("val/train_queries") or row.get("train/queries")
                if v:
                    vals.append(float(v))
        if vals:
            return int(max(vals))
    return None


if __name__ == "__main__":
    main()
