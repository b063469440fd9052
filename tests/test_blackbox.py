"""BlackBox: chunking invariance, query counting, output kinds, clear errors, fingerprints."""
import pytest
import torch
from torch import nn

from fex.blackbox import BlackBox, fingerprints_match
from fex.errors import TargetError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def test_chunk_size_does_not_change_results_and_queries_are_counted():
    x = torch.rand(37, 3, 2, 2)
    a, b = BlackBox(_net(), max_batch_size=5), BlackBox(_net(), max_batch_size=1000)
    pa, pb = a(x), b(x)
    assert torch.allclose(pa, pb, atol=1e-6)
    assert torch.allclose(pa.sum(-1), torch.ones(37))
    assert a.queries == 37 and b.queries == 37
    a(x[:3])
    assert a.queries == 40


def test_output_kinds_agree():
    x = torch.rand(6, 12)
    logits = nn.Linear(12, 3)(x).detach()
    ref = torch.softmax(logits, -1)
    assert torch.allclose(BlackBox(lambda z: logits, output="logits")(x), ref)
    assert torch.allclose(BlackBox(lambda z: ref, output="probs")(x), ref)
    assert torch.allclose(BlackBox(lambda z: ref.log(), output="log_probs")(x), ref, atol=1e-6)


def test_list_inputs_are_chunked():
    bb = BlackBox(lambda xs: torch.tensor([[1.0, 0.0] if "good" in s else [0.0, 1.0] for s in xs]),
                  output="probs", max_batch_size=2)
    p = bb(["good film", "bad", "good", "meh", "good good"])
    assert p[:, 0].tolist() == [1, 0, 1, 0, 1] and bb.queries == 5


@pytest.mark.parametrize("fn, message", [
    (lambda x: torch.zeros(len(x)), r"expected class scores \[3, C\]"),
    (lambda x: torch.zeros(len(x) + 1, 2), r"shape \(4, 2\) for 3 inputs"),
    (lambda x: torch.full((len(x), 2), float("nan")), "NaN or Inf"),
    (lambda x: "oops", "expected a tensor of class scores"),
])
def test_wrong_target_outputs_raise_one_line_errors(fn, message):
    with pytest.raises(TargetError, match=message) as err:
        BlackBox(fn)(torch.zeros(3, 2))
    assert "\n" not in str(err.value)


def test_probs_declared_but_not_probabilities():
    with pytest.raises(TargetError, match="not probabilities"):
        BlackBox(lambda x: torch.full((len(x), 2), 3.0), output="probs")(torch.zeros(2, 1))
    with pytest.raises(TargetError, match="expected 5"):
        BlackBox(lambda x: torch.zeros(len(x), 2), num_classes=5)(torch.zeros(2, 1))


def test_no_grad_and_frozen():
    net = _net()
    bb = BlackBox(net)
    out = bb(torch.rand(2, 3, 2, 2))
    assert not out.requires_grad
    assert not any(p.requires_grad for p in net.parameters()) and not net.training


def test_fingerprint_tracks_weights():
    a, b = BlackBox(_net()), BlackBox(_net())
    assert fingerprints_match(a.fingerprint(), b.fingerprint())[0]
    with torch.no_grad():
        b.model[1].weight[0, 0] += 1
    ok, why = fingerprints_match(a.fingerprint(), b.fingerprint())
    assert not ok and "weights differ" in why
    f = BlackBox(lambda x: x, name="pkg.fn").fingerprint()
    assert f["weights_sha256"] is None
    assert not fingerprints_match(f, BlackBox(lambda x: x, name="pkg.other").fingerprint())[0]
