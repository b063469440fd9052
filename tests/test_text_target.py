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


@pytest.mark.slow
def test_minilm_sentiment_target_accuracy():
    """Fine-tunes MiniLM on the Rotten Tomatoes train split once (cached), >= 75% held out."""
    from fex.targets.text import minilm_sentiment

    clf = minilm_sentiment()
    assert clf.test_accuracy >= 0.75
    with torch.no_grad():
        p = clf(["A triumph: moving, funny and beautifully acted.", "A dull, lifeless mess."]).softmax(-1)
    assert p[0, 1] > 0.5 > p[1, 1]
