"""The contrast gate in two stages by queries (fex.gate, ``early_alpha``): the cut-off by hand, the same
decisions as the one-stage gate for every input asked both stages, every query counted, fewer of them."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError
from fex.gate import Gate, sidecar_path
from fex.maskers.image import PatchMasker
from fex.module import ExplainerModule
from fex.serve.engine import gate_verdicts
from fex.serve.loading import load_gate
from synth import LinearPatchTarget, make_checkpoint

FR = (0.1, 0.2, 0.3, 0.5)


def linear_world(n: int, seed: int, noise: float = 1.5):
    """A linear patch target's right explanations (its weights plus noise) and images."""
    g = torch.Generator().manual_seed(seed)
    return torch.linspace(-1, 2, 49) + noise * torch.randn(n, 49, generator=g), torch.rand(n, 1, 28, 28, generator=g)


def linear_target() -> BlackBox:
    return BlackBox(LinearPatchTarget(weights=torch.linspace(-1, 2, 49).tolist(), scale=0.3), num_classes=2)


def test_cut_off_is_the_conformal_bound_on_the_failing_inputs_terms_by_hand():
    gate = Gate(early_alpha=0.2, fallback=None, fractions=(0.1, 0.5))
    terms = torch.tensor([[0.10, 0.05], [0.20, 0.30], [0.30, 0.10], [0.40, 0.20],  # the 4 failing inputs
                          [0.50, 0.90], [0.60, 0.80], [0.25, 0.70], [0.35, 0.60], [0.45, 0.15], [0.05, 0.95]])
    fail = torch.tensor([True] * 4 + [False] * 6)
    gate._calibrate_early(terms, fail)
    # m = 4, r = ceil(0.8 * 5) = 4: the cut-off is the largest failing term. Pair 0: 0.40, cleared by 0.50,
    # 0.60, 0.45 (3); pair 1: 0.30, cleared by 0.90, 0.80, 0.70, 0.60, 0.95 (5): pair 1 is kept
    assert (gate.early_index, gate.early_threshold) == (1, pytest.approx(0.30))
    gate.early_alpha = 0.5  # r = ceil(0.5 * 5) = 3: the third smallest failing term
    gate._calibrate_early(terms, fail)
    assert (gate.early_index, gate.early_threshold) == (1, pytest.approx(0.20))
    gate.early_alpha = 0.1  # r = ceil(0.9 * 5) = 5 > m: nothing can be bounded, no input passes early
    gate._calibrate_early(terms, fail)
    assert gate.early_threshold == math.inf


def test_two_stages_decide_as_one_stage_where_both_are_asked_with_fewer_queries():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    s_cal, x_cal = linear_world(300, 0)
    one = Gate(bb, masker, fractions=FR, fallback=None)
    two = Gate(bb, masker, fractions=FR, fallback=None, early_alpha=0.1)
    one.calibrate(s_cal, x_cal, alpha=0.1, target=1, reference=None)
    two.calibrate(s_cal, x_cal, alpha=0.1, target=1, reference=None)
    assert two.threshold == one.threshold and two.two_stage and 0 < two.calibration["early_pass_share"] < 1
    s, x = linear_world(200, 1)
    perm = torch.randperm(49, generator=torch.Generator().manual_seed(3))
    s = torch.cat([s, s[:, perm]])  # 200 right explanations, 200 shuffled ones
    x = torch.cat([x, x])
    a = one.check(s, x, target=1)
    q0 = bb.queries
    b = two.check(s, x, target=1)
    assert bb.queries - q0 == int(b["queries"].sum())  # every query counted
    early = b["early"]
    assert (b["queries"][early] == 3).all() and (b["queries"][~early] == 1 + 2 * len(FR)).all()
    # the inputs asked both stages get the one-stage statistic, hence its decision
    assert torch.allclose(b["statistic"][~early], a["statistic"][~early], atol=1e-6)
    # an early pass is a first-pair term above the cut-off
    assert (b["terms"][early, two.early_index] > two.early_threshold).all()
    assert torch.isnan(b["terms"][early]).sum() == int(early.sum()) * (len(FR) - 1)
    decided_one = a["statistic"] >= one.threshold
    decided_two = early | (b["statistic"] >= two.threshold)
    # right explanations mostly pass at 3 queries; shuffled ones mostly go on to the second stage and are
    # caught as by one stage (measured: 91% of right ones pass early, 2% of shuffled ones)
    assert early[:200].float().mean() > 0.6 and b["queries"][:200].float().mean() < 9 - 0.6 * 6
    assert early[200:].float().mean() < 0.05
    caught_one, caught_two = (~decided_one[200:]).float().mean(), (~decided_two[200:]).float().mean()
    assert caught_one > 0.8 and caught_two >= caught_one - 0.03
    # early passes the full check would fail: at most about early_alpha of the inputs it fails
    assert (decided_two & ~decided_one).sum() <= 0.1 * (~decided_one).sum() + 3
    assert not (decided_one & ~decided_two).any()  # nothing the one-stage gate passes fails in two stages
    full = two.check(s, x, target=1, early=False)  # the first stage off: exactly the one-stage check
    assert torch.allclose(full["statistic"], a["statistic"], atol=1e-6) and (full["queries"] == 9).all()


def test_verify_falls_back_only_where_both_stages_fail():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    gate = Gate(bb, masker, fractions=FR, early_alpha=0.1)
    s_cal, x_cal = linear_world(300, 0)
    gate.calibrate(s_cal, x_cal, alpha=0.1, target=1, reference=None)
    s, x = linear_world(30, 2)
    s[15:] = -s[15:]  # reversed: the most relevant patches named least relevant
    out = gate.verify(s, x, target=1)
    assert out["early"][:15].any() and not out["early"][15:].any()
    assert not out["passed"][15:].any() and set(out["method"][15:]) == {"feature_ablation"}
    assert (out["queries"][15:] == 9 + 49 + 1).all()  # the full check, then FeatureAblation's F + 1


def test_two_stage_settings_are_checked():
    with pytest.raises(ConfigError, match="statistic='contrast'"):
        Gate(statistic="deletion", early_alpha=0.1)
    with pytest.raises(ConfigError, match="early_alpha must be in"):
        Gate(early_alpha=1.0)
    with pytest.raises(ConfigError, match="at least 2 fractions"):
        Gate(early_alpha=0.1, fractions=(0.5,))
    with pytest.raises(ConfigError, match="cannot be combined"):
        Gate(early_alpha=0.1, abnormal_alpha=0.3)
    with pytest.raises(ConfigError, match="early_index"):
        Gate(early_index=4)
    assert not Gate(early_alpha=0.1).two_stage  # not calibrated yet: one stage


def test_sidecar_keeps_the_first_stage_and_serving_uses_it(tmp_path):
    bb = BlackBox(LinearPatchTarget(), num_classes=2)
    ckpt = make_checkpoint(tmp_path / "explainer.ckpt", bb)
    explainer = ExplainerModule.from_checkpoint(ckpt, target=bb)
    x = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gate = Gate(bb, explainer.masker, fallback=None, early_alpha=0.2)
    gate.calibrate(explainer, x[:100], alpha=0.2, reference=None)
    gate.save(ckpt)
    back = load_gate(ckpt, explainer, "on")  # as fex-serve loads it
    assert (back.early_alpha, back.early_index, back.early_threshold) == (0.2, gate.early_index, gate.early_threshold)
    out = explainer.explain(x[100:])
    mine = gate.check(out["scores"], x[100:], out["target"])
    verdicts = gate_verdicts(SimpleNamespace(gate=back), x[100:], out)
    assert mine["early"].any() and not mine["early"].all()  # both stages are exercised (measured: 17 of 20 early)
    assert [v["early"] for v in verdicts] == mine["early"].tolist()
    probe = torch.zeros(20, dtype=torch.long)
    probe[0] = len(back.probe)  # the loaded gate asks its target probe once, on the request that comes first
    assert [v["queries"] for v in verdicts] == (mine["queries"] + probe).tolist() and len(back.probe) == 8
    assert [v["passed"] for v in verdicts] == (mine["early"] | (mine["statistic"] >= gate.threshold)).tolist()
    assert not any(v["target_changed"] for v in verdicts)
    side = sidecar_path(ckpt)
    meta = json.loads(side.read_text())
    meta["early_threshold"] = "inf"  # said, not a number: no input passes early
    side.write_text(json.dumps(meta))
    never = Gate.load(ckpt, blackbox=bb, masker=explainer.masker)
    assert never.early_threshold == math.inf and not never.check(out["scores"], x[100:], out["target"])["early"].any()
    for key in ("early_alpha", "early_index", "early_threshold"):  # a sidecar from before: one stage
        meta.pop(key)
    side.write_text(json.dumps(meta))
    assert not Gate.load(ckpt).two_stage
    meta["early_index"] = "first"
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="early_index"):
        Gate.load(ckpt)
