"""Shared synthetic text fixtures: a planted-word black box and short sentences."""
from __future__ import annotations

import random

import torch

FILLER = ("the movie plot was long and the acting felt quite flat but some scenes had a certain charm "
          "while music came from an old film about people in a small town").split()


def planted_word_blackbox(word: str = "great", p: float = 0.95, absent: float | None = None):
    """list[str] -> probs [N, 2]: class 1 with prob ``p`` iff ``word`` is one of the words, else ``absent``
    (default ``1 - p``; ``absent=0.5`` is a binary classifier that is unsure of a text without the word,
    like a real one on an all-masked text)."""
    q = 1 - p if absent is None else absent

    def predict(texts):
        hit = torch.tensor([word in t.split() for t in texts], dtype=torch.float32)
        p1 = hit * p + (1 - hit) * q
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


BOW_VOCAB = ("superb moving witty tender fine decent plain slow bland dull tedious awful "
             "clever flat warm stale").split()


def bow_weights(seed: int = 0) -> dict[str, float]:
    """Distinct known per-word weights in [-1, 1] for :data:`BOW_VOCAB` (shuffled by ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1, 1, len(BOW_VOCAB))[torch.randperm(len(BOW_VOCAB), generator=g)]
    return {word: float(v) for word, v in zip(BOW_VOCAB, w)}


def bow_blackbox(weights: dict[str, float], scale: float = 0.06):
    """An additive bag-of-words classifier: ``p(class 1) = 1/2 + scale * sum of the present words' weights``
    (a masked word contributes nothing). With sentences of at most 1/(2 scale) words it never clips,
    so the Banzhaf value of word i for class 1 is exactly ``scale * w_i`` (``-scale * w_i`` for class 0)."""
    def predict(texts):
        s = torch.tensor([sum(weights.get(w, 0.0) for w in t.split()) for t in texts], dtype=torch.float32)
        p1 = (0.5 + scale * s).clamp(0.0, 1.0)
        return torch.stack([1 - p1, p1], 1)
    from fex.targets.text import TextCallable

    return TextCallable(predict)


def bow_sentences(n: int, seed: int = 0, min_len: int = 5, max_len: int = 8) -> list[str]:
    """Sentences of distinct vocabulary words (each word at most once, so its weight is its effect)."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(BOW_VOCAB, rng.randint(min_len, max_len))) for _ in range(n)]


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


class HashedLinearBow:
    """A linear bag-of-words sentiment model whose per-word effects are known exactly.

    ``logit p(class 1 | text) = sum_t count_t(text) * w[h(t)]``: scikit-learn's ``HashingVectorizer``
    counts (lowercased tokens of >= 2 word characters, hashed into ``2**bits`` buckets) times fixed
    N(0, scale^2) weights, one per bucket. Returns numpy probabilities [N, 2] (``target.output=probs``).
    The masker's mask token is removed before counting: a masked word contributes nothing.

    Tokens never span whitespace, so the log-odds is additive over the masker's features (whitespace
    words): removing word i changes it by exactly :meth:`effects` ``[i]`` (the sum over its tokens; 0 for a
    word with none, like ``"-"``), whatever else is kept. For the log-odds of the explained class that
    is every semivalue of word i (Banzhaf, Shapley, leave-one-out alike); every reward that increases
    with ``p(y_hat)`` (prob, log p) orders a snippet's words the same way when they are removed alone.
    """

    def __init__(self, seed: int = 0, scale: float = 0.5, bits: int = 18, mask_token: str = "[MASK]") -> None:
        import numpy as np
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(n_features=2 ** bits, alternate_sign=False, norm=None)
        self.w = np.random.default_rng(seed).normal(0.0, scale, 2 ** bits)
        self.mask_token = mask_token

    def log_odds(self, texts):
        """The class-1 logit of each text: numpy [N]."""
        return self.vectorizer.transform([t.replace(self.mask_token, " ") for t in texts]) @ self.w

    def __call__(self, texts):
        import numpy as np

        p1 = 1.0 / (1.0 + np.exp(-self.log_odds(list(texts))))
        return np.stack([1.0 - p1, p1], 1)

    def effects(self, words, cls: int = 1):
        """The exact effect of each word on the log-odds of class ``cls``: numpy [len(words)]."""
        sign = 1.0 if int(cls) == 1 else -1.0
        return sign * self.log_odds(list(words))


linear_bow = HashedLinearBow()  # the known-answer target of benchmarks/known_text.py (target.model.path)


class EmbeddingLinearBow:
    """A linear bag-of-words model whose per-word effects are known exactly AND a fixed function of a word
    representation, so an explainer can generalise them to words it never saw.

    ``logit p(class 1 | text) = sum over whitespace words w of f(w)``, with
    ``f(w) = scale * v . (mean of the frozen MiniLM input embeddings of w's word pieces - mu) / sd``:
    ``v ~ N(0, I)`` fixed by ``seed``, ``mu`` the mean embedding row of the vocabulary and ``sd`` the spread
    of ``v . (row - mu)`` over it (so a one-piece word has effect ~ N(0, scale^2), like
    :class:`HashedLinearBow`). The tokenizer is MiniLM's (uncased: ``Good`` = ``good``); punctuation
    attached to a word is one of its pieces (``good,`` = the mean of ``good`` and ``,``). The masker's mask
    token, as a word, counts nothing. Returns numpy probabilities [N, 2] (``target.output=probs``).

    The log-odds is a sum over the masker's features, so removing word i changes it by exactly
    :meth:`effects` ``[i]``, whatever else is kept (every semivalue of the log-odds game equals it). The
    embeddings and ``v`` are loaded on first use (importing this module stays cheap).
    """

    def __init__(self, seed: int = 0, scale: float = 0.5, mask_token: str = "[MASK]") -> None:
        self.seed, self.scale, self.mask_token = int(seed), float(scale), mask_token
        self._table = None  # (tokenizer, embedding rows - mu, v / sd * scale), loaded on first use
        self._cache: dict[str, float] = {}

    def _load(self):
        if self._table is None:
            from transformers import AutoModel

            from fex.maskers.text import load_tokenizer, minilm_path

            rows = AutoModel.from_pretrained(minilm_path()).get_input_embeddings().weight.detach().double()
            centred = rows - rows.mean(0)
            v = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
            v = v * (self.scale / float((centred @ v).std()))
            self._table = (load_tokenizer(None), centred, v)
        return self._table

    def word_effect(self, word: str) -> float:
        """f(word): the exact effect of ``word`` on the class-1 log-odds (0 for the mask token)."""
        if word not in self._cache:
            tokenizer, centred, v = self._load()
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            self._cache[word] = 0.0 if word == self.mask_token or not ids else float(centred[ids].mean(0) @ v)
        return self._cache[word]

    def log_odds(self, texts):
        """The class-1 logit of each text: numpy [N]."""
        import numpy as np

        return np.array([sum(self.word_effect(w) for w in t.split()) for t in texts], dtype=np.float64)

    def __call__(self, texts):
        import numpy as np

        p1 = 1.0 / (1.0 + np.exp(-self.log_odds(list(texts))))
        return np.stack([1.0 - p1, p1], 1)

    def effects(self, words, cls: int = 1):
        """The exact effect of each word on the log-odds of class ``cls``: numpy [len(words)]."""
        import numpy as np

        sign = 1.0 if int(cls) == 1 else -1.0
        return sign * np.array([self.word_effect(w) for w in words], dtype=np.float64)


embedding_bow = EmbeddingLinearBow()  # the second known-answer target of benchmarks/known_text.py
