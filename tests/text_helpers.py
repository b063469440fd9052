"""Shared synthetic text fixtures: a planted-word black box and short sentences."""
from __future__ import annotations

import random

import torch

FILLER = ("the movie plot was long and the acting felt quite flat but some scenes had a certain charm "
          "while music came from an old film about people in a small town").split()


def planted_word_blackbox(word: str = "great", p: float = 0.95):
    """list[str] -> probs [N, 2]: class 1 with prob ``p`` iff ``word`` is one of the words."""
    def predict(texts):
        hit = torch.tensor([word in t.split() for t in texts], dtype=torch.float32)
        p1 = hit * p + (1 - hit) * (1 - p)
        return torch.stack([1 - p1, p1], 1)
    from fex.targets.text import TextCallable

    return TextCallable(predict)


def synthetic_sentences(n: int, seed: int = 0, word: str = "great", frac_planted: float = 1.0,
                        min_len: int = 4, max_len: int = 12) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(min_len, max_len))]
        if rng.random() < frac_planted:
            words.insert(rng.randint(0, len(words)), word)
        out.append(" ".join(words))
    return out


def planted_great(texts):
    """Module-level planted-word target for configs (target=text_callable target.model.path=...)."""
    hit = torch.tensor([("great" in t.split()) or ("good" in t.split()) for t in texts], dtype=torch.float32)
    p1 = hit * 0.95 + (1 - hit) * 0.05
    return torch.stack([1 - p1, p1], 1)


def small_text_explainer(dim: int = 32, hidden: int = 32, init_bias: float = 0.0, max_length: int = 128,
                         blackbox=None, lr: float = 3e-3, val_auc_examples: int = 0):
    """A word-embedding text explainer over words, built the one way explainers are built."""
    from fex.explainer import build_explainer

    return build_explainer({
        "masker": {"_target_": "fex.maskers.text.WordMasker", "max_length": max_length},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": hidden, "init_bias": init_bias,
                   "backbone": {"_target_": "fex.policy.text.WordEmbeddingBackbone", "dim": dim}},
        "objective": {}, "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": lr},
        "num_classes": 2, "val_auc_examples": val_auc_examples}, blackbox=blackbox)
