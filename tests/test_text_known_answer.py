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
