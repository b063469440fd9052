"""Text targets: transformers classifiers as black boxes, IG on embeddings, the cached MiniLM target."""
from __future__ import annotations

import pytest
import torch

from fex import BlackBox
from fex.maskers.text import WordMasker


@pytest.fixture(scope="module")
def clf():
    from fex.targets.text import hf_classifier

    torch.manual_seed(0)
    return hf_classifier("minilm", num_labels=2)  # pretrained encoder, untrained head: a fixed function


def test_hf_classifier_is_a_text_blackbox(clf):
    masker = WordMasker()
    x = masker.encode(["a great film", "dull and far too long"])
    bb = BlackBox(clf, output="logits", num_classes=2, max_batch_size=1)
    p_dict, p_list = bb(x), bb(x["text"])  # the explainer queries with batch dicts and with strings
    torch.testing.assert_close(p_dict, p_list)
    assert p_dict.shape == (2, 2) and bb.queries == 4
    assert bb.fingerprint()["weights_sha256"]


def test_length_chunks_give_the_one_batch_logits(clf):
    """Large batches run as length-sorted chunks padded to their own longest text: the same logits, in
    the input order, as one batch padded to the longest (padding is masked out)."""
    texts = ["a great film", "dull and far too long , with a plot that never once makes sense", "ok",
             "the best performances of the year in a film nobody should miss", "bad", "fine but forgettable"] * 3
    with torch.no_grad():
        clf.chunk_size = 10 ** 6
        whole = clf(texts)
        clf.chunk_size = 4
        chunked = clf(texts)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    assert not torch.equal(chunked[0], chunked[1])  # rows were put back in their own order
    clf.chunk_size = 64
    with pytest.raises(Exception, match="chunk_size"):
        type(clf)(clf.model, clf.tokenizer, chunk_size=0)


def test_integrated_gradients_words_completeness(clf):
    from fex.targets.text import integrated_gradients_words

    masker = WordMasker()
    x = masker.encode(["an unbelievably charming film", "bad"])
    scores = integrated_gradients_words(clf, None, x, target=1, n_steps=64)
    assert scores.shape == (2, 4) and (scores[1, 1:] == 0).all()
    # completeness: word scores sum to p(x) - p(all words -> [MASK]) (special tokens are unchanged)
    with torch.no_grad():
        p = clf(x["text"]).softmax(-1)[:, 1]
        base = clf(["[MASK] " * 4, "[MASK]"]).softmax(-1)[:, 1]
    torch.testing.assert_close(scores.sum(1), p - base, atol=2e-3, rtol=0.05)


def test_truncated_classifier_is_the_first_layers():
    """hf_classifier(num_layers=2): the first 2 of MiniLM's 6 layers, the same weights (the small target's base)."""
    from fex.targets.text import hf_classifier

    small = hf_classifier("minilm", num_labels=2, num_layers=2)
    full = hf_classifier("minilm", num_labels=2)
    assert len(small.model.bert.encoder.layer) == 2 < len(full.model.bert.encoder.layer) == 6
    enc = small.encode(["a gorgeous , witty film", "dull"])
    with torch.no_grad():
        h = small.model.bert(**enc).last_hidden_state
        hs = full.model.bert(**enc, output_hidden_states=True).hidden_states
    torch.testing.assert_close(h, hs[2])


@pytest.mark.slow
def test_small_minilm_sentiment_target_accuracy(tmp_path):
    """The tests' text target (conf/target/minilm_small.yaml; the full fine-tune is the main text job's):
    2 MiniLM layers fine-tuned on 2,000 Rotten Tomatoes snippets once (cached), >= 65% held out (chance: 50%),
    and it reads plain sentiment right."""
    from hydra.utils import instantiate

    from conftest import compose

    cfg = compose("train", ["experiment=text_rt", "target=minilm_small"], output_dir=tmp_path)
    clf = instantiate(cfg.target.model)
    assert len(clf.model.bert.encoder.layer) == 2
    assert clf.test_accuracy >= 0.65
    with torch.no_grad():
        p = clf(["A triumph: moving, funny and beautifully acted.", "A dull, lifeless mess."]).softmax(-1)
    assert p[0, 1] > 0.5 > p[1, 1]
    full = compose("train", ["experiment=text_rt"], output_dir=tmp_path).target.model
    assert full.get("num_layers") is None and full.get("train_limit") is None  # the main job's target stays full
