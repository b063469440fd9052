"""The gate on text: word shifts, the permuted explainer, the text proxy's exact cost, and a known-answer
gate check on a planted-word classifier (fex.shifts, fex.targets.text_proxy, fex.gate)."""
import json
from collections import Counter

import pytest
import torch

from fex.blackbox import BlackBox
from fex.gate import Gate
from fex.maskers.text import WordMasker
from fex.shifts import PermutedExplainer, permute_valid, replace_words, shuffle_words
from text_helpers import planted_word_blackbox, synthetic_sentences

pytest.importorskip("transformers")


class PlantedWordExplainer:
    """The right explanation of the planted-word classifier: the planted word on top, the rest tiny noise."""

    name = "oracle"

    def __init__(self, blackbox, word: str = "great") -> None:
        self.masker, self.blackbox, self.word = WordMasker(), blackbox, word

    def explain(self, x, target=None):
        valid = self.masker.valid(x)
        g = torch.Generator().manual_seed(0)
        scores = 0.01 * torch.rand(valid.shape, generator=g)
        for i, words in enumerate(x["words"]):
            scores[i, [j for j, w in enumerate(words) if w == self.word]] += 1
        scores = scores * valid
        return {"scores": scores, "attributions": self.masker.expand(scores, x), "valid": valid}


def test_shuffle_words_keeps_the_words_changes_the_order_and_is_seeded():
    texts = synthetic_sentences(30, seed=0, min_len=6)
    a, b, c = shuffle_words(texts, 1), shuffle_words(texts, 1), shuffle_words(texts, 2)
    assert a == b and a != c
    assert all(Counter(s.split()) == Counter(t.split()) for s, t in zip(a, texts))
    assert sum(s != t for s, t in zip(a, texts)) >= 25  # (almost) every snippet's order changed


def test_replace_words_swaps_a_share_for_batch_words():
    texts = synthetic_sentences(30, seed=0, min_len=6)
    out = replace_words(texts, 0.3, seed=0)
    vocab = {w for t in texts for w in t.split()}
    assert out == replace_words(texts, 0.3, seed=0)
    for s, t in zip(out, texts):
        ws, wt = s.split(), t.split()
        assert len(ws) == len(wt) and set(ws) <= vocab
        assert sum(a != b for a, b in zip(ws, wt)) <= -(-3 * len(wt) // 10)  # at most ceil(0.3 n) positions
    assert sum(s != t for s, t in zip(out, texts)) >= 20


def test_permuted_explainer_permutes_within_each_inputs_valid_words():
    masker = WordMasker()
    texts = ["a b c d e f g", "one two three", "x y", "p q r s t"]
    x = masker.encode(texts)
    valid = masker.valid(x)
    scores = (torch.arange(valid.numel(), dtype=torch.float32).view(valid.shape) + 1) * valid

    class Fixed:
        def __init__(self):
            self.masker, self.blackbox = masker, None

        def explain(self, xb, target=None):
            idx = [texts.index(t) for t in xb["text"]]
            return {"scores": scores[idx][:, : masker.num_features(xb)], "valid": masker.valid(xb)}

    out = PermutedExplainer(Fixed(), seed=3).explain(x)["scores"]
    assert torch.equal(out[~valid], torch.zeros(int((~valid).sum())))  # padding words stay 0
    for i in range(len(texts)):  # a permutation of the input's own scores
        assert torch.equal(out[i, valid[i]].sort().values, scores[i, valid[i]].sort().values)
    assert not torch.equal(out[0], scores[0])
    part = PermutedExplainer(Fixed(), seed=3).explain(masker.select(x, torch.tensor([2, 0])))["scores"]
    assert torch.equal(part, out[[2, 0]])  # the permutation does not depend on the batch
    same = permute_valid(torch.arange(6.0).expand(2, 6), torch.ones(2, 6, dtype=torch.bool), seed=0)
    assert torch.equal(same[0], same[1])  # fixed-F inputs: one permutation for all (the MNIST case)


def test_text_proxy_costs_exactly_its_transfer_set_and_follows_a_planted_teacher(tmp_path):
    from fex.targets.text_proxy import distill_text_proxy, load_text_proxy

    seen = []
    planted = planted_word_blackbox("great", p=0.95)

    def teacher(texts):  # every text the teacher answers, counted independently of the BlackBox
        seen.extend(texts)
        return planted(texts)

    train = synthetic_sentences(120, seed=0, frac_planted=0.5)
    test = synthetic_sentences(60, seed=1, frac_planted=0.5)
    path = tmp_path / "proxy.pt"
    student = distill_text_proxy(teacher, train, test, path, teacher_output="probs", masked_copies=2, epochs=25,
                                 lr=3e-3, batch_size=32, hidden=32, seed=0)
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["teacher_queries"] == info["transfer_size"] == 120 * (1 + 2)  # each transfer text answered once
    assert len(seen) == info["teacher_queries"] + info["agreement_queries"]  # nothing else asked the teacher
    masked = seen[120:360]
    assert all(len(m.split()) == len(t.split()) for m, t in zip(masked[::2], train))  # word-masked copies
    assert sum("[MASK]" in m for m in masked) > 200
    assert info["agreement_test"] >= 0.9, info
    assert info["student_parameters"] < 20_000 and info["student_embedding"]["frozen"]
    again = load_text_proxy(path, hidden=32)
    with torch.no_grad():
        assert torch.allclose(again(test), student(test), atol=1e-6)  # the cache reproduces the student


def test_gate_catches_a_permuted_text_explainer_and_passes_the_right_one():
    bb = BlackBox(planted_word_blackbox("great", p=0.95, absent=0.5), output="probs", num_classes=2)
    oracle = PlantedWordExplainer(bb)
    masker = oracle.masker
    gate = Gate(bb, masker, fallback=None)
    gate.calibrate(oracle, masker.encode(synthetic_sentences(60, seed=0, min_len=6)), alpha=0.1, target=1,
                   reference=None)
    x = masker.encode(synthetic_sentences(60, seed=1, min_len=6))
    with bb.counting() as c:
        right = gate.verify(oracle, x, target=1)
    assert c.n == 60 * gate.queries_per_input  # the check only, no fallback
    wrong = gate.verify(PermutedExplainer(oracle, seed=0), x, target=1)
    fail_right, fail_wrong = 1 - right["passed"].float().mean(), 1 - wrong["passed"].float().mean()
    assert fail_right <= 0.2 and fail_wrong >= 0.6, (fail_right, fail_wrong)
