"""Known answer: a text black box that depends only on the planted word "great"."""
from __future__ import annotations


import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fex import BlackBox
from fex.data.text import TextCollate, TextDataset
from tests.text_helpers import planted_word_blackbox, small_text_explainer, synthetic_sentences


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster than two fighting over a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
