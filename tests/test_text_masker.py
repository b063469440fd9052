"""Words as features: tokenization round trip, special tokens/padding never features, masking modes."""
from __future__ import annotations

import pytest
import torch

from fex.errors import InputError
from fex.maskers.text import WordMasker, encode_texts, word_scores

TEXTS = ["A three-hour cinema master class.",
         "It's always fascinating to watch Marker the essayist at work.",
         "great"]


@pytest.fixture(scope="module")
def masker():
    return WordMasker(max_length=64)


def test_words_round_trip_to_normalised_text(masker):
    raw = ["  Hello,   wonderful\tworld!  ", "unbelievably  over-the-top performances"]
    x = masker.encode(raw)
    for t, words, text in zip(raw, x["words"], x["text"]):
        assert " ".join(words) == " ".join(t.split()) == text
    # every word owns at least one subword token, and token->word ids cover 0..n-1 in order
    for i, words in enumerate(x["words"]):
        ids = x["word_ids"][i][x["word_ids"][i] >= 0].tolist()
        assert sorted(set(ids)) == list(range(len(words)))
        assert ids == sorted(ids)
    # decoding each word's tokens gives the word back (lower-cased by this uncased tokenizer)
    tok = masker.tokenizer
    for i, words in enumerate(x["words"]):
        for j, w in enumerate(words):
            pieces = x["input_ids"][i][x["word_ids"][i] == j].tolist()
            assert tok.decode(pieces).replace(" ", "") == w.lower()


def test_special_tokens_and_padding_are_not_features(masker):
    x = masker.encode(TEXTS)
    tok = masker.tokenizer
    special = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id}
    for i in range(len(TEXTS)):
        for tid, wid in zip(x["input_ids"][i].tolist(), x["word_ids"][i].tolist()):
            assert (wid == -1) == (tid in special)
    valid = masker.valid(x)
    assert valid.shape == (3, 10)
    assert valid.sum(1).tolist() == [5, 10, 1]
    # pooling: padding words get zero embeddings; special tokens never reach any word
    feats = torch.randn(3, x["input_ids"].shape[1], 4)
    feats[x["word_ids"] < 0] = 1e6  # special/padding tokens carry a huge value
    pooled = masker.pool(feats, x)
    assert pooled.shape == (3, 10, 4)
    assert pooled.abs().max() < 1e3
    assert (pooled[~valid] == 0).all()
    # word 1 of text 0 ("three-hour") is the mean of its subword tokens
    sel = x["word_ids"][0] == 1
    assert sel.sum() == 3
    torch.testing.assert_close(pooled[0, 1], feats[0][sel].mean(0))


def test_padding_never_gets_attribution(masker):
    x = masker.encode(TEXTS)
    scores = torch.rand(3, masker.num_features(x)) + 0.1
    out = masker.expand(scores, x)
    assert (out[~masker.valid(x)] == 0).all() and (out[masker.valid(x)] > 0).all()
    assert [len(r) for r in word_scores(out, x)] == [5, 10, 1]
    tok = masker.token_scores(out, x)
    assert (tok[x["word_ids"] < 0] == 0).all()


def test_explainer_scores_padding_zero_across_batch_lengths(masker):
    from tests.text_helpers import small_text_explainer

    torch.manual_seed(0)
    module = small_text_explainer(dim=16, hidden=16, init_bias=2.0, max_length=masker.max_length)
    x = masker.encode(TEXTS)
    out = module.explain(x, target=1)
    valid = masker.valid(x)
    assert (out["scores"][~valid] == 0).all() and (out["scores"][valid] > 0).all()
    # an example's scores do not depend on what it is batched with (padding is inert)
    alone = module.explain(masker.encode(TEXTS[2:]), target=1)["scores"]
    torch.testing.assert_close(out["scores"][2, :1], alone[0], atol=1e-5, rtol=1e-4)


def test_apply_modes(masker):
    x = masker.encode(["the movie was great", "bad"])
    m = torch.tensor([[[1, 0, 1, 0], [0, 0, 0, 0]], [[1, 1, 1, 1], [0, 1, 1, 1]]], dtype=torch.float)
    assert masker.apply(x, m) == ["the [MASK] was [MASK]", "[MASK] [MASK] [MASK] [MASK]", "bad", "[MASK]"]
    drop = WordMasker(mode="drop")
    assert drop.apply(x, m) == ["the was", "", "bad", ""]
    with pytest.raises(InputError):
        masker.apply(x, torch.ones(2, 1, 3))


def test_select_keeps_feature_width(masker):
    x = masker.encode(TEXTS)
    sub = masker.select(x, [2])
    assert masker.num_features(sub) == masker.num_features(x)
    assert masker.valid(sub).tolist() == masker.valid(x)[2:].tolist()
    assert sub["input_ids"].shape[1] == 3  # [CLS] great [SEP]
    assert masker.apply(sub, torch.ones(1, 1, 10)) == ["great"]


def test_bad_input_errors(masker):
    with pytest.raises(InputError, match="text 1 is empty"):
        masker.encode(["fine", "   "])
    with pytest.raises(InputError, match="expects a batch dict"):
        masker.validate(["raw text"])
    long = " ".join(["word"] * 200)
    with pytest.warns(UserWarning, match="truncated to its first 62 of 200 words"):
        x = masker.encode([long, "short one"])
    assert len(x["words"][0]) == 62 and x["input_ids"].shape[1] == 64
    with pytest.raises(InputError, match="more than the model limit of 64"):
        WordMasker(max_length=64, too_long="error").encode([long])
    with pytest.raises(InputError):
        WordMasker(mode="blank")


def test_encode_multi_token_truncation_keeps_whole_words():
    m = WordMasker(max_length=8)
    with pytest.warns(UserWarning):
        x = m.encode(["unbelievably extraordinary cinematography everywhere"])
    ids = x["word_ids"][0].tolist()
    assert ids[0] == -1 and ids[-1] == -1 and len(ids) <= 8
    assert sorted(set(i for i in ids if i >= 0)) == list(range(len(x["words"][0])))
