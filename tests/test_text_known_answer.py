"""Known answer: a text black box that depends only on the planted word "great"."""
from __future__ import annotations


import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from functools import partial

from fex import BlackBox, ExplainerModule
from fex.maskers.text import WordMasker
from fex.objective import FexObjective
from fex.policy import Policy
from fex.policy.text import WordEmbeddingBackbone
from fex.data.text import TextCollate, TextDataset
from tests.text_helpers import planted_word_blackbox, small_text_explainer, synthetic_sentences



def test_planted_word_ranked_first(one_thread):
    pl.seed_everything(0)
    train = synthetic_sentences(640, seed=0)
    loader = DataLoader(TextDataset(train, torch.zeros(len(train), dtype=torch.long)), batch_size=32, shuffle=True,
                        collate_fn=TextCollate(None, 32))
    bb = BlackBox(planted_word_blackbox("great"), output="probs", num_classes=2)
    module = small_text_explainer(dim=32, hidden=32, max_length=32, blackbox=bb, lr=3e-3)
    masker = module.masker
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)

    test = synthetic_sentences(200, seed=1)  # unseen sentences, "great" at random positions
    out = module.explain(masker.encode(test))
    assert (out["target"] == 1).all()
    planted = torch.tensor([t.split().index("great") for t in test])
    top1 = (out["scores"].argmax(1) == planted).float().mean().item()
    assert top1 >= 0.95, f"planted word ranked first for only {top1:.1%} of inputs"
    # the planted word is clearly kept, filler words clearly dropped
    s = out["scores"]
    assert s[torch.arange(len(test)), planted].mean() > 0.8
    others = out["valid"].clone()
    others[torch.arange(len(test)), planted] = False
    assert s[others].mean() < 0.3


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors without ties."""
    from fex.metrics import pearson

    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(pearson(ra[None], rb[None])[0])


def test_bag_of_words_weights_recovered(one_thread):
    """Known answer: an additive bag-of-words classifier with known per-word weights (p = 1/2 + 0.06 sum w).
    The Banzhaf value of each word is 0.06 w (sign by explained class), which the regression
    estimator's logit read-out (tau * theta) targets: per sentence, Spearman >= 0.9 with the weights."""
    from tests.text_helpers import bow_blackbox, bow_sentences, bow_weights

    pl.seed_everything(0)
    weights = bow_weights(seed=0)
    masker = WordMasker(max_length=32)
    train = bow_sentences(640, seed=0)
    loader = DataLoader(TextDataset(train, torch.zeros(len(train), dtype=torch.long)), batch_size=32, shuffle=True,
                        collate_fn=TextCollate(None, 32))
    bb = BlackBox(bow_blackbox(weights), output="probs", num_classes=2)
    objective = FexObjective(estimator="regression", reward="prob", temperature=0.05, num_samples=4,
                             attribution="logit")
    module = ExplainerModule(Policy(WordEmbeddingBackbone(dim=32), num_classes=2, hidden=32), masker, objective,
                             partial(torch.optim.Adam, lr=3e-3), bb, val_auc_examples=0)
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)

    test = bow_sentences(200, seed=1)  # unseen sentences (other word sets and orders)
    out = module.explain(masker.encode(test))
    rho = []
    for i, text in enumerate(test):
        sign = 1.0 if int(out["target"][i]) == 1 else -1.0
        w = torch.tensor([sign * weights[word] for word in text.split()])
        rho.append(_spearman(out["scores"][i, : len(w)], w))
    mean = sum(rho) / len(rho)
    assert mean >= 0.9, f"mean per-sentence Spearman {mean:.3f} < 0.9"
    # the logit read-out is in reward units: tau * theta -> the Banzhaf value 0.06 * w. After 80 steps it is
    # still shrunk towards 0 (slope ~0.6 measured), so only the scale is checked here, not convergence.
    scores = torch.cat([out["scores"][i, : len(t.split())] for i, t in enumerate(test)])
    truth = torch.cat([torch.tensor([(1.0 if int(out["target"][i]) == 1 else -1.0) * 0.06 * weights[word]
                                     for word in t.split()]) for i, t in enumerate(test)])
    slope = float((scores * truth).sum() / (truth * truth).sum())
    assert 0.3 < slope < 1.5, f"read-out / Banzhaf value slope {slope:.2f}"


def test_linear_bow_black_box_effects_are_exact():
    """The known-answer target of benchmarks/known_text.py: its log-odds is additive over whitespace words
    (punctuation-only words count 0, a masked word counts 0), so each word's effect is exact."""
    import numpy as np

    from tests.text_helpers import linear_bow

    words = "Extreme Ops exceeds expectations. Good fun, good action -- Shainberg's film".split()
    e = linear_bow.effects(words)
    assert e[1] != 0 and e[4] == linear_bow.effects(["good"])[0] and e[8] == 0  # "Good" = "good"; "--" has no token
    full = linear_bow.log_odds([" ".join(words)])[0]
    np.testing.assert_allclose(full, e.sum(), atol=1e-9)
    for i in range(len(words)):  # removing or masking word i changes the log-odds by exactly e_i
        rest = [" ".join(words[:i] + words[i + 1:]), " ".join(words[:i] + ["[MASK]"] + words[i + 1:])]
        np.testing.assert_allclose(full - linear_bow.log_odds(rest), e[i], atol=1e-9)
    p = linear_bow([" ".join(words)])
    np.testing.assert_allclose(np.log(p[0, 1] / p[0, 0]), full, atol=1e-9)
    np.testing.assert_allclose(linear_bow.effects(words, cls=0), -e)


def test_embedding_bow_black_box_effects_are_exact_and_shared_by_word_pieces():
    """The second known-answer target of benchmarks/known_text.py: its log-odds is a sum of per-word effects
    (a masked word counts 0), each word's effect is the fixed linear function of the mean of its MiniLM
    word-piece embeddings (so words sharing pieces share effects), and occlusion through the black box
    wrapper recovers every effect exactly (logit p - logit p without word i = e_i)."""
    import numpy as np

    from fex.methods.baselines import FeatureAblation
    from fex.targets.text import TextCallable
    from tests.text_helpers import embedding_bow

    words = "Extreme Ops exceeds expectations. Good fun, good action -- Shainberg's film".split()
    e = embedding_bow.effects(words)
    assert len(set(np.round(e, 9).tolist())) == len(set(w.lower() for w in words))  # distinct words, distinct effects
    assert e[4] == embedding_bow.word_effect("good") == embedding_bow.word_effect("GOOD")  # uncased pieces
    # "fun," is the mean of its pieces "fun" and ","; the effect is linear in that mean
    np.testing.assert_allclose(e[5], (embedding_bow.word_effect("fun") + embedding_bow.word_effect(",")) / 2, atol=1e-12)
    single = np.array([embedding_bow.word_effect(w) for w in "the a good bad film movie and of".split()])
    assert 0.05 < single.std() < 2.0 and np.abs(single).max() < 5.0  # the N(0, 0.5^2)-like scale of one-piece words
    full = embedding_bow.log_odds([" ".join(words)])[0]
    np.testing.assert_allclose(full, e.sum(), atol=1e-9)
    for i in range(len(words)):  # removing or masking word i changes the log-odds by exactly e_i
        rest = [" ".join(words[:i] + words[i + 1:]), " ".join(words[:i] + ["[MASK]"] + words[i + 1:])]
        np.testing.assert_allclose(full - embedding_bow.log_odds(rest), e[i], atol=1e-9)
    np.testing.assert_allclose(embedding_bow.effects(words, cls=0), -e)

    bb = BlackBox(TextCallable(embedding_bow), output="probs", num_classes=2)
    masker = WordMasker(max_length=64)
    x = masker.encode([" ".join(words), "a quietly moving film that never quite earns its ending"])
    for cls in (0, 1):
        target = torch.full((2,), cls)
        occ = FeatureAblation(bb, masker).attribute(x, target).double()  # p(cls) - p(cls | word i masked)
        for i, ws in enumerate(x["words"]):
            p = float(embedding_bow([x["text"][i]])[0, cls])
            p_without = p - occ[i, : len(ws)].numpy()
            recovered = np.log(p / (1 - p)) - np.log(p_without / (1 - p_without))
            np.testing.assert_allclose(recovered, embedding_bow.effects(ws, cls), atol=1e-4)


@pytest.mark.slow
def test_text_preset_recovers_linear_bow_effects_on_real_sentences(tmp_path):
    """Known answer on real sentences (benchmarks/known_text.py, shrunk): the text preset (its policy, masker,
    objective, epochs) trained on 1,000 Rotten Tomatoes training snippets against the linear bag-of-words black box.
    On 100 test snippets occlusion is exact (Spearman 1: an additive log-odds), random scores are uncorrelated,
    and fex's word ranking agrees with the true effects well above chance (the full recipe: the benchmark)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import known_text
    from fex.baselines import FeatureAblation, Fex, RandomAttribution

    cfg, metrics, objects = known_text.train_preset("text_rt", tmp_path, ["data.limit=1000", "logger=none",
                                                                     "trainer.limit_val_batches=1", "val_auc_examples=8"])
    explainer, bb = objects["explainer"], objects["blackbox"]
    model = known_text.known_target(cfg)
    texts = known_text.held_out_snippets(cfg.data, explainer.masker, model, 100)
    assert len(texts) == 100
    rows = known_text.known_answer_rows({"fex": Fex(bb, explainer=explainer),
                                         "occlusion": FeatureAblation(bb, explainer.masker),
                                         "random": RandomAttribution(bb, explainer.masker, seed=0)}, bb, explainer.masker,
                                        texts, model)
    got = {r["method"]: r["spearman"] for r in rows}
    assert got["occlusion"] > 0.999, got
    assert abs(got["random"]) < 0.1, got
    # measured 0.604 with the banked text_rt on these 1,000 snippets (2026-12-06; the one-epoch preset, today's
    # text_rt_quick, measured 0.47; the full split: 0.820, benchmarks/RESULTS_known_text.md). The margin below
    # 0.604 allows for training that is not bit-reproducible across machines; 0.47 would fail it.
    assert got["fex"] >= 0.5, got
