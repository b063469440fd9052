"""Noticing a changed target (fex.target_probe, Gate(probes=...)): the distance by hand, the same target at 0,
another model far off, every explanation failing on it without removal queries, and a sidecar that keeps the
probe and refuses a crafted one."""
import json
import pickle

import pytest
import torch

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError
from fex.gate import Gate, sidecar_path
from fex.maskers.image import PatchMasker
from fex.module import ExplainerModule
from fex.target_probe import TargetProbe
from synth import LinearPatchTarget, make_checkpoint


class Fixed:
    """A black box answering the same probabilities to any input."""

    def __init__(self, probs):
        self.probs = torch.tensor(probs)

    def __call__(self, x):
        return self.probs.expand(len(x), -1)


def test_distance_is_the_mean_total_variation_by_hand():
    probe = TargetProbe(torch.zeros(2, 3), torch.tensor([[0.9, 0.1], [0.5, 0.5]]), tolerance=0.05)
    # now (0.8, 0.2) for both: TV 0.1 and 0.3 -> mean 0.2
    assert probe.distance(Fixed([0.8, 0.2])) == pytest.approx(0.2)
    assert not probe.matches(Fixed([0.8, 0.2]))
    assert TargetProbe(torch.zeros(1, 3), torch.tensor([[0.8, 0.2]]), 0.05).matches(Fixed([0.82, 0.18]))  # TV 0.02
    assert probe.distance(Fixed([0.2, 0.3, 0.5])) == 1.0  # another number of classes: another model
    for bad in (dict(probes=[], probs=torch.zeros(0, 2)), dict(probes=torch.zeros(2, 3), probs=torch.zeros(3, 2)),
                dict(probes=torch.zeros(1, 3), probs=torch.zeros(1, 2), tolerance=-1)):
        with pytest.raises(ConfigError):
            TargetProbe(**bad)


def test_recorded_probes_same_target_zero_another_far_and_json_round_trip():
    a = BlackBox(LinearPatchTarget(), num_classes=2)
    b = BlackBox(LinearPatchTarget(weights=(-torch.linspace(-1, 2, 49)).tolist()), num_classes=2)
    masker = PatchMasker(grid=(7, 7))
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with a.counting() as c:
        probe = TargetProbe.record(a, masker, x, n=8, seed=3)
    assert c.n == 8 and len(probe) == 8 and probe.probes.shape == (8, 1, 28, 28)
    # half of each probe's patches are masked (the masker's baseline, 0), drawn from the seed
    kept = (probe.probes.view(8, 1, 7, 4, 7, 4) != 0).any(dim=(1, 3, 5)).flatten(1).float().mean(1)
    assert ((kept > 0.2) & (kept < 0.8)).all()
    assert probe.distance(a) < 1e-6 and probe.matches(a)
    assert probe.distance(b) > 0.05 and not probe.matches(b)
    back = TargetProbe.from_state(json.loads(json.dumps(probe.state())), "here")
    assert torch.equal(back.probes, probe.probes) and torch.allclose(back.probs, probe.probs)
    assert back.distance(a) < 1e-6 and back.tolerance == probe.tolerance
    texts = TargetProbe(["a [MASK] film", "[MASK] good"], torch.tensor([[0.3, 0.7], [0.6, 0.4]]))
    assert TargetProbe.from_state(json.loads(json.dumps(texts.state())), "here").probes == texts.probes
    for crafted in ({"probes": {"kind": "pickle", "data": []}, "probs": [[1.0]], "tolerance": 0.001},
                    {"probes": {"kind": "texts", "data": [1]}, "probs": [[1.0]], "tolerance": 0.001},
                    {"probes": {"kind": "tensor", "shape": [1, 2], "data": [0.0, "x"]}, "probs": [[1.0]], "tolerance": 0},
                    {"probes": {"kind": "tensor", "shape": [1, 3], "data": [0.0, 1.0]}, "probs": [[1.0]], "tolerance": 0},
                    {"probes": {"kind": "texts", "data": ["a"]}, "probs": [[float("nan")]], "tolerance": 0},
                    {"probes": {"kind": "texts", "data": ["a"]}, "probs": [[1.0]]}):
        with pytest.raises(CheckpointError, match="target probe is malformed"):
            TargetProbe.from_state(crafted, "here")


def two_targets(tmp_path):
    """A linear patch target, another with the opposite weights, and an explainer checkpoint of the first."""
    real = BlackBox(LinearPatchTarget(), num_classes=2)
    other = BlackBox(LinearPatchTarget(weights=(-torch.linspace(-1, 2, 49)).tolist()), num_classes=2)
    ckpt = make_checkpoint(tmp_path / "explainer.ckpt", real)
    return real, other, ckpt, ExplainerModule.from_checkpoint(ckpt, target=real)


def test_gate_fails_every_explanation_on_another_target_without_removal_queries(tmp_path):
    real, other, ckpt, explainer = two_targets(tmp_path)
    x = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gate = Gate(real, explainer.masker, fallback=None)  # probes=8 by default
    gate.calibrate(explainer, x[:80], alpha=0.2, reference=None)
    assert len(gate.probe) == 8 and gate.calibration["probe_queries"] == 8
    scores = explainer.explain(x[80:])["scores"]
    same = gate.verify(scores, x[80:], target=1)
    assert not same["target_changed"] and same["passed"].float().mean() > 0.5
    assert same["queries"].tolist() == [gate.queries_per_input] * 20  # the calibration's target: no probe asked
    gate.save(ckpt)
    on_other = Gate.load(ckpt, blackbox=other, masker=explainer.masker)
    with other.counting() as c:
        out = on_other.verify(scores, x[80:], target=1)
    assert out["target_changed"] and not out["passed"].any() and (out["statistic"] == -float("inf")).all()
    assert out["queries"].tolist() == [1] * 20 and c.n == 20 + 8  # the prediction each, the probe once
    with other.counting() as c:
        on_other.verify(scores, x[80:], target=1)
    assert c.n == 20  # the black box is known now
    on_real = Gate.load(ckpt, blackbox=real, masker=explainer.masker)
    back = on_real.verify(scores, x[80:], target=1)
    assert not back["target_changed"] and torch.equal(back["passed"], same["passed"])
    assert on_real.probe_distance(real) < 1e-6 and on_other.probe_distance(other) > on_other.probe_tolerance
    # a threshold of -inf (a stratum too small to hold its alpha passes every statistic) still fails a changed target
    loose = Gate.load(ckpt, blackbox=real, masker=explainer.masker)
    loose.threshold = -float("inf")
    assert loose.verify(scores, x[80:], target=1)["passed"].all()
    loose.blackbox = other
    assert not loose.verify(scores, x[80:], target=1)["passed"].any()
    # no probe: never says changed; an old sidecar (no probe keys) loads as one without
    plain = Gate(blackbox=other, masker=explainer.masker, probes=0, fallback=None)
    plain.calibrate(scores, x[80:], target=1, alpha=0.2, reference=None)
    assert plain.probe is None and not plain.check(scores, x[80:], 1)["target_changed"]
    side = sidecar_path(ckpt)
    meta = json.loads(side.read_text())
    old = {k: v for k, v in meta.items() if k not in ("probe", "probes", "probe_tolerance")}
    side.write_text(json.dumps(old))
    assert Gate.load(ckpt).probe is None and Gate.load(ckpt).probes == 0
    meta["probe"]["probes"]["kind"] = "module"
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="target probe is malformed"):
        Gate.load(ckpt)
    meta["probes"] = -1
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="probes must be"):
        Gate.load(ckpt)
    with pytest.raises(ConfigError, match="probes"):
        Gate(probes=1.5)


def test_text_probes_are_masked_snippets_and_tell_two_word_models_apart():
    from fex.maskers.text import WordMasker
    from text_helpers import bow_blackbox, bow_sentences, bow_weights

    masker = WordMasker()
    x = masker.encode(bow_sentences(10, seed=1))
    a, b = BlackBox(bow_blackbox(bow_weights(0)), output="probs"), BlackBox(bow_blackbox(bow_weights(1)), output="probs")
    probe = TargetProbe.record(a, masker, x, n=6, seed=0)
    assert len(probe) == 6 and all(isinstance(t, str) for t in probe.probes)
    for text, orig in zip(probe.probes, x["words"]):  # the same words, about half of them masked
        words = text.split()
        assert len(words) == len(orig) and 0 < sum(w == masker.mask_token for w in words) < len(words)
        assert all(w == o for w, o in zip(words, orig) if w != masker.mask_token)
    back = TargetProbe.from_state(json.loads(json.dumps(probe.state())), "here")
    assert back.distance(a) < 1e-6 and back.distance(b) > 0.01 and not back.matches(b)


class NeverFlag:
    def flag(self, x, target):
        return torch.zeros(len(target), dtype=torch.bool)


def test_a_prescreen_does_not_let_a_changed_target_through_and_the_gate_pickles(tmp_path):
    real, other, ckpt, explainer = two_targets(tmp_path)
    x = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    gate = Gate(real, explainer.masker, fallback=None, prescreen=NeverFlag())
    gate.calibrate(explainer, x[:40], alpha=0.2, reference=None)
    scores = explainer.explain(x[40:])["scores"]
    same = gate.verify(scores, x[40:], target=1)
    assert same["passed"].all() and not same["flagged"].any()  # nothing flagged: unchecked, passed
    gate.blackbox = other
    moved = gate.verify(scores, x[40:], target=1)
    assert moved["target_changed"] and moved["flagged"].all() and not moved["passed"].any()
    back = pickle.loads(pickle.dumps(gate))
    assert back.target_changed(other) and not back.target_changed(real) and len(back.probe) == 8
