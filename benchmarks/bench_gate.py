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
from fex.gate import Gate, Screen, conformal_threshold, fidelity
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


def measure(explainer, bb: BlackBox, x: torch.Tensor, gate: Gate, batch_size: int) -> dict:
    """Per input: the gate statistic (counted check), the explainer's and FeatureAblation's deletion AUC."""
    masker = explainer.masker
    ref = FeatureAblation(bb, masker)
    gate = copy.copy(gate)
    gate.blackbox = bb
    keys = ("statistic", "d_e", "d_r", "check_queries")
    acc = {k: [] for k in keys}
    t_check = t_ref = t_fex = 0.0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        t0 = time.perf_counter()
        out = gate.check(explainer, xb)  # includes the explainer's forward pass
        t_check += time.perf_counter() - t0
        t = out["target"]
        t0 = time.perf_counter()
        explainer.explain(xb, t)
        t_fex += time.perf_counter() - t0
        with bb.uncounted():
            t0 = time.perf_counter()
            r = ref.attribute(xb, t)
            t_ref += time.perf_counter() - t0
        acc["statistic"].append(out["statistic"])
        acc["check_queries"].append(out["queries"])
        acc["d_e"].append(deletion(bb, masker, xb, out["scores"], t))
        acc["d_r"].append(deletion(bb, masker, xb, r, t))
    n = len(x)
    return {**{k: torch.cat(v) for k, v in acc.items()}, "f": masker.num_features(), "n": n,
            "ms_check": 1e3 * t_check / n, "ms_fex": 1e3 * t_fex / n, "ms_ref": 1e3 * t_ref / n}


def score(name: str, m: dict, threshold: float, margin: float) -> dict:
    """Gate outcome at ``threshold``: a failed input costs FeatureAblation's F + 1 more queries and gets
    its attribution (the same deterministic scores as the reference's), exactly as Gate.verify does."""
    passed = m["statistic"] >= threshold
    failed = ~passed
    wrong = m["d_e"] - m["d_r"] > margin
    f = m["f"]
    queries = m["check_queries"] + failed.long() * (f + 1)
    d_final = torch.where(failed, m["d_r"], m["d_e"])
    rate = lambda num, den: float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")  # noqa: E731
    ref_queries = f + 1 + 1  # FeatureAblation (F + 1) + the prediction
    fail_rate = float(failed.float().mean())
    return {"scenario": name, "n": m["n"], "margin": margin, "wrong": int(wrong.sum()), "wrong_rate": float(wrong.float().mean()),
            "fail_rate": fail_rate, "catch_rate": rate(failed & wrong, wrong),
            "false_alarm_rate": rate(failed & ~wrong, ~wrong),
            "queries_per_expl": float(queries.float().mean()), "check_queries_per_expl": float(m["check_queries"].float().mean()),
            "reference_queries_per_expl": ref_queries, "cost_vs_reference": float(queries.float().mean()) / ref_queries,
            "deletion_explainer": float(m["d_e"].mean()), "deletion_reference": float(m["d_r"].mean()),
            "deletion_gated": float(d_final.mean()), "statistic_median": float(m["statistic"].median()),
            "ms_per_expl_gated": m["ms_check"] + fail_rate * m["ms_ref"], "ms_per_expl_fex": m["ms_fex"],
            "ms_per_expl_reference": m["ms_ref"]}


COLUMNS = [("scenario", "scenario", "{}"), ("margin", "margin", "{}"), ("n", "n", "{}"), ("wrong", "wrong", "{}"),
           ("catch_rate", "caught (fail given wrong)", "{:.2f}"), ("false_alarm_rate", "false alarms (fail given right)", "{:.2f}"),
           ("fail_rate", "fail rate", "{:.2f}"), ("queries_per_expl", "queries/expl (gated)", "{:.1f}"),
           ("reference_queries_per_expl", "queries/expl (FA on all)", "{}"), ("cost_vs_reference", "cost vs FA on all", "{:.2f}"),
           ("deletion_explainer", "del. AUC fex", "{:.3f}"), ("deletion_gated", "del. AUC gated", "{:.3f}"),
           ("deletion_reference", "del. AUC FA", "{:.3f}"), ("statistic_median", "median T", "{:.3f}"),
           ("ms_per_expl_gated", "ms/expl gated*", "{:.2f}"), ("ms_per_expl_reference", "ms/expl FA*", "{:.2f}")]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    return head + "".join("| " + " | ".join(c[2].format(r[c[0]]) for c in COLUMNS) + " |\n" for r in rows)


def thresholds(explainer, bb: BlackBox, x_val: torch.Tensor, gate: Gate, margins, alpha: float, batch_size: int):
    """Conformal thresholds at ``alpha`` over the validation explanations judged right at each margin
    (what Gate.calibrate computes, for several margins from one set of measurements)."""
    with bb.counting() as c:
        m = measure(explainer, bb, x_val, gate, batch_size)
    out = {}
    for margin in margins:
        right = m["d_e"] - m["d_r"] <= margin
        out[margin] = {"threshold": conformal_threshold(m["statistic"][right], alpha), "n_right": int(right.sum()),
                       "n": m["n"]}
    return out, c.n


def proxy_section(args, real: BlackBox, direct: ExplainerModule, x_test, x_val, direct_val: dict) -> dict:
    """Screen and gate the proxy-trained explainer on the real target; cost against direct training."""
    from fex.targets.proxy import proxy_info

    proxy_ex = ExplainerModule.from_checkpoint(args.proxy_checkpoint, target=real, allow_target_mismatch=True)
    info = proxy_info(args.cache_dir, seed=args.seed)
    masker = proxy_ex.masker
    out = {"proxy": info}
    screens = {}  # on the real target: validation digits in order, at most 50, sequential
    for metric in ("deletion", "insertion"):
        for name, ex in (("proxy", proxy_ex), ("direct", direct)):
            r = Screen(real, masker, ratio=args.ratio, alpha=0.05, max_inputs=50, metric=metric,
                       steps=args.screen_steps).run(ex, x_val[-60:])
            screens[f"{name}_{metric}"] = {k: v for k, v in r.items() if not k.startswith("wealth")}
    out["screen"] = screens
    fids = {}
    with real.uncounted():  # fidelity on the real target over the test digits (measurement)
        t = real(x_test).argmax(-1).cpu()
        s_fa = FeatureAblation(real, masker).attribute(x_test, t)
        for name, s in (("proxy", proxy_ex.explain(x_test, t)["scores"]), ("direct", direct.explain(x_test, t)["scores"]),
                        ("feature_ablation", s_fa)):
            fids[name] = {"deletion_auc": float(M.deletion_auc(real, masker, x_test, s, t).mean()),
                          "insertion_auc": float(M.insertion_auc(real, masker, x_test, s, t).mean()),
                          "fid_deletion": float(fidelity(real, masker, x_test, s, t, "deletion").mean()),
                          "fid_insertion": float(fidelity(real, masker, x_test, s, t, "insertion").mean())}
    out["fidelity"] = fids
    gate = Gate(real, masker, alpha=args.alpha)
    gate.calibrate(proxy_ex, x_val[: args.n_val], margin=args.margins[0])  # on the real target, counted
    gate.save(args.proxy_checkpoint)
    m = measure(proxy_ex, real, x_test, gate, args.batch_size)
    out["gate"] = score("proxy_in_distribution", m, gate.threshold, args.margins[0])
    out["gate"]["calibration_queries"] = gate.calibration["queries"]
    out["gate_cheap"] = score("proxy_in_distribution_uncond", m, conformal_threshold(
        measure(proxy_ex, real, x_val[: args.n_val], gate, args.batch_size)["statistic"], args.alpha), args.margins[0])
    out["gate_cheap"]["calibration_queries"] = args.n_val * gate.queries_per_input
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--proxy-checkpoint")
    ap.add_argument("--direct-train-queries", type=int, default=None,
                    help="target queries the direct explainer was trained with (default: read from its run's logs)")
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.1, 0.2],
                    help="'wrong' = deletion AUC > FeatureAblation's + margin; the first is the one the sidecar uses")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--screen-steps", type=int, default=10, help="deletion/insertion curve steps in the screen")
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
    x_val = data.dataset("val").x[: args.n_val + 60]  # the last 60 are the screen's
    x_test = data.dataset("test").x[: args.n_test]
    real = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed), num_classes=10, name="mnist_cnn_seed0")
    other = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed + 1), num_classes=10, name="mnist_cnn_seed1")
    explainer = ExplainerModule.from_checkpoint(args.checkpoint, target=real)

    # the shipped calibration (sidecar), at the first margin, through the public API
    gate = Gate(real, explainer.masker, alpha=args.alpha)
    gate.calibrate(explainer, x_val[: args.n_val], margin=args.margins[0])
    side = gate.save(args.checkpoint)
    print(f"gate: threshold {gate.threshold:.4f} at alpha {args.alpha} from {gate.calibration['n_right']} right of "
          f"{args.n_val} validation digits ({gate.calibration['queries']} queries) -> {side}", flush=True)
    thr, _ = thresholds(explainer, real, x_val[: args.n_val], gate, args.margins, args.alpha, args.batch_size)
    assert abs(thr[args.margins[0]]["threshold"] - gate.threshold) < 1e-6, (thr, gate.threshold)
    thr_uncond = conformal_threshold(measure(explainer, real, x_val[: args.n_val], gate, args.batch_size)["statistic"], args.alpha)

    g = torch.Generator().manual_seed(args.seed)
    noisy = (x_test + 0.5 * torch.randn(x_test.shape, generator=g)).clamp(0, 1)
    on_other = ExplainerModule.from_checkpoint(args.checkpoint, target=other, allow_target_mismatch=True)
    scenarios = [("in_distribution", explainer, real, x_test), ("ood_inverted", explainer, real, 1 - x_test),
                 ("ood_noise", explainer, real, noisy), ("other_target", on_other, other, x_test),
                 ("corrupted", PermutedExplainer(explainer, args.seed), real, x_test)]
    measured = {name: measure(ex, bb, x, gate, args.batch_size) for name, ex, bb, x in scenarios}
    # consistency: Gate.verify end to end on in-distribution gives the same per-input queries
    with real.counting() as c:
        v = gate.verify(explainer, x_test[:50])
    sim = measured["in_distribution"]["check_queries"][:50] + (measured["in_distribution"]["statistic"][:50] < gate.threshold).long() * 50
    assert torch.equal(v["queries"], sim) and c.n == int(sim.sum()), "verify and the benchmark's accounting differ"

    rows, summary = [], {}
    for margin in args.margins:
        for name in measured:
            rows.append(score(name, measured[name], thr[margin]["threshold"], margin))
        rows.append(score("in_distribution (uncond. calibration)", measured["in_distribution"], thr_uncond, margin))
        mine = [r for r in rows if r["margin"] == margin]
        shifted = [r for r in mine if r["scenario"] not in ("in_distribution", "in_distribution (uncond. calibration)")]
        n_wrong = sum(r["wrong"] for r in shifted)
        caught = sum(r["catch_rate"] * r["wrong"] for r in shifted if r["wrong"])
        summary[str(margin)] = {"threshold": thr[margin]["threshold"], "n_right_val": thr[margin]["n_right"],
                                "catch_rate_shifted": caught / n_wrong if n_wrong else float("nan"),
                                "caught_shifted": round(caught), "wrong_shifted": n_wrong,
                                "catch_rate_in_distribution": mine[0]["catch_rate"],
                                "false_alarm_rate_in_distribution": mine[0]["false_alarm_rate"],
                                "fail_rate_in_distribution": mine[0]["fail_rate"]}
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    result = {"args": vars(args), "calibration": gate.calibration, "threshold_unconditional": thr_uncond, "rows": rows,
              "summary": summary}
    md = [f"Gate on MNIST: {args.n_test} test digits per scenario, {gate.queries_per_input} check queries per input; "
          f"thresholds at alpha={args.alpha} over the right ones of {args.n_val} validation digits ('wrong' = deletion "
          "AUC > FeatureAblation's + margin; the unconditional row calibrates on all validation digits). "
          "Columns marked * are wall times on a shared machine: rerun on an idle machine before quoting.\n\n",
          table(rows)]
    for margin, sm in summary.items():
        md.append(f"\nmargin {margin}: shifted cases (OOD, other target, corrupted) {sm['caught_shifted']}/{sm['wrong_shifted']} "
                  f"wrong caught ({sm['catch_rate_shifted']:.2f}); in distribution: false alarms {sm['false_alarm_rate_in_distribution']:.2f}, "
                  f"wrong caught {sm['catch_rate_in_distribution']:.2f}, fail rate {sm['fail_rate_in_distribution']:.2f}.\n")
    if args.proxy_checkpoint:
        p = proxy_section(args, real, explainer, x_test, x_val, thr)
        direct_q = args.direct_train_queries or _train_queries(args.checkpoint)
        scr = p["screen"]["proxy_deletion"]["queries"]
        cal = p["gate"]["calibration_queries"]
        p["cost"] = {"proxy_distillation": p["proxy"]["teacher_queries"], "explainer_training_on_proxy": 0,
                     "screening": scr, "gate_calibration": cal,
                     "proxy_total_before_use": p["proxy"]["teacher_queries"] + scr + cal,
                     "proxy_total_before_use_cheap_calibration": p["proxy"]["teacher_queries"] + scr + p["gate_cheap"]["calibration_queries"],
                     "direct_training": direct_q, "direct_gate_calibration": gate.calibration["queries"],
                     "direct_total_before_use": (direct_q or 0) + gate.calibration["queries"],
                     "direct_total_before_use_cheap_calibration": (direct_q or 0) + args.n_val * gate.queries_per_input,
                     "gated_queries_per_expl_proxy": p["gate"]["queries_per_expl"],
                     "gated_queries_per_expl_direct": rows[0]["queries_per_expl"]}
        c = p["cost"]
        if direct_q:
            c["proxy_cost_fraction"] = c["proxy_total_before_use"] / c["direct_total_before_use"]
            c["proxy_cost_fraction_cheap_calibration"] = (c["proxy_total_before_use_cheap_calibration"]
                                                          / c["direct_total_before_use_cheap_calibration"])
            c["proxy_cost_fraction_training_only"] = c["proxy_distillation"] / direct_q
        result["proxy"] = p
        fd, fp = p["fidelity"]["direct"], p["fidelity"]["proxy"]
        md.append("\nProxy-trained explainer on the real target (test digits):\n\n| explainer | del. AUC | ins. AUC | fid (1 - del/p) | fid (ins/p) |\n|---|---|---|---|---|\n")
        for k, v in p["fidelity"].items():
            md.append(f"| {k} | {v['deletion_auc']:.3f} | {v['insertion_auc']:.3f} | {v['fid_deletion']:.3f} | {v['fid_insertion']:.3f} |\n")
        md.append(f"\nproxy / direct fidelity: deletion {fp['fid_deletion'] / fd['fid_deletion']:.3f}, insertion "
                  f"{fp['fid_insertion'] / fd['fid_insertion']:.3f}\n\nScreens on the real target (fidelity >= {args.ratio} x "
                  "FeatureAblation's? alpha 0.05, N <= 50):\n\n| explainer | metric | decision | inputs | queries | fidelity ratio |\n|---|---|---|---|---|---|\n")
        for k, v in p["screen"].items():
            md.append(f"| {k.split('_')[0]} | {v['metric']} | {v['decision']} | {v['n']} | {v['queries']} | {v['ratio_estimate']:.3f} |\n")
        md.append("\nCost in real-target queries:\n\n" + "\n".join(f"- {k}: {v}" for k, v in c.items()) + "\n")
        md.append("\nGate on the proxy-trained explainer (in distribution):\n\n" + table([p["gate"], p["gate_cheap"]]))
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
