"""Prompt compression by attribution: keep the words an explanation ranks highest, in their order.

Letters: B batch, F features (words).

``fex.compress(explainer, texts, keep=0.5)`` explains each text (fex: one policy forward pass per
batch, plus one query per text for the predicted class), keeps its ``k = ceil(keep * n)`` (at least
1) highest-scored of its n words, ties broken by position (earlier first), and returns the kept
words in their original order, joined by single spaces. Any per-instance method of
:mod:`fex.baselines` (``.attribute(x, target)``) can rank the words instead, at its own query cost.
Words are the text masker's features (whitespace-separated words; a text longer than the masker's
``max_length`` is explained, and so compressed, over the words it keeps).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from fex.errors import InputError


def keep_count(n: int, keep: float) -> int:
    """Words kept of ``n``: ``ceil(keep * n)``, at least 1 (0 for an empty text)."""
    if not 0 < keep <= 1:
        raise InputError(f"compress keep must be a fraction in (0, 1], got {keep}")
    return 0 if n == 0 else max(1, math.ceil(keep * n - 1e-9))


def compress_words(words: Sequence[str], scores: Any, keep: float) -> str:
    """The ``keep_count(len(words), keep)`` highest-scored words, in their original order, space-joined."""
    n = len(words)
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()[:n]
    if len(s) < n:
        raise InputError(f"{n} words but {len(s)} scores")
    order = sorted(range(n), key=lambda i: (-float(s[i]), i))  # highest first, ties: earlier word first
    kept = sorted(order[:keep_count(n, keep)])
    return " ".join(words[i] for i in kept)


def word_scores(explainer: Any, x: dict, target: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, F], explained class [B]) from an fex explainer (``.explain``) or a per-instance method
    (``.attribute``; the class is then the black box's prediction, one query per text)."""
    if hasattr(explainer, "explain"):
        out = explainer.explain(x, target)
        return out["scores"].float().cpu(), out["target"].cpu()
    if not hasattr(explainer, "attribute"):
        raise InputError(f"compress needs an explainer or a method, got {type(explainer).__name__}")
    if target is None:
        bb = getattr(explainer, "blackbox", None)
        if bb is None:
            raise InputError("compress with a method needs target=... or a method with a black box")
        target = bb(x).argmax(-1)
    t = torch.as_tensor(target).long().flatten().expand(explainer.masker.batch_size(x)).cpu()
    return explainer.attribute(x, t).float().cpu(), t


def check_compressible(masker: Any, keep: float) -> None:
    """One-line errors, before any work, for a bad ``keep`` or a masker whose features are not words."""
    keep_count(1, float(keep))
    if not hasattr(masker, "encode"):
        raise InputError(f"compress shortens texts: it needs a text explainer (a word masker), not "
                         f"{type(masker).__name__}")


def compress(explainer: Any, texts: Sequence[str] | str, keep: float = 0.5, target: Any = None,
             batch_size: int = 64) -> list[str]:
    """Shortened ``texts``: each keeps its top ``ceil(keep * n)`` words by attribution, in order.

    ``explainer``: a loaded text explainer (:class:`fex.module.ExplainerModule` with a word masker) or
    a per-instance method on the same masker. ``target``: the class whose evidence is kept (default:
    the black box's prediction for each text).
    """
    masker = explainer.masker
    check_compressible(masker, keep)
    texts = [texts] if isinstance(texts, str) else list(texts)
    out: list[str] = []
    for s in range(0, len(texts), batch_size):
        x = masker.encode(texts[s:s + batch_size])
        t = None if target is None else torch.as_tensor(target).long().flatten()
        if t is not None and t.numel() > 1:
            t = t[s:s + batch_size]
        scores, _ = word_scores(explainer, x, t)
        out += [compress_words(w, scores[i], keep) for i, w in enumerate(x["words"])]
    return out
