"""Attribution abnormality as an OOD score, and the two-stage trust gate, on MNIST.

    python benchmarks/bench_ood.py --checkpoint outputs/apps_mnist/explainer.ckpt [--n-test 300] [--out DIR]

1. **AUROC** of in-distribution test digits against shifted ones for each score of :mod:`fex.ood`,
   calibrated on ``--n-val`` validation digits: fex's zero-query attribution abnormality
   (``logits``: tau * theta for all features and classes; ``scores``: the explained class's read-out)
   and GAIA's gradient abnormality of the CNN (``average``, ``zeros``). Shifts: ``inverted`` and
   ``noise`` (:mod:`fex.shifts`, what the scores were designed on) and, never used while designing,
   ``rot90``, ``translate`` (6 pixels right) and ``sklearn_digits`` (scikit-learn's 8x8 digits upscaled).
2. **Gate with and without the prescreen** (:class:`fex.gate.Gate`, ``prescreen=`` a :class:`fex.ood.Prescreen`
   on the fex ``logits`` score, flagging ``--rate`` of in-distribution inputs). The gate is calibrated
   on validation digits (alpha ``--alpha``, FeatureAblation reference, ``--margin``); the prescreen's
   statistics and threshold on validation digits too. An explanation is *wrong* when its deletion AUC
   exceeds FeatureAblation's (on the scenario's target) by more than ``--margin``. Scenarios: the
   shifts above, ``corrupted`` (the explainer's scores permuted) and ``other_family`` (the explainer
   used on an MLP trained here on the same digits: another model family). Per scenario: catch rate
   (caught | wrong), false alarms (failed | right) and gate queries per input (check + FeatureAblation
   fallbacks), one-stage vs two-stage.

Counts, rates and AUROCs are exact for this run and do not depend on load; no wall times are reported.
Writes ``<out>/ood.json`` and ``<out>/ood.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fex, also when another one is installed

import fex  # noqa: E402,F401  (torchvision compat shim first)
from fex import metrics as M  # noqa: E402
from fex.methods.baselines import FeatureAblation  # noqa: E402
from fex.bench import load  # noqa: E402
from fex.blackbox import BlackBox  # noqa: E402
from fex.gate import Gate  # noqa: E402
from fex.io import write_json, write_text  # noqa: E402
from fex.ood import AttributionAbnormality, GradientAbnormality, Prescreen, auroc  # noqa: E402
from fex.shifts import (PermutedExplainer, invert_images, noise_images, rotate_images, sklearn_digits,  # noqa: E402
                        translate_images)
from fex.config import build_data  # noqa: E402

DESIGNED = ("inverted", "noise")


def stack(ds, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(n, len(ds))
    return torch.stack([ds[i][0] for i in range(n)]), torch.stack([torch.as_tensor(ds[i][1]) for i in range(n)])


def shifted(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"inverted": invert_images(x), "noise": noise_images(x), "rot90": rotate_images(x),
            "translate": translate_images(x, dx=6), "sklearn_digits": sklearn_digits(size=x.shape[-1], n=len(x))[0]}


def train_mlp(x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0) -> nn.Module:
    """Another model family on the same digits: a 784-256-10 MLP, full-batch Adam."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        for s in range(0, len(x), 256):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[s:s + 256]), y[s:s + 256]).backward()
            opt.step()
    return net.eval()


def gate_rows(name: str, explainer, bb: BlackBox, x: torch.Tensor, gate: Gate, pre: Prescreen, margin: float,
              steps: int | None = None, batch: int = 100) -> dict:
    """Per-input gate statistic, prescreen flag and wrong/right; then both gates' rates and queries."""
    masker = explainer.masker
    g = Gate(bb, masker, gate.fractions, gate.comparator, gate.threshold, gate.alpha, gate.max_queries)
    ref = FeatureAblation(bb, masker)
    stat, flag, wrong = [], [], []
    for s in range(0, len(x), batch):
        xb = x[s:s + batch]
        out = g.check(explainer, xb)
        t = out["target"]
        with bb.uncounted():  # measurement, not cost
            d_e = M.deletion_auc(bb, masker, xb, out["scores"], t, steps).cpu()
            d_r = M.deletion_auc(bb, masker, xb, ref.attribute(xb, t), t, steps).cpu()
        stat.append(out["statistic"])
        flag.append(pre.flag(xb, t).cpu())
        wrong.append(d_e - d_r > margin)
    stat, flag, wrong = torch.cat(stat), torch.cat(flag), torch.cat(wrong)
    failed = stat < gate.threshold
    fb = masker.num_features(x) + 1  # FeatureAblation's queries per failed input
    rows = {}
    for stage, checked in (("one_stage", torch.ones_like(flag)), ("two_stage", flag)):
        caught = checked & failed
        rows[stage] = {
            "catch_rate": float(caught[wrong].float().mean()) if wrong.any() else None,
            "false_alarms": float(caught[~wrong].float().mean()) if (~wrong).any() else None,
            "queries_per_input": float((checked.float() * gate.queries_per_input + caught.float() * fb).mean()),
            "checked": float(checked.float().mean())}
    return {"scenario": name, "n": len(x), "wrong": float(wrong.float().mean()), "n_wrong": int(wrong.sum()),
            "flagged": float(flag.float().mean()), **rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--rate", type=float, default=0.2, help="share of in-distribution inputs the prescreen flags")
    p.add_argument("--deletion-steps", type=int, default=None, help="deletion-curve steps (default: one per feature)")
    p.add_argument("--mlp-epochs", type=int, default=10)
    p.add_argument("--parts", default="auroc,gate", help="auroc and/or gate")
    p.add_argument("--out", default=str(ROOT / "outputs/bench/ood"))
    a = p.parse_args(argv)
    parts = set(a.parts.split(","))
    torch.manual_seed(0)
    cfg, bb, explainer, test = load(a.checkpoint, "random", [])
    data = build_data(cfg.data)
    data.setup("fit")
    xv, _ = stack(data.dataset("val"), a.n_val)
    xt, _ = stack(test, a.n_test)
    shifts = shifted(xt)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. AUROC per score and shift
    scores = {"fex logits (0 queries)": AttributionAbnormality(explainer, "logits"),
              "fex scores (0 queries)": AttributionAbnormality(explainer, "scores"),
              "GAIA average (1 fwd + 1 bwd)": GradientAbnormality(bb, "average"),
              "GAIA zeros (1 fwd + 1 bwd)": GradientAbnormality(bb, "zeros")}
    aurocs = {}
    for name, sc in (scores.items() if "auroc" in parts else ()):
        sc.fit(xv)
        s_in = sc.score(xt)
        aurocs[name] = {k: auroc(s_in, sc.score(v)) for k, v in shifts.items()}
        print(name, {k: round(v, 4) for k, v in aurocs[name].items()}, flush=True)

    res = {"checkpoint": a.checkpoint, "n_val": len(xv), "n_test": len(xt), "alpha": a.alpha, "margin": a.margin,
           "rate": a.rate, "deletion_steps": a.deletion_steps, "auroc": aurocs, "gate": []}
    if "gate" not in parts:
        write_json(out / "ood.json", res)
        return res
    # 2. gate, one- and two-stage
    gate = Gate(bb, explainer.masker)
    gate.calibrate(explainer, xv, alpha=a.alpha, reference="feature_ablation", margin=a.margin, steps=a.deletion_steps)
    pre = Prescreen(AttributionAbnormality(explainer, "logits"), rate=a.rate)
    pre.calibrate(xv)
    xtr, ytr = stack(data.dataset("train"), 10 ** 9)
    mlp = train_mlp(xtr, ytr, a.mlp_epochs)
    mlp_bb = BlackBox(mlp, output="logits", num_classes=10)
    mlp_acc = float((mlp(xt).argmax(1) == labels_of(test, len(xt))).float().mean())
    scenarios = [("in_distribution", explainer, bb, xt), *[(k, explainer, bb, v) for k, v in shifts.items()],
                 ("corrupted", PermutedExplainer(explainer), bb, xt), ("other_family", explainer, mlp_bb, xt)]
    rows = []
    for name, e, b, x in scenarios:
        rows.append(gate_rows(name, e, b, x, gate, pre, a.margin, a.deletion_steps))
        print(rows[-1], flush=True)
    res.update({"threshold": gate.threshold, "prescreen_threshold": pre.threshold, "mlp_test_accuracy": mlp_acc,
                "gate": rows})
    write_json(out / "ood.json", res)
    write_text(out / "ood.md", markdown(res))
    print(markdown(res))
    return res


def labels_of(ds, n: int) -> torch.Tensor:
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(n)])


def markdown(res: dict) -> str:
    shifts = list(next(iter(res["auroc"].values()))) if res["auroc"] else []
    lines = [f"AUROC, in-distribution test digits (n={res['n_test']}) vs shifted; calibrated on {res['n_val']} "
             f"validation digits; designed on {', '.join(DESIGNED)} only", "",
             "| score | " + " | ".join(shifts) + " |", "|---|" + "---|" * len(shifts)]
    for name, row in res["auroc"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in shifts) + " |")
    lines += ["", f"Gate at alpha={res['alpha']}, margin={res['margin']} (wrong: deletion AUC > FeatureAblation's "
                  f"+ margin); prescreen flags {res['rate']:.0%} of in-distribution inputs (fex logits score, 0 queries); "
                  f"other_family: an MLP, test accuracy {res['mlp_test_accuracy']:.3f}", "",
              "| scenario | wrong | flagged | catch 1-stage | catch 2-stage | false alarms 1-stage | false alarms 2-stage "
              "| queries/input 1-stage | queries/input 2-stage |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for r in res["gate"]:
        o, t = r["one_stage"], r["two_stage"]
        lines.append(f"| {r['scenario']} | {r['wrong']:.3f} ({r['n_wrong']}) | {r['flagged']:.3f} | {f(o['catch_rate'])} | "
                     f"{f(t['catch_rate'])} | {f(o['false_alarms'])} | {f(t['false_alarms'])} | "
                     f"{o['queries_per_input']:.2f} | {t['queries_per_input']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
