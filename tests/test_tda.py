"""Training-data attribution (fex.tda): known answers.

* LiSSA (dattri) against the direct solve of (H + lambda I)^-1 v.
* Influence scores against exact leave-one-out retraining of L2 softmax regression.
* Samplers: their documented allocation and weights on planted data.
* Streaming: chunk size changes nothing; scores equal the dense formula.
* The LossModel's gradients match autograd through the real model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fex.tda import (ExactSolver, FeatureSampler, FullSampler, IdentitySolver, Influence, LissaSolver, LogitSampler,
                     LossModel, UniformSampler, top_k)
from fex.tda.evaluation import (detection_rate, fit_softmax, flip_labels, hessian_error, loo_check, pearson,
                                spearman, synthetic_softmax)
from fex.errors import ConfigError
from fex.tda.samplers import largest_remainder, strata, subset_size
from tests.conftest import compose


def _problem(n=80, d=4, classes=3, l2=0.1, seed=0):
    xtr, ytr, xte, yte = synthetic_softmax(n, d, classes, seed)
    lin = fit_softmax(xtr, ytr, classes, l2)
    return LossModel(lin, "last"), xtr, ytr, xte, yte


# --------------------------------------------------------------------------- IHVPs
def test_lissa_full_batch_equals_direct_solve():
    """With the whole set per HVP LiSSA is a Neumann series: it converges to the damped solve."""
    lm, x, y, xte, yte = _problem()
    v = lm.grads(xte[:3], yte[:3])
    exact = ExactSolver(lm, x, y, None, damping=0.1).solve(v)
    approx = LissaSolver(lm, x, y, None, damping=0.1, depth=400, batch_size=None).solve(v)
    assert float((approx - exact).norm() / exact.norm()) < 1e-6


def test_lissa_minibatch_close_to_direct_solve():
    lm, x, y, xte, yte = _problem()
    v = lm.grads(xte[:2], yte[:2])
    exact = ExactSolver(lm, x, y, None, damping=0.1).solve(v)
    approx = LissaSolver(lm, x, y, None, damping=0.1, depth=300, batch_size=20, repeats=4, seed=1).solve(v)
    assert float((approx - exact).norm() / exact.norm()) < 0.15


def test_exact_solver_inverts_damped_hessian():
    lm, x, y, _, _ = _problem()
    h = lm.hessian(x, y)
    v = torch.randn(5, lm.dim, dtype=torch.double)
    sol = ExactSolver(lm, x, y, None, damping=0.3).solve(v)
    assert torch.allclose(sol @ (h + 0.3 * torch.eye(lm.dim, dtype=torch.double)), v, atol=1e-9)


def test_exact_solver_refuses_large_subsets():
    lm, x, y, _, _ = _problem()
    with pytest.raises(ConfigError, match="max_params"):
        ExactSolver(lm, x, y, None, max_params=lm.dim - 1)


# --------------------------------------------------------------------------- LOO known answer
def test_influence_matches_leave_one_out_retraining():
    r = loo_check(n=60, d=4, classes=3, l2=0.05, seed=0)
    assert r["pearson"] >= 0.9 and r["spearman"] >= 0.9, r
    assert r["max_abs_change"] > 1e-3  # retraining did move the test loss


# --------------------------------------------------------------------------- streaming
def test_scores_stream_in_chunks_and_match_dense_formula():
    lm, x, y, xte, yte = _problem(n=70)
    solver = lambda m, z, yy, w: ExactSolver(m, z, yy, w, damping=0.1)  # noqa: E731
    a = Influence(lm, FullSampler(), solver, chunk_size=7).fit(x, y).scores(xte[:4], yte[:4])
    b = Influence(lm, FullSampler(), solver, chunk_size=1000).fit(x, y).scores(xte[:4], yte[:4])
    h = lm.hessian(x, y) + 0.1 * torch.eye(lm.dim, dtype=torch.double)
    dense = lm.grads(xte[:4], yte[:4]) @ torch.linalg.inv(h) @ lm.grads(x, y).T
    assert torch.allclose(a, b, atol=1e-10) and torch.allclose(a, dense, atol=1e-8)
    tk = top_k(a[0], 3)
    assert a[0, tk["helpful"][0]] == a[0].max() and a[0, tk["harmful"][0]] == a[0].min()


def test_relatif_and_unit_aggregate_match_their_dense_formulas():
    """RelatIF divides each column by sqrt(self-influence); ``unit`` averages unit-normalised queries;
    with the identity solver RelatIF is the gradient cosine times the query norm."""
    lm, x, y, xte, yte = _problem(n=70)
    solver = lambda m, z, yy, w: ExactSolver(m, z, yy, w, damping=0.1)  # noqa: E731
    raw = Influence(lm, FullSampler(), solver, chunk_size=9).fit(x, y)
    rel = Influence(lm, FullSampler(), solver, chunk_size=9, normalize="relatif").fit(x, y)
    a = rel.scores(xte[:4], yte[:4])
    assert torch.allclose(a, raw.scores(xte[:4], yte[:4]) / raw.self_influence().sqrt(), atol=1e-10)
    assert torch.allclose(rel.scores(xte[:4], yte[:4]), a, atol=1e-12)  # cached self-influence, same answer
    hinv = torch.linalg.inv(lm.hessian(x, y) + 0.1 * torch.eye(lm.dim, dtype=torch.double))
    g, gt = lm.grads(x, y), lm.grads(xte[:5], yte[:5])
    unit = (gt @ hinv / ((gt @ hinv) * gt).sum(1, keepdim=True).sqrt()).mean(0) @ g.T
    assert torch.allclose(raw.group_scores(xte[:5], yte[:5], "unit"), unit, atol=1e-10)
    mean_loss = lm.mean_grad(xte[:5], yte[:5]) @ hinv @ g.T
    assert torch.allclose(raw.group_scores(xte[:5], yte[:5]), mean_loss, atol=1e-10)
    cos = Influence(lm, FullSampler(), lambda m, z, yy, w: IdentitySolver(m, z, yy, w, damping=0.1),
                    normalize="relatif").fit(x, y).scores(xte[:3], yte[:3])
    want = F.cosine_similarity(gt[:3, None, :], g[None, :, :], dim=-1) * gt[:3].norm(dim=1, keepdim=True) / 0.1 ** 0.5
    assert torch.allclose(cos, want, atol=1e-10)
    with pytest.raises(ConfigError, match="normalize"):
        Influence(lm, FullSampler(), solver, normalize="cosine")
    with pytest.raises(ConfigError, match="aggregate"):
        raw.group_scores(xte[:5], yte[:5], "max")


def test_self_influence_flags_flipped_labels():
    """Planted mislabels on a well-separated problem are the top self-influence examples."""
    xtr, ytr, _, _ = synthetic_softmax(200, 4, 3, seed=3, noise=0.2)
    y2, flipped = flip_labels(ytr, 3, fraction=0.05, seed=0)
    lm = LossModel(fit_softmax(xtr, y2, 3, 0.05), "last")
    infl = Influence(lm, FullSampler(), lambda m, z, y, w: ExactSolver(m, z, y, w, damping=0.05)).fit(xtr, y2)
    assert detection_rate(infl.self_influence(), flipped, top=0.1) >= 0.6  # random ranking: 0.1


# --------------------------------------------------------------------------- samplers
def test_subset_size_and_largest_remainder():
    assert subset_size(0.1, 35) == 4 and subset_size(7, 35) == 7 and subset_size(100, 35) == 35
    alloc = largest_remainder(torch.tensor([50, 30, 20]), 10)
    assert alloc.tolist() == [5, 3, 2]
    alloc = largest_remainder(torch.tensor([1, 1, 98]), 3)
    assert int(alloc.sum()) == 3 and (alloc <= torch.tensor([1, 1, 98])).all()


def test_logit_sampler_is_proportional_by_class_and_confidence():
    g = torch.Generator().manual_seed(0)
    n = 1000
    pred = torch.cat([torch.zeros(600), torch.ones(400)]).long()
    conf = torch.rand(n, generator=g) * 0.45 + 0.5
    probs = torch.stack([torch.where(pred == 0, conf, 1 - conf), torch.where(pred == 0, 1 - conf, conf)], 1)
    sid = strata(probs.double(), bins=4)
    assert len(sid.unique()) == 8 and sid.bincount().tolist() == [150] * 4 + [100] * 4  # equal-count bins
    idx, w = LogitSampler(size=100, bins=4).sample(n, probs=probs, seed=1)
    assert len(idx) == 100 and len(idx.unique()) == 100
    assert sid[idx].bincount().tolist() == [15] * 4 + [10] * 4  # proportional to the strata
    assert torch.allclose(w.sum(), torch.tensor(float(n)))  # stratified weights N_h / n_h sum to N
    assert not torch.equal(idx, LogitSampler(size=100, bins=4).sample(n, probs=probs, seed=2)[0])


def test_feature_sampler_covers_planted_clusters_with_cell_weights():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    sizes = [500, 60, 5]
    f = torch.cat([c + 0.1 * torch.randn(s, 2, generator=g) for c, s in zip(centers, sizes)])
    cluster = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    for seed in range(5):
        idx, w = FeatureSampler(size=3).sample(len(f), features=f, seed=seed)
        assert sorted(cluster[idx].tolist()) == [0, 1, 2]  # D^2 sampling reaches the tiny cluster
        assert sorted(w.tolist()) == sorted(float(s) for s in sizes)  # weight = Voronoi cell size


def test_uniform_and_full_samplers():
    idx, w = UniformSampler(0.25).sample(40, seed=0)
    assert len(idx) == 10 and len(idx.unique()) == 10 and (w == 1).all()
    idx, w = FullSampler().sample(40)
    assert idx.tolist() == list(range(40))


def test_hessian_error_zero_for_whole_set_and_shrinks_with_size():
    lm, x, y, _, _ = _problem(n=300)
    probs = lm.logits(lm.theta0, x).softmax(-1)
    res = hessian_error(lm, x, y, {"full": FullSampler(), "logit_all": LogitSampler(size=300),
                                   "u30": UniformSampler(30), "u150": UniformSampler(150)},
                        seeds=[0, 1, 2], probs=probs, features=x)
    assert res["full"]["mean"] < 1e-12 and res["logit_all"]["mean"] < 1e-12
    assert res["u150"]["mean"] < res["u30"]["mean"]


# --------------------------------------------------------------------------- model plumbing
def test_loss_model_gradients_match_autograd_on_a_cnn():
    from fex.targets.mnist_cnn import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN()
    net(torch.zeros(1, 1, 28, 28))
    net.eval()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 4, 7])
    for params, names in (("last", ["net.10.weight", "net.10.bias"]), (["net.7"], ["net.7.weight", "net.7.bias"])):
        lm = LossModel(net, params)
        assert lm.names == names
        g = lm.grads(lm.prepare(x), y)
        ref = []
        for i in range(3):
            net.zero_grad()
            F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
            ref.append(torch.cat([dict(net.named_parameters())[n].grad.reshape(-1) for n in names]))
        assert torch.allclose(g, torch.stack(ref), atol=1e-5)


def test_loss_model_refuses_models_without_linear_logits():
    from fex.errors import TargetError

    with pytest.raises(TargetError):
        LossModel(nn.Sequential(nn.Flatten(), nn.ReLU()), "last")
    net = nn.Sequential(nn.Linear(3, 2), nn.Softmax(-1))  # the last Linear is not the output
    with pytest.raises(TargetError, match="logits"):
        LossModel(net, "last").prepare(torch.rand(2, 3))


def test_metrics_helpers():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0) and spearman(a, a ** 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    y2, pos = flip_labels(torch.zeros(100, dtype=torch.long), 10, 0.05, seed=0)
    assert len(pos) == 5 and (y2[pos] != 0).all() and (y2.ne(0).sum() == 5)
    s = torch.zeros(100)
    s[pos] = 1.0
    assert detection_rate(s, pos, 0.1) == 1.0


# --------------------------------------------------------------------------- the task
def test_tda_task_writes_table_and_picture(tmp_path):
    from fex.tasks.tda import tda

    cfg = compose("tda", ["tda.train_limit=300", "tda.test_examples=[0,1]", "tda.top_k=3",
                          "tda_solver.depth=50", "tda_sampler.size=60"], tmp_path)
    metrics, obj = tda(cfg)
    assert obj["scores"].shape == (2, 300)
    assert (tmp_path / "influence.png").is_file() and (tmp_path / "table.md").is_file()
    assert metrics["tda/subset_size"] == 60 and metrics["tda/params"] == 1290
    assert -1.0 <= metrics["tda/spearman_vs_exact_full"] <= 1.0


def test_tda_exact_full_reproduces_reference(tmp_path):
    from fex.tasks.tda import tda

    cfg = compose("tda", ["tda.train_limit=200", "tda.test_examples=[3]", "tda_solver=exact", "tda_sampler=full"],
                  tmp_path)
    metrics, _ = tda(cfg)
    assert metrics["tda/spearman_vs_exact_full"] > 0.999


def _options(group):
    from tests.conftest import ROOT

    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("sampler", _options("tda_sampler"))
@pytest.mark.parametrize("solver", _options("tda_solver"))
def test_tda_config_options_compose_and_build(sampler, solver, tmp_path):
    from hydra.utils import instantiate

    extra = ["tda_solver.depth=20"] if solver == "lissa" else []
    cfg = compose("tda", [f"tda_sampler={sampler}", f"tda_solver={solver}", *extra], tmp_path)
    smp = instantiate(cfg.tda_sampler)
    lm, x, y, _, _ = _problem(n=40)
    idx, w = smp.sample(len(x), probs=lm.logits(lm.theta0, x).softmax(-1), features=x, seed=0)
    sol = instantiate(cfg.tda_solver)(lm, x[idx], y[idx], w.double())
    assert sol.solve(torch.ones(1, lm.dim, dtype=torch.double)).shape == (1, lm.dim)


def test_tda_text_preset_composes(tmp_path):
    cfg = compose("tda", ["tda_preset=text"], tmp_path)
    assert cfg.data._target_.endswith("TextDataModule") and cfg.target.model._target_.endswith("minilm_sentiment")


def test_text_last_layer_and_subset_paths_agree():
    """On a tiny random BERT classifier (bundled MiniLM tokenizer), the hook path (last layer on
    captured features) and the functional_call path over token ids give the same gradients."""
    transformers = pytest.importorskip("transformers")
    from fex.maskers.text import resolve_model_path
    from fex.targets.text import HFTextClassifier

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    conf = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32, num_labels=2)
    clf = HFTextClassifier(transformers.BertForSequenceClassification(conf), tok, max_length=16)
    texts, y = ["a great film", "dull and long", "fine"], torch.tensor([1, 0, 1])
    last = LossModel(clf, "last")
    sub = LossModel(clf, ["model.classifier"])
    assert last.names == sub.names == ["model.classifier.weight", "model.classifier.bias"]
    g_last = last.grads(last.prepare(texts), y)
    g_sub = sub.grads(sub.prepare(texts), y)
    assert g_last.shape == (3, 34) and torch.allclose(g_last, g_sub, atol=1e-5)


def test_last_layer_features_keep_row_order_on_a_chunking_text_classifier():
    """HFTextClassifier runs batches larger than its chunk_size as length-sorted chunks (the last layer
    is called once per chunk, rows reordered): the hooked features must still be those of each text,
    in input order (a batch of 256 on MiniLM once failed with a 64-vs-256 shape error)."""
    transformers = pytest.importorskip("transformers")
    from fex.maskers.text import resolve_model_path
    from fex.targets.text import HFTextClassifier

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    conf = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32, num_labels=2)
    clf = HFTextClassifier(transformers.BertForSequenceClassification(conf), tok, max_length=16, chunk_size=2)
    texts = ["a long and rather dull film about nothing", "fine", "great", "not good at all", "ok then"]
    lm = LossModel(clf, "last", chunk_size=256)
    assert lm.chunk_size == 2
    feats = lm.prepare(texts)
    alone = torch.cat([LossModel(clf, "last").prepare([t]) for t in texts])
    assert feats.shape == alone.shape == (5, 16)
    torch.testing.assert_close(feats, alone, atol=1e-5, rtol=1e-5)


def test_text_page_escapes_and_lists_both_kinds(tmp_path):
    from fex.tda.render import render

    t = [{"x": "a <b>great</b> film", "title": "#1 y=fresh", "helpful": [{"x": "lovely & warm", "title": "+0.3"}],
          "harmful": [{"x": "dull", "title": "-0.2"}]}]
    page = render(t, tmp_path).read_text()
    assert "&lt;b&gt;great&lt;/b&gt;" in page and "lovely &amp; warm" in page
    assert page.index("most helpful") < page.index("lovely") < page.index("most harmful") < page.index("dull")
