"""Bayesian information-theoretic attribution (fex.tda.information): known answers.

* Single examples: signed information agrees with exact influence (L2 softmax regression, exact Hessian).
* Closed forms: the Sherman-Morrison single-example score and the greedy running total equal the
  entropy change computed from explicitly inverted posterior precisions.
* Subsets: with planted near-duplicates the greedy subset holds fewer duplicates than top-k influence.
* Invariances: chunk size and storing the features change nothing.
"""
from __future__ import annotations

import math

import pytest
import torch

from fex.errors import ConfigError
from fex.tda import ExactSolver, FullSampler, Influence, LossModel, top_k
from fex.tda.evaluation import fit_softmax, spearman, synthetic_softmax
from fex.tda.information import InformationAttributor
from tests.conftest import compose

L2 = 0.05


def _problem(n=200, d=5, classes=3, seed=0):
    xtr, ytr, xte, yte = synthetic_softmax(n, d, classes, seed)
    return LossModel(fit_softmax(xtr, ytr, classes, L2), "last"), xtr, ytr, xte, yte


def _influence(lm, x, y):
    return Influence(lm, FullSampler(), lambda m, z, yy, w: ExactSolver(m, z, yy, w, damping=L2)).fit(x, y)


def _noise():
    """The shipped default (conf/tda_method/information.yaml): the tests check what users get."""
    return float(compose("tda", ["tda_method=information"]).tda_method.noise)


# --------------------------------------------------------------------------- single examples
@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_single_example_information_agrees_with_exact_influence(mode):
    """Spearman >= 0.9 with exact-Hessian influence, averaged over 10 queries, on 3 problems."""
    for seed in range(3):
        lm, x, y, xte, yte = _problem(seed=seed)
        infl = _influence(lm, x, y).scores(xte[:10], yte[:10])
        info = InformationAttributor(lm, damping=L2, mode=mode, noise=_noise()).fit(x, y).scores(xte[:10], yte[:10])
        rho = sum(spearman(a, b) for a, b in zip(info, infl)) / len(info)
        assert rho >= 0.9, (seed, mode, rho)


def _precision(lm, x, y, noise, drop=()):
    g = lm.grads(x, y).double() / math.sqrt(noise)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[list(drop)] = False
    return g[keep].T @ g[keep] + len(y) * L2 * torch.eye(lm.dim, dtype=torch.double)


def test_information_loss_equals_explicit_entropy_change():
    """1/2 log(v_{-S}/v) from explicitly inverted precisions: single examples and a greedy subset."""
    lm, x, y, xte, yte = _problem(n=60, d=3)
    att = InformationAttributor(lm, damping=L2, mode="exact", noise=0.3).fit(x, y)
    phi_q = lm.grads(xte[:1], yte[:1]).double()[0]

    def v(drop=()):
        return float(phi_q @ torch.linalg.solve(_precision(lm, x, y, 0.3, drop), phi_q))

    s = att.scores(xte[:1], yte[:1])[0]
    for i in (0, 7, 31):
        assert abs(s[i]) == pytest.approx(0.5 * math.log(v([i]) / v()), rel=1e-8)
    assert torch.allclose(att.self_information(),
                          torch.stack([0.5 * torch.log(1 / (1 - att.h[i])) for i in range(60)]))
    sel = att.select(xte[:1], yte[:1], k=5)[0]
    assert float(sel["total"]) == pytest.approx(0.5 * math.log(v(sel["indices"].tolist()) / v()), rel=1e-8)
    psi_q, _ = att.query_vectors(xte[:1], yte[:1])
    assert att.subset_information(psi_q[0], sel["indices"]) == pytest.approx(float(sel["total"]), rel=1e-8)
    # each greedy step took the largest marginal loss: no single swap of the first pick does better
    first = int(sel["indices"][0])
    assert abs(float(s[first])) == pytest.approx(float(s.abs().max()))


def test_relaxed_information_gain_equals_explicit_prior_update():
    """relaxed: -1/2 log(v_{+S}/v_0) under the prior N(0, (N lambda)^-1 I) with noise variance."""
    lm, x, y, xte, yte = _problem(n=60, d=3)
    noise = 0.3
    att = InformationAttributor(lm, damping=L2, mode="relaxed", noise=noise).fit(x, y)
    g = lm.grads(x, y).double() / math.sqrt(noise)
    phi_q = lm.grads(xte[:1], yte[:1]).double()[0]
    prior = 60 * L2 * torch.eye(lm.dim, dtype=torch.double)

    def v(add=()):
        a = prior + g[list(add)].T @ g[list(add)]
        return float(phi_q @ torch.linalg.solve(a, phi_q))

    s = att.scores(xte[:1], yte[:1])[0]
    for i in (0, 7, 31):
        assert abs(s[i]) == pytest.approx(0.5 * math.log(v() / v([i])), rel=1e-8)
    sel = att.select(xte[:1], yte[:1], k=5)[0]
    assert float(sel["total"]) == pytest.approx(0.5 * math.log(v() / v(sel["indices"].tolist())), rel=1e-8)


def test_sign_follows_influence_and_top_k_interface():
    lm, x, y, xte, yte = _problem()
    att = InformationAttributor(lm, damping=L2).fit(x, y)
    s = att.scores(xte[:3], yte[:3])
    psi_q, _ = att.query_vectors(xte[:3], yte[:3])
    b = psi_q @ att.psi.double().T  # tangent-space influence
    assert torch.equal(torch.sign(s), torch.sign(b))
    tk = top_k(s[0], 4)
    assert s[0, tk["helpful"][0]] == s[0].max() and s[0, tk["harmful"][0]] == s[0].min()
    g = att.group_scores(xte[:5], yte[:5])
    assert g.shape == (len(y),)


# --------------------------------------------------------------------------- subsets: near-duplicates
def _duplicated(seed, copies=9, groups=10):
    """The query's `groups` most influential training examples, each planted `copies` more times (tiny noise)."""
    xtr, ytr, xte, yte = synthetic_softmax(300, 5, 3, seed)
    q, yq = xte[:1], yte[:1]
    lm0 = LossModel(fit_softmax(xtr, ytr, 3, L2), "last")
    top = torch.topk(_influence(lm0, xtr, ytr).scores(q, yq)[0].abs(), groups).indices
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([xtr, xtr[top].repeat_interleave(copies, 0)
                   + 0.01 * torch.randn(groups * copies, 5, generator=g, dtype=torch.double)])
    y = torch.cat([ytr, ytr[top].repeat_interleave(copies)])
    group = torch.cat([torch.arange(len(ytr)), top.repeat_interleave(copies)])  # the original each copy came from
    return LossModel(fit_softmax(x, y, 3, L2), "last"), x, y, q, yq, group


def _redundant(idx, group):
    """Selected examples that repeat a group already selected (0 = all distinct)."""
    return len(idx) - len(group[idx].unique())


def test_greedy_subset_picks_fewer_duplicates_than_top_k_influence():
    """Exact mode (the subset method; the relaxed retrieval mode diversifies less, docs/tda_information.md)."""
    mode = "exact"
    for seed in range(3):
        lm, x, y, q, yq, group = _duplicated(seed)
        infl = _influence(lm, x, y).scores(q, yq)[0]
        att = InformationAttributor(lm, damping=L2, mode=mode, noise=_noise()).fit(x, y)
        for k in (10, 50):
            by_influence = _redundant(top_k(infl.abs(), k)["helpful"], group)
            by_subset = _redundant(att.select(q, yq, k)[0]["indices"], group)
            assert by_influence >= 0.5 * k, (seed, k, by_influence)  # the plant works: influence's top-k is mostly copies
            assert by_subset < by_influence, (mode, seed, k, by_subset, by_influence)


# --------------------------------------------------------------------------- invariances and errors
@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_chunking_storing_and_pool_change_nothing(mode):
    lm, x, y, xte, yte = _problem(n=90)
    a = InformationAttributor(lm, damping=L2, mode=mode, chunk_size=7).fit(x, y)
    b = InformationAttributor(lm, damping=L2, mode=mode, chunk_size=1000, store=False).fit(x, y)
    assert torch.allclose(a.scores(xte[:4], yte[:4]), b.scores(xte[:4], yte[:4]), atol=1e-10)
    assert b.gradients > a.gradients == 90  # store=False recomputes per call
    full = a.select(xte[:1], yte[:1], k=4)[0]["indices"]
    a.pool = 40
    assert torch.equal(a.select(xte[:1], yte[:1], k=4)[0]["indices"], full)


def test_information_refuses_bad_settings():
    lm, x, y, _, _ = _problem(n=30)
    with pytest.raises(ConfigError, match="max_params"):
        InformationAttributor(lm, mode="exact", max_params=lm.dim - 1)
    with pytest.raises(ConfigError, match="mode"):
        InformationAttributor(lm, mode="approximate")
    with pytest.raises(ConfigError, match="damping"):
        InformationAttributor(lm, damping=0)
    with pytest.raises(ConfigError, match="noise"):
        InformationAttributor(lm, noise=-1)
    att = InformationAttributor(lm, damping=L2, pool=3).fit(x, y)
    with pytest.raises(ConfigError, match="pool"):
        att.select(x[:1], y[:1], k=5)


# --------------------------------------------------------------------------- the task
def test_tda_information_task_writes_scores_and_subsets(tmp_path):
    from fex.tasks.tda import tda

    cfg = compose("tda", ["tda_method=information", "tda.train_limit=600", "tda.test_examples=[0,1,2,3]",
                          "tda.top_k=3"], tmp_path)
    metrics, obj = tda(cfg)
    assert obj["scores"].shape == (4, 600) and len(obj["subsets"]) == 4
    assert metrics["tda/method"] == "information" and metrics["tda/params"] == 1290 and metrics["tda/gradients"] == 600
    # the real target: agrees with exact influence. 600 digits and 4 inputs, because one run's Spearman over
    # 300 digits and 2 inputs spread 0.42-0.61 across targets (docs/tda_information.md); here 0.65-0.72
    assert 0.5 <= metrics["tda/spearman_vs_exact_full"] <= 1.0
    assert metrics["tda/pearson_vs_exact_full"] >= 0.75  # 0.87-0.92 on the same four targets
    assert (tmp_path / "influence.png").is_file() and (tmp_path / "scores.npz").is_file()
