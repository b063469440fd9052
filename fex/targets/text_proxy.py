"""A cheap proxy of the MiniLM sentiment target: a bag-of-embeddings student distilled from its answers.

Letters: N texts, L tokens, V vocabulary, D embedding width, H hidden units, C classes.

The student (:class:`BagOfEmbeddings`) tokenizes with the MiniLM tokenizer, looks the tokens up in
MiniLM's *input word-embedding table* (frozen, read from the same local model files the target is
fine-tuned from), mean-pools them over the non-pad tokens and classifies the mean with a small MLP:
no attention, so a batch of 64 snippets costs a few milliseconds on a CPU.

As for the MNIST proxy (:mod:`fex.targets.proxy`), the transfer set is what an explainer asks the
target: the train split's snippets plus ``masked_copies`` copies of each with random words masked
exactly as the word masker (:class:`fex.maskers.text.WordMasker`, same mode and mask token) masks
them. Each is answered once by the teacher through a :class:`~fex.blackbox.BlackBox`, which counts
them: the proxy's whole cost in target queries. The record beside the cached weights
(``<name>.json``) holds that count, the teacher's identity (cache path and weights sha256), the
student's agreement with the teacher on held-out test snippets (clean and word-masked) and the
seconds spent. Only the MLP is cached; the embedding table is read again from the model files.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from fex.blackbox import BlackBox, weights_hash
from fex.data.text import load_splits
from fex.maskers.text import WordMasker, load_tokenizer, resolve_model_path
from fex.targets.classifier import own_rng
from fex.targets.proxy import agreement, distill, random_keep_masks, save_proxy
from fex.targets.text import _offline, as_texts, minilm_sentiment, target_cache_path

log = logging.getLogger("fex")
VERSION = 1


def input_embeddings(base: str | None = None) -> torch.Tensor:
    """The input word-embedding table [V, D] of a local transformers model (``None``: the bundled MiniLM)."""
    from transformers import AutoModel

    p = resolve_model_path(base)
    if os.path.isdir(p):
        _offline()
    return AutoModel.from_pretrained(p).get_input_embeddings().weight.detach().clone()


class BagOfEmbeddings(nn.Module):
    """``list[str] -> logits [N, C]``: mean of frozen token embeddings over non-pad tokens, then an MLP.

    The embedding table is a non-persistent buffer: the state_dict is the MLP only.
    """

    def __init__(self, embedding: torch.Tensor, tokenizer: Any, num_classes: int = 2, hidden: int = 256,
                 max_length: int = 64) -> None:
        super().__init__()
        self.register_buffer("embedding", embedding, persistent=False)  # [V, D]
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        d = embedding.shape[1]
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def pooled(self, texts: Any) -> torch.Tensor:
        """Mean token embedding of each text over its non-pad tokens: [N, D]."""
        enc = self.tokenizer(as_texts(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        ids = enc["input_ids"].to(self.embedding.device)  # [N, L]
        keep = enc["attention_mask"].to(self.embedding.device).unsqueeze(-1).float()  # [N, L, 1]
        return (nn.functional.embedding(ids, self.embedding) * keep).sum(1) / keep.sum(1).clamp_min(1)

    def forward(self, texts: Any) -> torch.Tensor:
        return self.head(self.pooled(texts))


def word_masked_copies(texts: Sequence[str], copies: int, seed: int, mode: str = "mask_token",
                       mask_token: str | None = None, max_length: int = 128) -> list[str]:
    """``copies`` versions of each text (text-major) with random words masked as the word masker masks
    them; each copy keeps each word with its own rate ~ U[0.1, 1] (as the MNIST proxy's patches)."""
    if copies <= 0 or not texts:
        return []
    masker = WordMasker(None, mode=mode, mask_token=mask_token, max_length=max_length)
    x = masker.encode(list(texts))
    g = torch.Generator().manual_seed(seed)
    return masker.apply(x, random_keep_masks(len(texts), copies, masker.num_features(x), g))


def _pooled(student: BagOfEmbeddings, texts: Sequence[str], chunk: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([student.pooled(list(texts[s:s + chunk])) for s in range(0, len(texts), chunk)])


def ms_per_batch(model: Any, texts: Sequence[str], repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of one call on ``texts``, in ms (a record, not a test)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(list(texts))
            best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def distill_text_proxy(teacher: Any, train_texts: Sequence[str], test_texts: Sequence[str], path: str | os.PathLike,
                       teacher_output: str = "logits", base: str | None = None, masked_copies: int = 2,
                       mask_mode: str = "mask_token", mask_token: str | None = None, hidden: int = 256,
                       epochs: int = 20, lr: float = 1e-3, batch_size: int = 256, max_length: int = 64,
                       seed: int = 0, teacher_max_batch_size: int = 256, record: dict | None = None) -> BagOfEmbeddings:
    """Distill a :class:`BagOfEmbeddings` from ``teacher`` (``list[str] -> class scores``) and cache it at ``path``.

    Transfer set: ``train_texts`` (normalised as the word masker does) plus ``masked_copies`` word-masked
    copies of each, answered once each: ``len(train_texts) * (1 + masked_copies)`` counted teacher queries.
    The agreement on ``test_texts`` (clean, and one word-masked copy each) is measured with uncounted
    queries (``agreement_queries`` in the record). ``record``: extra entries for the json (settings).
    """
    path = Path(path)
    t_start = time.perf_counter()
    bb = BlackBox(teacher, output=teacher_output, max_batch_size=teacher_max_batch_size)
    clean = WordMasker(None, max_length=128).encode(list(train_texts))["text"]
    transfer = list(clean) + word_masked_copies(clean, masked_copies, seed, mask_mode, mask_token)
    t0 = time.perf_counter()
    with bb.counting() as c:
        p_teacher = bb(transfer).cpu()  # [N, C]: the proxy's whole cost in target queries
    teacher_seconds = time.perf_counter() - t0
    log.info("distilling the text proxy from %d teacher answers (cached at %s)", c.n, path)
    with own_rng(seed):
        student = BagOfEmbeddings(input_embeddings(base), load_tokenizer(base), p_teacher.shape[1], hidden, max_length)
        t0 = time.perf_counter()
        distill(student.head, _pooled(student, transfer), p_teacher, epochs, lr, batch_size)  # embeddings frozen
        train_seconds = time.perf_counter() - t0
    student.eval()
    test = WordMasker(None, max_length=128).encode(list(test_texts))["text"]
    test_masked = word_masked_copies(test, 1, seed + 1, mask_mode, mask_token)
    with bb.uncounted() as m:  # measurement, not the proxy's cost
        agree, agree_masked = agreement(student, bb, test), agreement(student, bb, test_masked)
        batch = test[:64]
        ms_teacher = ms_per_batch(bb, batch, 2)
    model = getattr(teacher, "model", teacher)
    info = {**(record or {}), "teacher_queries": int(c.n), "transfer_size": len(transfer), "train_size": len(clean),
            "masked_copies": int(masked_copies), "num_classes": int(p_teacher.shape[1]),
            "teacher": {"name": bb.name, "path": getattr(teacher, "path", None), "weights_sha256": weights_hash(teacher),
                        "parameters": sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else None},
            "agreement_test": agree, "agreement_test_masked": agree_masked, "test_size": len(test),
            "agreement_queries": int(m.n), "teacher_seconds": teacher_seconds, "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - t_start,
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "student_embedding": {"base": base or "minilm", "shape": list(student.embedding.shape), "frozen": True},
            "ms_per_64_student": ms_per_batch(student, batch), "ms_per_64_teacher": ms_teacher}
    save_proxy(path, student, info)
    log.info("text proxy: %s", info)
    return student


def load_text_proxy(path: str | os.PathLike, base: str | None = None, hidden: int = 256,
                    max_length: int = 64) -> BagOfEmbeddings:
    """A cached :func:`distill_text_proxy` student (its class count is read from the json beside it)."""
    path = Path(path)
    info = json.loads(path.with_suffix(".json").read_text())
    with own_rng(0):  # the weights drawn here are overwritten; the caller's streams stay as they were
        student = BagOfEmbeddings(input_embeddings(base), load_tokenizer(base), int(info["num_classes"]), hidden,
                                  max_length)
    student.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return student.eval()


# --------------------------------------------------------------------------- the MiniLM proxy
def text_proxy_path(cache_dir: str | None, settings: dict) -> Path:
    """Where a proxy with these settings is cached (``.pt``; its record is the ``.json`` beside it)."""
    source = str(settings["teacher"].get("source", "rotten_tomatoes"))
    return target_cache_path(cache_dir, "minilm_proxy", source, settings).with_suffix(".pt")


def _settings(seed: int, teacher: dict | None, masked_copies: int, mask_mode: str, mask_token: str | None,
              hidden: int, epochs: int, lr: float, batch_size: int, max_length: int) -> tuple[dict, dict]:
    """(minilm_sentiment kwargs, the settings that key the cache)."""
    from omegaconf import DictConfig, OmegaConf

    teacher_kw = OmegaConf.to_container(teacher, resolve=True) if isinstance(teacher, DictConfig) else dict(teacher or {})
    ident = {k: v for k, v in teacher_kw.items() if k not in ("cache_dir", "min_accuracy")}
    return teacher_kw, {"teacher": ident, "seed": seed, "masked_copies": masked_copies, "mask_mode": mask_mode,
                        "mask_token": mask_token, "hidden": hidden, "epochs": epochs, "lr": lr,
                        "batch_size": batch_size, "max_length": max_length, "version": VERSION}


def minilm_proxy(cache_dir: str | None = None, seed: int = 0, teacher: dict | None = None, masked_copies: int = 2,
                 mask_mode: str = "mask_token", mask_token: str | None = None, hidden: int = 256, epochs: int = 20,
                 lr: float = 1e-3, batch_size: int = 256, max_length: int = 64, retrain: bool = False) -> BagOfEmbeddings:
    """A :class:`BagOfEmbeddings` distilled from ``minilm_sentiment(**teacher)``, cached and reused.

    ``teacher``: the :func:`fex.targets.text.minilm_sentiment` arguments of the real target (as
    ``conf/target/minilm_sentiment.yaml`` gives them); its source, seed and split sizes also pick
    the transfer set (the train split) and the held-out agreement set (the test split).
    ``mask_mode`` / ``mask_token``: the explainer's word masker's ``mode`` / ``mask_token``.
    Cost: ``train_size * (1 + masked_copies)`` target queries (see :func:`text_proxy_info`).
    """
    teacher_kw, settings = _settings(seed, teacher, masked_copies, mask_mode, mask_token, hidden, epochs, lr,
                                     batch_size, max_length)
    path = text_proxy_path(cache_dir, settings)
    base = teacher_kw.get("base")
    if path.is_file() and path.with_suffix(".json").is_file() and not retrain:
        return load_text_proxy(path, base, hidden, max_length)
    real = minilm_sentiment(**teacher_kw)
    splits, _ = load_splits(teacher_kw.get("source", "rotten_tomatoes"), teacher_kw.get("cache_dir"),
                            teacher_kw.get("val_size", 1000), teacher_kw.get("test_size", 1000), teacher_kw.get("seed", 0))
    return distill_text_proxy(real, splits["train"].texts, splits["test"].texts, path, "logits", base, masked_copies,
                              mask_mode, mask_token, hidden, epochs, lr, batch_size, max_length, seed,
                              record={"settings": settings, "teacher_test_accuracy": getattr(real, "test_accuracy", None)})


def text_proxy_info(cache_dir: str | None = None, seed: int = 0, teacher: dict | None = None, masked_copies: int = 3,
                    mask_mode: str = "mask_token", mask_token: str | None = None, hidden: int = 256, epochs: int = 20,
                    lr: float = 1e-3, batch_size: int = 256, max_length: int = 64, **_: object) -> dict:
    """The cost/agreement record of a cached MiniLM proxy (same arguments as :func:`minilm_proxy`; distils it
    first if it is not cached)."""
    _, settings = _settings(seed, teacher, masked_copies, mask_mode, mask_token, hidden, epochs, lr, batch_size,
                            max_length)
    path = text_proxy_path(cache_dir, settings)
    if not path.with_suffix(".json").is_file():
        minilm_proxy(cache_dir, seed, teacher, masked_copies, mask_mode, mask_token, hidden, epochs, lr, batch_size,
                     max_length)
    return json.loads(path.with_suffix(".json").read_text())
