"""A wrong target.output is caught on the first query, not trained on (issue 11, item 3)."""
from __future__ import annotations

import logging

import pytest
import torch

from fex.blackbox import BlackBox
from fex.errors import TargetError

X = torch.zeros(4, 3)
LOGITS = torch.tensor([[2.0, -1.0, 0.5]] * 4)


def const(out):
    return lambda x: out[: x.shape[0]]


@pytest.mark.parametrize("declared,returns,match", [
    ("probs", LOGITS, "not probabilities"),                                  # logits declared as probs
    ("probs", torch.tensor([[0.5, 0.6, -0.1]] * 4), "not probabilities"),  # sums to 1 but outside [0, 1]
    ("log_probs", LOGITS, "not log-probabilities"),                         # logits declared as log_probs
    ("log_probs", torch.softmax(LOGITS, -1), "not log-probabilities"),      # probs declared as log_probs
    ("log_probs", torch.log_softmax(LOGITS, -1) - 0.5, "not log-probabilities"),  # <= 0 but logsumexp != 0
])
def test_wrong_kind_is_refused(declared, returns, match):
    with pytest.raises(TargetError, match=match) as e:
        BlackBox(const(returns), output=declared)(X)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("declared,returns", [
    ("probs", torch.softmax(LOGITS, -1)), ("log_probs", torch.log_softmax(LOGITS, -1)), ("logits", LOGITS)])
def test_right_kind_gives_the_softmax(declared, returns):
    assert torch.allclose(BlackBox(const(returns), output=declared)(X), torch.softmax(LOGITS, -1), atol=1e-6)


def test_probabilities_declared_as_logits_warn_once(caplog):
    bb = BlackBox(const(torch.softmax(LOGITS, -1)), output="logits", name="probs_model")
    with caplog.at_level(logging.WARNING, logger="fex"):
        bb(X)
        bb(X)
    hits = [r for r in caplog.records if "look like probabilities" in r.getMessage()]
    assert len(hits) == 1 and "probs_model" in hits[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fex"):
        BlackBox(const(LOGITS), output="logits")(X)  # real logits: no warning
    assert not [r for r in caplog.records if "look like probabilities" in r.getMessage()]
