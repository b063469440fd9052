"""Prompt compression by attribution (fex.compression, fex.compress, fex-explain compress=): known answers."""
import json

import pytest
import torch
from omegaconf import OmegaConf

import fex
from fex.methods.baselines import FeatureAblation
from fex.compression import compress, compress_words, keep_count
from fex.errors import InputError
from fex.maskers.text import WordMasker
from pathlib import Path
from tests.text_helpers import planted_word_blackbox, synthetic_sentences


def test_compress_words_by_hand():
    words = ["a", "b", "c", "d", "e"]
    s = [0.1, 0.9, 0.5, 0.2, -1.0]
    assert compress_words(words, s, 0.5) == "b c d"  # ceil(2.5) = 3 top words, in their order
    assert compress_words(words, s, 0.3) == "b c"  # ceil(1.5) = 2
    assert compress_words(words, s, 0.1) == "b"  # at least 1
    assert compress_words(words, s, 1.0) == "a b c d e"
    assert compress_words(["x", "y", "z", "w"], [1, 1, 1, 1], 0.5) == "x y"  # ties: earlier words first
    assert compress_words(["only"], torch.tensor([0.0, 7.0]), 0.5) == "only"  # padding scores ignored
    assert keep_count(10, 0.7) == 7 and keep_count(3, 0.7) == 3 and keep_count(0, 0.5) == 0
    for bad in (0, -0.1, 1.5):
        with pytest.raises(InputError, match="keep"):
            keep_count(4, bad)
    with pytest.raises(InputError, match="scores"):
        compress_words(words, [1.0, 2.0], 0.5)


class PositionExplainer:
    """A stub explainer whose score falls with a word's position: compression keeps each text's head."""

    def __init__(self):
        self.masker = WordMasker()
        self.calls = 0

    def explain(self, x, target=None):
        self.calls += 1
        f = self.masker.num_features(x)
        scores = -torch.arange(f, dtype=torch.float32).expand(self.masker.batch_size(x), f) * self.masker.valid(x)
        return {"scores": scores, "target": torch.zeros(len(x["words"]), dtype=torch.long)}


def test_compress_api_batches_and_keeps_order():
    texts = ["one two three four", "alpha beta gamma", "solo"]
    e = PositionExplainer()
    assert fex.compress(e, texts, keep=0.5, batch_size=2) == ["one two", "alpha beta", "solo"]
    assert e.calls == 2  # two batches
    assert compress(e, "one two three four", keep=0.75) == ["one two three"]
    with pytest.raises(InputError, match="keep"):
        compress(e, texts, keep=0)


def test_compress_with_a_method_keeps_the_planted_word():
    bb = planted_word_blackbox("great")
    texts = synthetic_sentences(6, seed=1, min_len=5, max_len=9)  # every text has "great", 6-10 words
    fa = FeatureAblation(bb, WordMasker())
    short = compress(fa, texts, keep=0.1)  # one word kept: the only one that matters
    assert short == ["great"] * 6
    kept = compress(fa, texts, keep=0.5)
    assert all("great" in k.split() for k in kept)
    assert [len(k.split()) for k in kept] == [keep_count(len(t.split()), 0.5) for t in texts]
    assert (bb(kept).argmax(-1) == 1).all()  # the prediction is kept


def test_explain_job_compress_writes_the_shortened_texts(tmp_path):
    from fex.explainer import build_explainer, save_explainer
    from fex.tasks.explain import explain
    from tests.conftest import compose

    data = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/data/rotten_tomatoes.yaml"))
    data.update({"cache_dir": str(tmp_path), "seed": 0})
    cfg = {"masker": {"_target_": "fex.maskers.text.WordMasker", "max_length": 128},
           "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 32,
                      "backbone": {"_target_": "fex.policy.text.WordEmbeddingBackbone", "dim": 32}},
           "objective": {}, "data": data, "num_classes": 2}
    torch.manual_seed(0)
    ckpt = save_explainer(build_explainer(cfg, blackbox=None), tmp_path / "text.ckpt")
    tgt = ["target=text_callable", "target.model.path=tests.text_helpers.planted_great", "target.output=probs"]
    over = [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "text=a truly great little film", "compress=0.4", "allow_target_mismatch=true",
            *tgt]
    metrics, _ = explain(compose("explain", over))
    rec = json.loads((tmp_path / "out" / "scores.json").read_text())["explained"][0]
    assert rec["compressed"] == compress_words(rec["words"], rec["scores"], 0.4)
    assert len(rec["compressed"].split()) == 2  # ceil(0.4 * 5)
    assert (tmp_path / "out" / "compressed.txt").read_text() == rec["compressed"] + "\n"
    assert metrics["compressed"].endswith("compressed.txt")
