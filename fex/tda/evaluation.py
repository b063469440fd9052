"""Evaluations of training-data attribution with known or measurable answers.

* :func:`loo_check` - logistic regression (softmax, L2) on synthetic data: influence scores
  against exact leave-one-out retraining (LBFGS to convergence), and LiSSA against the direct solve.
* :func:`hessian_error` - relative Frobenius error of a sampler's subset Hessian against the
  full-data Hessian, mean and spread across seeds.
* :func:`mislabel_detection` - fraction of flipped labels found in the top 10% by self-influence.
* :func:`class_removal` - remove the examples credited most for a class's test predictions,
  retrain the last layer, and measure the class's F1 drop against removing random examples.

Retraining here is last-layer-only: a convex softmax regression on frozen penultimate features,
solved with LBFGS to convergence (:func:`fit_softmax`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_f1_score

from fex import metrics as M
from fex.tda.ihvp import ExactSolver, LissaSolver
from fex.tda.influence import Influence
from fex.tda.model import LossModel
from fex.tda.samplers import FullSampler, Sampler, UniformSampler


# --------------------------------------------------------------------------- small pure helpers
def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two score vectors (:func:`fex.metrics.pearson` of one row)."""
    return float(M.pearson(a.reshape(1, -1), b.reshape(1, -1))[0])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors (:func:`fex.metrics.spearman` of one row)."""
    return float(M.spearman(a.reshape(1, -1), b.reshape(1, -1))[0])


def f1_score(pred: torch.Tensor, y: torch.Tensor, cls: int) -> float:
    """F1 of class ``cls`` against the rest (torchmetrics; 0 when it is never predicted or present)."""
    return float(binary_f1_score((pred == cls).long(), (y == cls).long()))


def fit_softmax(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, weights: torch.Tensor | None = None,
                init: nn.Linear | None = None, max_iter: int = 500, tol: float = 1e-10) -> nn.Linear:
    """argmin_theta (1/N) sum_i w_i CE(x_i W^T + b, y_i) + l2/2 |theta|^2 by LBFGS (w_i default 1).

    N is len(x) (weights of 0 drop an example without renormalising: the leave-one-out of
    influence functions). Returns an ``nn.Linear`` in x's dtype.
    """
    lin = nn.Linear(x.shape[1], num_classes).to(x.dtype)
    with torch.no_grad():
        if init is not None:
            lin.load_state_dict(init.state_dict())
        else:
            lin.weight.zero_()
            lin.bias.zero_()
    w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights.to(x.dtype)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(lin(x), y, reduction="none") * w).sum() / len(x)
        loss = loss + 0.5 * l2 * sum((p ** 2).sum() for p in lin.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return lin.eval()


def head_model(lin: nn.Linear) -> LossModel:
    """A :class:`LossModel` over a fitted ``nn.Linear`` on features (Z = the features themselves)."""
    return LossModel(lin, "last")


# --------------------------------------------------------------------------- 1. known answer
def synthetic_softmax(n: int = 100, d: int = 5, classes: int = 3, seed: int = 0, noise: float = 1.0):
    """Gaussian inputs, labels from a random softmax model: (x_train, y_train, x_test, y_test) float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, d, generator=g, dtype=torch.double) * 1.5

    def draw(m):
        x = torch.randn(m, d, generator=g, dtype=torch.double)
        p = (x @ w.T / noise).softmax(-1)
        return x, torch.multinomial(p, 1, generator=g).squeeze(1)

    xtr, ytr = draw(n)
    xte, yte = draw(max(1, n // 5))
    return xtr, ytr, xte, yte


def loo_check(n: int = 100, d: int = 5, classes: int = 3, l2: float = 0.05, seed: int = 0,
              lissa: dict | None = None) -> dict:
    """Influence vs exact leave-one-out on L2 softmax regression; LiSSA vs the direct solve.

    The test quantity is the mean test loss. Predicted change when example i is dropped:
    score_i / N = grad L_test^T (H + l2 I)^-1 grad l_i / N (H: the mean training Hessian, the
    damping equal to the L2 strength, so the reference solve is exact for this objective).
    Actual change: retrain without i (LBFGS, warm start, to convergence) and evaluate.
    """
    xtr, ytr, xte, yte = synthetic_softmax(n, d, classes, seed)
    full = fit_softmax(xtr, ytr, classes, l2)
    lm = head_model(full)
    infl = Influence(lm, FullSampler(), lambda m, z, y, w: ExactSolver(m, z, y, w, damping=l2)).fit(xtr, ytr)
    pred = infl.group_scores(xte, yte) / n

    def test_loss(lin):
        with torch.no_grad():
            return float(F.cross_entropy(lin(xte), yte))

    base = test_loss(full)
    actual = torch.empty(n, dtype=torch.double)
    for i in range(n):
        w = torch.ones(n, dtype=torch.double)
        w[i] = 0
        actual[i] = test_loss(fit_softmax(xtr, ytr, classes, l2, weights=w, init=full)) - base
    out = {"n": n, "pearson": pearson(pred, actual), "spearman": spearman(pred, actual),
           "max_abs_change": float(actual.abs().max())}
    if lissa is not None:
        g = lm.mean_grad(lm.prepare(xte), yte).unsqueeze(0)
        exact = infl.solver.solve(g)
        approx = LissaSolver(lm, infl.z, ytr, None, damping=l2, **lissa).solve(g)
        out["lissa_rel_err"] = float((approx - exact).norm() / exact.norm())
    return out


# --------------------------------------------------------------------------- 2. Hessian estimates
def hessian_error(model: LossModel, z: torch.Tensor, y: torch.Tensor, samplers: dict[str, Sampler],
                  seeds: list[int], probs: torch.Tensor | None = None, features: torch.Tensor | None = None,
                  full_hessian: torch.Tensor | None = None) -> dict[str, dict]:
    """name -> {mean, std, min, max of |H_S - H|_F / |H|_F over seeds, size}."""
    h = model.hessian(z, y) if full_hessian is None else full_hessian
    hn = h.norm()
    out = {}
    for name, smp in samplers.items():
        errs = []
        for s in seeds:
            idx, w = smp.sample(len(z), probs=probs, features=features, seed=s)
            hs = model.hessian(z[idx], y[idx], w)
            errs.append(float((hs - h).norm() / hn))
        e = torch.tensor(errs, dtype=torch.double)
        out[name] = {"size": int(len(idx)), "mean": float(e.mean()), "std": float(e.std()) if len(e) > 1 else 0.0,
                     "min": float(e.min()), "max": float(e.max())}
    return out


# --------------------------------------------------------------------------- 3. mislabeled examples
def flip_labels(y: torch.Tensor, num_classes: int, fraction: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip ``fraction`` of the labels to a uniformly drawn *other* class -> (new labels, flipped positions)."""
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    k = int(round(fraction * n))
    pos = torch.randperm(n, generator=g)[:k].sort().values
    shift = torch.randint(1, num_classes, (k,), generator=g)
    y2 = y.clone()
    y2[pos] = (y[pos] + shift) % num_classes
    return y2, pos


def detection_rate(scores: torch.Tensor, flipped: torch.Tensor, top: float = 0.1) -> float:
    """Fraction of the flipped examples among the top ``top`` fraction by score (descending)."""
    k = int(math.ceil(top * len(scores)))
    found = torch.isin(torch.topk(scores, k).indices, flipped)
    return float(found.sum()) / max(1, len(flipped))


# --------------------------------------------------------------------------- 4. class removal
def class_removal(feats_tr: torch.Tensor, y_tr: torch.Tensor, feats_te: torch.Tensor, y_te: torch.Tensor,
                  num_classes: int, l2: float, methods: dict[str, Callable[[LossModel], Influence]],
                  k: int, classes: list[int] | None = None, random_seeds: int = 3) -> dict[str, Any]:
    """For each class c: credit = influence of every training example on the mean test loss of class c's
    test examples; remove the top-k credited, retrain the last layer, F1 drop of class c on the test set.

    ``methods`` map a name to ``LossModel -> fitted Influence`` (its sampler/solver); ``random``
    removes k uniformly drawn examples (mean over ``random_seeds``). Returns per-method mean F1 drop
    and per-class rows.
    """
    feats_tr, feats_te = feats_tr.double(), feats_te.double()
    full = fit_softmax(feats_tr, y_tr, num_classes, l2)
    lm = head_model(full)
    pred0 = full(feats_te).argmax(-1)
    classes = list(range(num_classes)) if classes is None else classes
    fitted = {name: make(lm) for name, make in methods.items()}
    drops: dict[str, list[float]] = {name: [] for name in [*methods, "random"]}
    rows = []

    def f1_without(remove: torch.Tensor, c: int) -> float:
        keep = torch.ones(len(y_tr), dtype=torch.bool)
        keep[remove] = False
        lin = fit_softmax(feats_tr[keep], y_tr[keep], num_classes, l2, init=full)
        # same objective scale as the full fit: mean over the kept examples
        return f1_score(lin(feats_te).argmax(-1), y_te, c)

    for c in classes:
        te = y_te == c
        if not te.any():
            continue
        f1_0 = f1_score(pred0, y_te, c)
        row = {"class": c, "f1_before": f1_0}
        for name, infl in fitted.items():
            credit = infl.group_scores(feats_te[te], y_te[te])
            f1 = f1_without(torch.topk(credit, k).indices, c)
            row[name] = f1_0 - f1
            drops[name].append(f1_0 - f1)
        rnd = [f1_0 - f1_without(torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(100 + s))[:k], c)
               for s in range(random_seeds)]
        row["random"] = sum(rnd) / len(rnd)
        drops["random"].append(row["random"])
        rows.append(row)
    return {"k": k, "mean_f1_drop": {n: sum(v) / max(1, len(v)) for n, v in drops.items()}, "rows": rows}
