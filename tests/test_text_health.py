"""PolicyHealth: the collapse of issue 9 (the paper's reward on a two-class text target keeps no
words) is reproduced on a planted-word black box and reported; a healthy run is not."""
from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fex import BlackBox, ExplainerModule
from fex.callbacks import PolicyHealth, health_summary, tied_fraction
from fex.data.text import TextCollate, TextDataset
from fex.maskers.text import WordMasker
from fex.objective import FexObjective
from fex.policy import Policy
from fex.policy.text import WordEmbeddingBackbone
from fex.tasks.train import summary_line
from tests.text_helpers import planted_word_blackbox, synthetic_sentences



def test_tied_fraction_known_values():
    s = torch.tensor([[0.2, 0.2, 0.2], [0.1, 0.9, 0.0], [0.5, 0.5, 7.0]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]]).bool()  # row 3: 7.0 is padding
    assert tied_fraction(s, valid).item() == pytest.approx(2 / 3)
    assert tied_fraction(s).item() == pytest.approx(1 / 3)
    one = torch.tensor([[1, 0, 0], [1, 1, 0]]).bool()  # row 1 has < 2 features: it does not count
    assert tied_fraction(s[:2], one).item() == pytest.approx(0.0)
    per_class = torch.stack([s, torch.zeros_like(s)], -1)  # [B, F, C=2]: class 1 is all ties
    assert tied_fraction(per_class, valid).item() == pytest.approx((2 + 3) / 6)


def test_symptoms_and_verdict():
    h = PolicyHealth(patience=1)
    assert h.symptoms({"mask_frac": 0.3, "entropy": 0.5, "tied_frac": 0.0}) == {}
    assert set(h.symptoms({"mask_frac": 0.0, "entropy": 0.001, "tied_frac": 1.0})) == {"mask_frac", "entropy", "tied"}
    assert "every feature" in h.symptoms({"mask_frac": 0.995})["mask_frac"]
    assert h.verdict() == "ok"
    with pytest.raises(ValueError):
        PolicyHealth(action="panic")


def _train(target, objective, epochs, health):
    pl.seed_everything(0)
    masker = WordMasker(max_length=32)
    texts = synthetic_sentences(320, seed=0)
    loader = DataLoader(TextDataset(texts, torch.zeros(len(texts), dtype=torch.long)), batch_size=32, shuffle=True,
                        collate_fn=TextCollate(None, 32))
    module = ExplainerModule(Policy(WordEmbeddingBackbone(dim=32), num_classes=2, hidden=32), masker, objective,
                             partial(torch.optim.Adam, lr=3e-3), BlackBox(target, output="probs", num_classes=2),
                             val_auc_examples=0)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", callbacks=[health])
    trainer.fit(module, loader)
    return trainer, module


def test_paper_reward_collapses_on_binary_text_and_the_guard_fires(one_thread, caplog):
    """A two-class classifier unsure (p = 0.5) of a text without the planted word: the paper's reward
    p * F / (sum(m) + 1) is largest for the empty mask (0.5 F > 0.95 F / 2), so the policy learns to keep
    nothing while its reward rises. PolicyHealth must say so in the log and the summary line."""
    health = PolicyHealth(every_n_steps=2, patience=3)
    with caplog.at_level("WARNING", logger="fex"):
        trainer, module = _train(planted_word_blackbox("great", p=0.95, absent=0.5), FexObjective(reward="fex"),
                                 6, health)
    assert health.last["mask_frac"] < 0.01  # the collapse itself
    assert "mask_frac" in health.problems and health.degenerate
    assert "keep no features" in health.problems["mask_frac"]["message"]
    assert any("degenerate policy" in r.getMessage() for r in caplog.records)
    assert float(trainer.callback_metrics["health/degenerate"]) == 1.0
    summary = health_summary(trainer)
    assert summary["policy_health"].startswith("DEGENERATE")
    line = summary_line({"checkpoint": "x.ckpt", "train/queries": 10, "train/seconds": 1.0, **summary})
    assert "policy DEGENERATE (masks keep no features" in line


def test_meaningful_policy_is_not_called_degenerate(one_thread):
    """Control: the planted-word target whose empty text is confidently class 0 (the known-answer
    setting). The policy keeps the planted word, so no mask-fraction or tie alarm."""
    health = PolicyHealth(every_n_steps=2, patience=3)
    _train(planted_word_blackbox("great", p=0.95), FexObjective(reward="fex"), 6, health)
    assert 0.05 < health.last["mask_frac"] < 0.5
    assert not health.degenerate, health.verdict()
    assert not health.verdict().startswith("DEGENERATE")
