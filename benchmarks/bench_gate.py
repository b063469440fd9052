"""Trust gate on MNIST or on text: does it catch the explanations that are wrong, and what does it cost?

    python benchmarks/bench_gate.py --checkpoint outputs/gate/mnist_direct/explainer.ckpt \
        [--proxy-checkpoint outputs/gate/mnist_proxy/explainer.ckpt] [--quick]
    python benchmarks/bench_gate.py --modality text --checkpoint outputs/gate/text_direct/explainer.ckpt \
        [--proxy-checkpoint outputs/gate/text_proxy/explainer.ckpt] [--quick]

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
   With ``--early-alpha`` the gate has two stages by queries (``Gate(early_alpha=...)``): every pair is
   asked once (so that one run gives both), and an input is scored as the live two-stage check decides
   it, 3 check queries where the first pair's term clears the calibrated cut-off, the full check
   otherwise (``passed early`` column; the end-to-end ``Gate.verify`` comparison checks this accounting); the
   same measurements scored as the one-stage gate follow as ``(one stage)`` rows, side by side.
   The gate records ``--probes`` target probes (default 8, :mod:`fex.target_probe`): on a target that answers
   them differently (``other_target``) every explanation fails with no removal query; ``--probes 0`` is the
   gate as measured before session 11.
5. With ``--proxy-checkpoint`` (an explainer trained on ``target=mnist_proxy``): screen it on the real
   target, gate it, and compare fidelity and total target-query cost with the directly trained one.

``--modality text``: the Rotten Tomatoes val/test snippets of the checkpoint's data config, the target
the checkpoint was trained against (``minilm_sentiment``), and the scenarios ``in_distribution``,
``ood_shuffled`` (each snippet's words shuffled), ``ood_replaced`` (30% of the words replaced by other
words of the batch), ``other_target`` (the explainer used on the MiniLM proxy student,
``fex.targets.text_proxy``: another model of the same task) and ``corrupted``. Deletion curves have
``--deletion-steps`` (default 10) steps per snippet, whatever its length or batch. The proxy
checkpoint is one trained with ``experiment=text_rt target=minilm_proxy``.

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
from fex.methods.baselines import FeatureAblation
from fex.blackbox import BlackBox
from fex.gate import STATISTICS, Gate, Screen, conformal_threshold, fidelity
from fex.io import write_json, write_text
from fex.module import ExplainerModule
from fex.paths import default_cache_dir
from fex.render import markdown_table
from fex.shifts import PermutedExplainer, invert_images, noise_images, replace_words, shuffle_words


def take(masker, x, start: int, stop: int | None = None):
    """Inputs ``start:stop`` of a batch (a tensor or a text batch dict), through the masker."""
    n = masker.batch_size(x)
    idx = torch.arange(n)[start:stop]
    return masker.select(x, idx.to(masker.device_of(x)))


def make_gate(args, bb: BlackBox, masker) -> Gate:
    """The gate under test: ``--statistic`` with ``--fractions`` (default: the gate's own for contrast, the
    five sizes 0.1-1.0 for the deletion statistics)."""
    fr = args.fractions or (None if args.statistic == "contrast" else "0.1,0.2,0.3,0.5,1.0")
    kw = {} if fr is None else {"fractions": tuple(float(f) for f in fr.split(","))}
    if args.early_alpha is not None:
        kw["early_alpha"] = args.early_alpha
    return Gate(bb, masker, alpha=args.alpha, statistic=args.statistic, probes=args.probes, **kw)


def deletion(bb: BlackBox, masker, x, scores, target, steps: int | None = None) -> torch.Tensor:
    with bb.uncounted():  # measurement, not cost
        return M.deletion_auc(bb, masker, x, scores, target, steps).cpu()


def measure(explainer, bb: BlackBox, x, gate: Gate, batch_size: int, steps: int | None = None) -> dict:
    """Per input: the gate statistic (counted check), the explainer's and FeatureAblation's deletion AUC
    (``steps`` curve steps; None: one per feature) and the input's feature count."""
    masker = explainer.masker
    ref = FeatureAblation(bb, masker)
    gate = copy.copy(gate)
    gate.blackbox = bb
    keys = ("statistic", "d_e", "d_r", "check_queries", "n_features", "terms", "changed")
    acc = {k: [] for k in keys}
    t_check = t_ref = t_fex = 0.0
    n = masker.batch_size(x)
    for s in range(0, n, batch_size):
        xb = take(masker, x, s, s + batch_size)
        t0 = time.perf_counter()
        out = gate.check(explainer, xb, early=False)  # includes the explainer's forward pass; every pair asked
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
        acc["changed"].append(torch.full((len(t),), bool(out["target_changed"])))
        out["queries"][:1] += out["probe_queries"]  # the target probe, asked once per target, paid by the first input
        acc["check_queries"].append(out["queries"])
        acc["n_features"].append(out["valid"].sum(1))
        acc["terms"].append(out.get("terms", torch.zeros(len(t), 0)))
        acc["d_e"].append(deletion(bb, masker, xb, out["scores"], t, steps))
        acc["d_r"].append(deletion(bb, masker, xb, r, t, steps))
    return {**{k: torch.cat(v) for k, v in acc.items()}, "n": n,
            "ms_check": 1e3 * t_check / n, "ms_fex": 1e3 * t_fex / n, "ms_ref": 1e3 * t_ref / n}


def two_stage(m: dict, gate: Gate | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(passed early [B], check queries [B]) of a calibrated two-stage gate (``--early-alpha``) from the full
    check's pair terms: exactly what its live check asks (3 queries where the first pair's term clears the
    cut-off, the full check otherwise); without one, no early passes and the measured queries."""
    if gate is None or not gate.two_stage:
        return torch.zeros_like(m["check_queries"], dtype=torch.bool), m["check_queries"]
    early = m["terms"][:, gate.early_index] > gate.early_threshold
    return early, torch.where(early, torch.full_like(m["check_queries"], 3), m["check_queries"])


def score(name: str, m: dict, threshold: float, margin: float, gate: Gate | None = None) -> dict:
    """Gate outcome at ``threshold``: a failed input costs FeatureAblation's n + 1 more queries (n its
    features) and gets its attribution (the same deterministic scores as the reference's), exactly as
    Gate.verify does. With a calibrated two-stage ``gate``, inputs whose first pair clears its cut-off pass
    at 3 check queries."""
    early, check_q = two_stage(m, gate)
    # a changed target fails even under a threshold of -inf (Gate.verify does the same)
    passed = (early | (m["statistic"] >= threshold)) & ~m["changed"]
    failed = ~passed
    wrong = m["d_e"] - m["d_r"] > margin
    f = m["n_features"]
    queries = check_q + failed.long() * (f + 1)
    d_final = torch.where(failed, m["d_r"], m["d_e"])
    rate = lambda num, den: float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")  # noqa: E731
    ref_queries = float((f + 2).float().mean())  # FeatureAblation (n + 1) + the prediction
    ref_queries = int(ref_queries) if ref_queries.is_integer() else round(ref_queries, 1)
    fail_rate = float(failed.float().mean())
    return {"scenario": name, "n": m["n"], "margin": margin, "wrong": int(wrong.sum()), "wrong_rate": float(wrong.float().mean()),
            "fail_rate": fail_rate, "catch_rate": rate(failed & wrong, wrong),
            "false_alarm_rate": rate(failed & ~wrong, ~wrong),
            "queries_per_expl": float(queries.float().mean()), "check_queries_per_expl": float(check_q.float().mean()),
            "early_rate": float(early.float().mean()),
            "reference_queries_per_expl": ref_queries, "cost_vs_reference": float(queries.float().mean()) / ref_queries,
            "deletion_explainer": float(m["d_e"].mean()), "deletion_reference": float(m["d_r"].mean()),
            "deletion_gated": float(d_final.mean()), "statistic_median": float(m["statistic"].median()),
            "ms_per_expl_gated": m["ms_check"] + fail_rate * m["ms_ref"], "ms_per_expl_fex": m["ms_fex"],
            "ms_per_expl_reference": m["ms_ref"]}


COLUMNS = [("scenario", "scenario", "{}"), ("margin", "margin", "{}"), ("n", "n", "{}"), ("wrong", "wrong", "{}"),
           ("catch_rate", "caught (fail given wrong)", "{:.2f}"), ("false_alarm_rate", "false alarms (fail given right)", "{:.2f}"),
           ("fail_rate", "fail rate", "{:.2f}"), ("early_rate", "passed early", "{:.2f}"),
           ("queries_per_expl", "queries/expl (gated)", "{:.1f}"),
           ("reference_queries_per_expl", "queries/expl (FA on all)", "{}"), ("cost_vs_reference", "cost vs FA on all", "{:.2f}"),
           ("deletion_explainer", "del. AUC fex", "{:.3f}"), ("deletion_gated", "del. AUC gated", "{:.3f}"),
           ("deletion_reference", "del. AUC FA", "{:.3f}"), ("statistic_median", "median T", "{:.3f}"),
           ("ms_per_expl_gated", "ms/expl gated*", "{:.2f}"), ("ms_per_expl_reference", "ms/expl FA*", "{:.2f}")]


def table(rows: list[dict]) -> str:
    return markdown_table([c[1] for c in COLUMNS], [[c[2].format(r[c[0]]) for c in COLUMNS] for r in rows]) + "\n"


def thresholds(explainer, bb: BlackBox, x_val, gate: Gate, margins, alpha: float, batch_size: int,
               steps: int | None = None):
    """Conformal thresholds at ``alpha`` over the validation explanations judged right at each margin
    (what Gate.calibrate computes, for several margins from one set of measurements)."""
    with bb.counting() as c:
        m = measure(explainer, bb, x_val, gate, batch_size, steps)
    out = {}
    for margin in margins:
        right = m["d_e"] - m["d_r"] <= margin
        out[margin] = {"threshold": conformal_threshold(m["statistic"][right], alpha), "n_right": int(right.sum()),
                       "n": m["n"]}
    return out, c.n


def proxy_section(args, w: dict, direct: ExplainerModule) -> dict:
    """Screen and gate the proxy-trained explainer on the real target; cost against direct training."""
    real, x_val, x_test, steps = w["real"], w["x_val"], w["x_test"], w["steps"]
    proxy_ex = ExplainerModule.from_checkpoint(args.proxy_checkpoint, target=real, allow_target_mismatch=True)
    masker = proxy_ex.masker
    out = {"proxy": w["proxy_info"]()}
    n_val = masker.batch_size(x_val)
    screen_x = take(masker, x_val, n_val - 60)
    screens = {}  # on the real target: validation inputs in order, at most 50, sequential
    for metric in ("deletion", "insertion"):
        for name, ex in (("proxy", proxy_ex), ("direct", direct)):
            r = Screen(real, masker, ratio=args.ratio, alpha=0.05, max_inputs=50, metric=metric,
                       steps=args.screen_steps).run(ex, screen_x)
            screens[f"{name}_{metric}"] = {k: v for k, v in r.items() if not k.startswith("wealth")}
    out["screen"] = screens
    fids = {}
    with real.uncounted():  # fidelity on the real target over the test inputs (measurement)
        t = real(x_test).argmax(-1).cpu()
        s_fa = FeatureAblation(real, masker).attribute(x_test, t)
        for name, s in (("proxy", proxy_ex.explain(x_test, t)["scores"]), ("direct", direct.explain(x_test, t)["scores"]),
                        ("feature_ablation", s_fa)):
            fids[name] = {"deletion_auc": float(M.deletion_auc(real, masker, x_test, s, t, steps).mean()),
                          "insertion_auc": float(M.insertion_auc(real, masker, x_test, s, t, steps).mean()),
                          "fid_deletion": float(fidelity(real, masker, x_test, s, t, "deletion", steps).mean()),
                          "fid_insertion": float(fidelity(real, masker, x_test, s, t, "insertion", steps).mean())}
    out["fidelity"] = fids
    x_cal = take(masker, x_val, 0, args.n_val)
    gate = make_gate(args, real, masker)
    gate.calibrate(proxy_ex, x_cal, margin=args.margins[0], **w["calibrate_kw"])  # on the real target, counted
    gate.save(args.proxy_checkpoint)
    m = measure(proxy_ex, real, x_test, gate, args.batch_size, steps)
    out["gate"] = score("proxy_in_distribution", m, gate.threshold, args.margins[0])
    out["gate"]["calibration_queries"] = gate.calibration["queries"]
    out["gate_cheap"] = score("proxy_in_distribution_uncond", m, conformal_threshold(
        measure(proxy_ex, real, x_cal, gate, args.batch_size, steps)["statistic"], args.alpha), args.margins[0])
    out["gate_cheap"]["calibration_queries"] = args.n_val * gate.queries_per_input
    return out


def mnist_world(args) -> dict:
    """MNIST digits, the MNIST CNN (and its seed+1 twin as the other target), image shifts."""
    from fex.data.mnist import MNISTDataModule
    from fex.targets.mnist_cnn import pretrained_mnist_cnn
    from fex.targets.proxy import proxy_info

    data = MNISTDataModule(val_size=500, test_size=1000, seed=args.seed)
    data.setup()
    x_test = data.dataset("test").x[: args.n_test]
    real = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed), num_classes=10, name="mnist_cnn_seed0")
    other = BlackBox(pretrained_mnist_cnn(args.cache_dir, seed=args.seed + 1), num_classes=10, name="mnist_cnn_seed1")
    return {"title": "MNIST", "noun": "digits", "real": real, "other": other, "steps": args.deletion_steps,
            "calibrate_kw": {"steps": args.deletion_steps} if args.deletion_steps else {},
            "x_val": data.dataset("val").x[: args.n_val + 60],  # the last 60 are the screen's
            "x_test": x_test, "shifts": [("ood_inverted", invert_images(x_test)),
                                         ("ood_noise", noise_images(x_test, 0.5, args.seed))],
            "encode": lambda masker, x: x, "proxy_info": lambda: proxy_info(args.cache_dir, seed=args.seed)}


def text_world(args) -> dict:
    """Rotten Tomatoes snippets and the MiniLM sentiment target from the checkpoint's configs; the MiniLM
    proxy student as the other target; word shifts. Deletion curves have a fixed number of steps."""
    from omegaconf import OmegaConf

    from fex.data.text import load_splits
    from fex.checkpoint import read_checkpoint, stored
    from fex.registry import check_stored
    from fex.targets.text import minilm_sentiment
    from fex.targets.text_proxy import minilm_proxy, text_proxy_info

    def resolved(ck: dict, key: str) -> dict:  # a stored config with ${paths.cache_dir} = --cache-dir
        check_stored(key, stored(ck, key), f"checkpoint {ck.get('_path', '')}")  # never code from a checkpoint
        cfg = OmegaConf.create({"paths": {"cache_dir": args.cache_dir}, key: stored(ck, key)})
        return OmegaConf.to_container(cfg, resolve=True)[key]

    ckpt = read_checkpoint(args.checkpoint)
    data_cfg, target_cfg = resolved(ckpt, "data"), resolved(ckpt, "target")
    del ckpt
    teacher = {k: v for k, v in target_cfg["model"].items() if k != "_target_"}
    if not str(target_cfg["model"].get("_target_", "")).endswith("minilm_sentiment"):
        raise SystemExit(f"--modality text needs an explainer trained on target=minilm_sentiment, "
                         f"not {target_cfg['model'].get('_target_')}")
    splits, _ = load_splits(data_cfg.get("source", "rotten_tomatoes"), data_cfg.get("cache_dir"),
                            data_cfg.get("val_size", 1000), data_cfg.get("test_size", 1000), data_cfg.get("seed", 0))
    val, test = splits["val"].texts[: args.n_val + 60], splits["test"].texts[: args.n_test]
    real = BlackBox(minilm_sentiment(**teacher), output=target_cfg.get("output", "logits"),
                    max_batch_size=target_cfg.get("max_batch_size", 256), num_classes=2,
                    name="fex.targets.text.minilm_sentiment", config=target_cfg)
    if args.proxy_checkpoint:  # the proxy the proxy-trained explainer was trained on
        pck = read_checkpoint(args.proxy_checkpoint)
        proxy_kw = resolved(pck, "target")["model"]
        proxy_kw.pop("_target_", None)
        del pck
    else:
        proxy_kw = {"cache_dir": teacher.get("cache_dir"), "seed": args.seed, "teacher": teacher}
    other = BlackBox(minilm_proxy(**proxy_kw), num_classes=2, max_batch_size=1024, name="fex.targets.text_proxy.minilm_proxy")
    steps = args.deletion_steps or 10
    return {"title": "Rotten Tomatoes (MiniLM sentiment)", "noun": "text snippets", "real": real, "other": other,
            "steps": steps, "calibrate_kw": {"steps": steps, "batch_size": args.batch_size}, "x_val": val, "x_test": test,
            "shifts": [("ood_shuffled", shuffle_words(test, args.seed)), ("ood_replaced", replace_words(test, 0.3, args.seed))],
            "encode": lambda masker, texts: masker.encode(texts),  # the explainer's word masker
            "proxy_info": lambda: text_proxy_info(**proxy_kw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--modality", choices=("mnist", "text"), default="mnist")
    ap.add_argument("--proxy-checkpoint")
    ap.add_argument("--direct-train-queries", type=int, default=None,
                    help="target queries the direct explainer was trained with (default: read from its run's logs)")
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.1, 0.2],
                    help="'wrong' = deletion AUC > FeatureAblation's + margin; the first is the one the sidecar uses")
    ap.add_argument("--deletion-steps", type=int, default=None,
                    help="deletion curve steps per input for 'wrong' (default: one per feature on mnist, 10 on text)")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--early-alpha", type=float, default=None,
                    help="a two-stage contrast gate (fex.gate early_alpha): one removal pair first, the rest only where "
                         "its term does not clear the calibrated cut-off (scored at the first margin)")
    ap.add_argument("--probes", type=int, default=8,
                    help="target probes the gate records (fex.target_probe; 0: none, the gate measured before session 11)")
    ap.add_argument("--statistic", choices=STATISTICS, default="contrast",
                    help="the gate's statistic (fex.gate); the deletion ones are measured with every size asked, "
                         "so their check queries are the most a sequential check spends")
    ap.add_argument("--fractions", default=None, help="removal sizes, comma-separated (default: see make_gate)")
    ap.add_argument("--screen-steps", type=int, default=10, help="deletion/insertion curve steps in the screen")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=str(default_cache_dir()), help="default: $FEX_CACHE or ~/.cache/fex")
    ap.add_argument("--out", default=None, help="default outputs/bench/gate (mnist), outputs/bench/gate_text (text)")
    ap.add_argument("--quick", action="store_true", help="a tiny run to check the script works (40 inputs)")
    args = ap.parse_args()
    if args.quick:
        args.n_val, args.n_test, args.batch_size = 40, 40, 20
    torch.manual_seed(args.seed)
    out_dir = Path(args.out or ("outputs/bench/gate" if args.modality == "mnist" else "outputs/bench/gate_text"))

    w = (mnist_world if args.modality == "mnist" else text_world)(args)
    real, other, noun, steps = w["real"], w["other"], w["noun"], w["steps"]
    explainer = ExplainerModule.from_checkpoint(args.checkpoint, target=real)
    masker = explainer.masker
    w["x_val"], w["x_test"] = w["encode"](masker, w["x_val"]), w["encode"](masker, w["x_test"])
    w["shifts"] = [(name, w["encode"](masker, x)) for name, x in w["shifts"]]
    x_val, x_test = take(masker, w["x_val"], 0, args.n_val), w["x_test"]

    # the shipped calibration (sidecar), at the first margin, through the public API
    gate = make_gate(args, real, masker)
    gate.calibrate(explainer, x_val, margin=args.margins[0], **w["calibrate_kw"])
    side = gate.save(args.checkpoint)
    print(f"gate: threshold {gate.threshold:.4f} at alpha {args.alpha} from {gate.calibration['n_right']} right of "
          f"{args.n_val} validation {noun} ({gate.calibration['queries']} queries) -> {side}", flush=True)
    thr, _ = thresholds(explainer, real, x_val, gate, args.margins, args.alpha, args.batch_size, steps)
    assert abs(thr[args.margins[0]]["threshold"] - gate.threshold) < 1e-6, (thr, gate.threshold)
    thr_uncond = conformal_threshold(measure(explainer, real, x_val, gate, args.batch_size, steps)["statistic"], args.alpha)

    on_other = ExplainerModule.from_checkpoint(args.checkpoint, target=other, allow_target_mismatch=True)
    scenarios = [("in_distribution", explainer, real, x_test)]
    scenarios += [(name, explainer, real, x) for name, x in w["shifts"]]
    scenarios += [("other_target", on_other, other, x_test),
                  ("corrupted", PermutedExplainer(explainer, args.seed), real, x_test)]
    measured = {name: measure(ex, bb, x, gate, args.batch_size, steps) for name, ex, bb, x in scenarios}
    # consistency: Gate.verify end to end on in-distribution gives the same decisions and per-input queries
    # (a sequential statistic stops early in verify, so there its queries can only be fewer)
    ind = measured["in_distribution"]
    with real.counting() as c:
        v = gate.verify(explainer, take(masker, x_test, 0, 50))
    early, check_q = two_stage(ind, gate)
    failed = ~((early | (ind["statistic"] >= gate.threshold)) & ~ind["changed"])[:50]
    sim = check_q[:50] + failed.long() * (ind["n_features"][:50] + 1)
    same = torch.equal(v["passed"], ~failed) and c.n == int(v["queries"].sum())
    same &= bool((v["queries"] <= sim).all()) if gate.sequential else torch.equal(v["queries"], sim)
    assert same, "verify and the benchmark's accounting differ"

    rows, summary = [], {}
    for margin in args.margins:
        for name in measured:
            # a two-stage gate's cut-off is calibrated at the first margin's threshold: only there is it the gate
            rows.append(score(name, measured[name], thr[margin]["threshold"], margin,
                              gate if margin == args.margins[0] else None))
        rows.append(score("in_distribution (uncond. calibration)", measured["in_distribution"], thr_uncond, margin))
        one_stage = []
        if gate.two_stage and margin == args.margins[0]:  # the same measurements scored as the one-stage gate
            one_stage = [score(f"{name} (one stage)", measured[name], thr[margin]["threshold"], margin)
                         for name in measured]
            w1 = sum(r["wrong"] for r in one_stage[1:])
            c1 = sum(r["catch_rate"] * r["wrong"] for r in one_stage[1:] if r["wrong"])
            summary[f"{margin} one stage"] = {"catch_rate_shifted": c1 / w1 if w1 else float("nan"),
                                              "caught_shifted": round(c1), "wrong_shifted": w1,
                                              "check_queries_in_distribution": one_stage[0]["check_queries_per_expl"]}
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
        rows += one_stage
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    result = {"args": vars(args), "calibration": gate.calibration, "threshold_unconditional": thr_uncond, "rows": rows,
              "summary": summary}
    curve = "one step per feature" if steps is None else f"{steps} steps per input"
    md = [f"Gate on {w['title']}: {args.n_test} test {noun} per scenario, the {gate.statistic} statistic with {gate.queries_per_input} check queries per input "
          "(at most: the deletion statistics measured in full, not sequentially); "
          f"thresholds at alpha={args.alpha} over the right ones of {args.n_val} validation {noun} ('wrong' = deletion "
          f"AUC ({curve}) > FeatureAblation's + margin; the unconditional row calibrates on all validation {noun}). "
          "Columns marked * are wall times on a shared machine: rerun on an idle machine before quoting.\n\n",
          table(rows)]
    if args.modality == "mnist":  # the MNIST report as it always read
        md[0] = md[0].replace("deletion AUC (one step per feature) >", "deletion AUC >")
    for margin, sm in summary.items():
        if margin.endswith("one stage"):
            md.append(f"\nmargin {margin}: shifted cases {sm['caught_shifted']}/{sm['wrong_shifted']} wrong caught "
                      f"({sm['catch_rate_shifted']:.2f}); {sm['check_queries_in_distribution']:.2f} check queries per "
                      "in-distribution input.\n")
            continue
        md.append(f"\nmargin {margin}: shifted cases (OOD, other target, corrupted) {sm['caught_shifted']}/{sm['wrong_shifted']} "
                  f"wrong caught ({sm['catch_rate_shifted']:.2f}); in distribution: false alarms {sm['false_alarm_rate_in_distribution']:.2f}, "
                  f"wrong caught {sm['catch_rate_in_distribution']:.2f}, fail rate {sm['fail_rate_in_distribution']:.2f}.\n")
    if args.proxy_checkpoint:
        p = proxy_section(args, w, explainer)
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
        md.append(f"\nProxy-trained explainer on the real target (test {noun}):\n\n")
        md.append(markdown_table(["explainer", "del. AUC", "ins. AUC", "fid (1 - del/p)", "fid (ins/p)"],
                                 [[k, f"{v['deletion_auc']:.3f}", f"{v['insertion_auc']:.3f}", f"{v['fid_deletion']:.3f}",
                                   f"{v['fid_insertion']:.3f}"] for k, v in p["fidelity"].items()]) + "\n")
        md.append(f"\nproxy / direct fidelity: deletion {fp['fid_deletion'] / fd['fid_deletion']:.3f}, insertion "
                  f"{fp['fid_insertion'] / fd['fid_insertion']:.3f}\n\nScreens on the real target (fidelity >= {args.ratio} x "
                  "FeatureAblation's? alpha 0.05, N <= 50):\n\n")
        md.append(markdown_table(["explainer", "metric", "decision", "inputs", "queries", "fidelity ratio"],
                                 [[k.split("_")[0], v["metric"], v["decision"], v["n"], v["queries"],
                                   f"{v['ratio_estimate']:.3f}"] for k, v in p["screen"].items()]) + "\n")
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
