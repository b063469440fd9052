"""The gate's deletion statistic, its sequential check and Mondrian thresholds per abnormality stratum
(fex.gate): hand-computed areas, exact early stopping, calibrated false-alarm rates."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError
from fex.gate import (Gate, binomial_sf, conformal_rank, conformal_threshold, deletion_area, deletion_area_bounds,
                      removal_masks, removal_positions, sidecar_path)
from fex.maskers.image import PatchMasker
from fex.module import ExplainerModule
from fex.ood import AbnormalityScore, Prescreen
from fex.serve.engine import gate_verdicts
from fex.serve.loading import load_gate
from helpers import PLANTED, planted_blackbox, synthetic_images
from synth import LinearPatchTarget, make_checkpoint

F = 16


def test_deletion_area_and_its_bounds_by_hand():
    valid = torch.tensor([[True, True, True, True, False]])  # n = 4
    assert removal_positions(valid, (0.1, 0.5, 0.75)).tolist() == [[0.25, 0.5, 0.75]]  # ceil(f n) / n
    pos = torch.tensor([[0.25, 0.5, 0.75]])
    p_full, p_top = torch.tensor([1.0]), torch.tensor([[0.5, 0.7, 0.0]])
    # running minimum 1, .5, .5 (the rise to .7 does not count), 0, then flat to x = 1:
    # (1 + .5)/2 * .25 + (.5 + .5)/2 * .25 + (.5 + 0)/2 * .25 + 0 = .1875 + .125 + .0625
    assert deletion_area(p_full, p_top, pos).item() == pytest.approx(0.375)
    # flat after the last size: one size at x = .5 with p = .2 -> (1 + .2)/2 * .5 + .2 * .5 = .4
    assert deletion_area(p_full, torch.tensor([[0.2]]), torch.tensor([[0.5]])).item() == pytest.approx(0.4)
    # only the first size measured: the rest lies in [0, .5] -> area in [.25, .5625]
    lo, hi = deletion_area_bounds(p_full, p_top, torch.tensor([[True, False, False]]), pos)
    assert lo.item() == pytest.approx(0.1875 + 0.0625) and hi.item() == pytest.approx(0.1875 + 0.125 * 3)
    lo, hi = deletion_area_bounds(p_full, p_top, torch.ones(1, 3, dtype=torch.bool), pos)
    assert lo.item() == hi.item() == pytest.approx(0.375)


def linear_world(n: int, seed: int, noise: float = 1.5):
    """A linear patch target (class 1 rises with the weighted patch means) and noisy right explanations."""
    w = torch.linspace(-1, 2, 49)
    g = torch.Generator().manual_seed(seed)
    return w + noise * torch.randn(n, 49, generator=g), torch.rand(n, 1, 28, 28, generator=g)


def linear_target() -> BlackBox:
    return BlackBox(LinearPatchTarget(weights=torch.linspace(-1, 2, 49).tolist(), scale=0.3), num_classes=2)


def test_sequential_check_decides_as_the_full_check_with_fewer_queries():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    s, x = linear_world(300, 0)
    gate = Gate(bb, masker, statistic="deletion", fractions=(0.1, 0.2, 0.3, 0.5, 1.0), fallback=None)
    assert gate.queries_per_input == 6
    q0 = bb.queries
    full = gate.check(s, x, target=1)
    assert full["queries"].tolist() == [6] * 300 and bb.queries - q0 == 300 * 6
    # the full statistic is -area of the curve through the exact top-removal queries
    top = removal_masks(full["scores"], full["valid"], gate.fractions, "top")
    p_top = bb(masker.apply(x, top))[:, 1].view(300, 5)  # [B*J, C] -> [B, J]
    pos = removal_positions(full["valid"], gate.fractions)
    assert torch.allclose(full["statistic"], -deletion_area(full["p_full"], p_top, pos), atol=1e-6)
    thr = torch.quantile(full["statistic"], 0.3).item()
    q0 = bb.queries
    seq = gate.check(s, x, target=1, thresholds=thr)
    assert torch.equal(seq["statistic"] >= thr, full["statistic"] >= thr)  # the same decisions
    assert bb.queries - q0 == int(seq["queries"].sum())  # every query counted
    assert (seq["queries"] <= 6).all() and seq["queries"].float().mean() < 6  # and fewer of them
    # a threshold below every possible area (-1): every input passes on the prediction query alone
    assert gate.check(s, x, target=1, thresholds=-1.0)["queries"].tolist() == [1] * 300


def test_relative_deletion_is_the_area_as_a_share_of_the_prediction_and_sequential():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    s, x = linear_world(300, 0)
    fr = (0.1, 0.2, 0.3, 0.5, 1.0)
    absolute = Gate(bb, masker, statistic="deletion", fractions=fr, fallback=None).check(s, x, target=1)
    gate = Gate(bb, masker, statistic="relative_deletion", fractions=fr, fallback=None)
    assert gate.sequential and gate.queries_per_input == 6
    rel = gate.check(s, x, target=1)
    assert torch.allclose(rel["statistic"], absolute["statistic"] / absolute["p_full"], atol=1e-6)
    assert (rel["statistic"] >= -1 - 1e-6).all() and (rel["statistic"] <= 0).all()  # area <= p(y|x) * 1
    # the two order inputs differently where p(y|x) differs: the relative one is not a rescaled copy
    assert not torch.equal(rel["statistic"].argsort(), absolute["statistic"].argsort())
    thr = torch.quantile(rel["statistic"], 0.3).item()
    q0 = bb.queries
    seq = gate.check(s, x, target=1, thresholds=thr)
    assert torch.equal(seq["statistic"] >= thr, rel["statistic"] >= thr)  # the same decisions, fewer queries
    assert bb.queries - q0 == int(seq["queries"].sum()) and seq["queries"].float().mean() < 6
    with pytest.raises(ConfigError, match="increasing fractions"):
        Gate(bb, masker, statistic="relative_deletion", fractions=(0.5, 0.1))


def test_deletion_gate_passes_right_and_catches_shuffled_explanations():
    bb, masker = planted_blackbox(), PatchMasker((4, 4), (1, 16, 16))

    def oracle(n, seed):
        sc = 0.01 * torch.rand(n, F, generator=torch.Generator().manual_seed(seed))
        sc[:, list(PLANTED)] += 1
        return sc

    gate = Gate(bb, masker, statistic="deletion")
    gate.calibrate(oracle(200, 0), synthetic_images(200, seed=0), alpha=0.1, target=1, reference=None)
    x = synthetic_images(40, seed=1)
    good = gate.verify(oracle(40, 1), x, target=1)
    assert int((~good["passed"]).sum()) <= 8
    # removing the top ceil(0.1 * 16) = 2 features removes both planted patches: p falls to ~0.001, and
    # the decision is mostly certain after that one query (prediction + 1 of at most 1 + 4)
    assert good["queries"][good["passed"]].float().mean() <= 3
    perm = torch.randperm(F, generator=torch.Generator().manual_seed(3))
    assert not set(perm[list(PLANTED)].tolist()) & set(PLANTED)
    q0 = bb.queries
    bad = gate.verify(oracle(40, 1)[:, perm], x, target=1)
    assert not bad["passed"].any() and set(bad["method"]) == {"feature_ablation"}
    assert bb.queries - q0 == int(bad["queries"].sum()) and (bad["queries"] <= 5 + F + 1).all()


class PixelMean(AbnormalityScore):
    """One statistic: an image's mean pixel (a test score, not a fex one)."""

    name = "pixel_mean"

    def statistics(self, x, target=None):
        return x.flatten(1).mean(1, keepdim=True)


def test_mondrian_thresholds_per_stratum_keep_the_false_alarm_rate():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    pre = Prescreen(PixelMean(), rate=0.2)
    pre.calibrate(torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    with pytest.raises(ConfigError, match="abnormal_alpha"):
        Gate(bb, masker, abnormality=pre, abnormal_alpha=0.05)  # below alpha
    gate = Gate(bb, masker, statistic="deletion", fallback=None, abnormality=pre, abnormal_alpha=0.3)
    assert gate.unflagged_alpha() == pytest.approx((0.1 - 0.2 * 0.3) / 0.8)  # 0.05
    with pytest.raises(ConfigError, match="spends more than alpha"):
        Gate(bb, masker, abnormality=pre, abnormal_alpha=0.6).unflagged_alpha()
    s_val, x_val = linear_world(1000, 0)
    gate.calibrate(s_val, x_val, alpha=0.1, target=1, reference=None)
    st = gate.check(s_val, x_val, target=1)["statistic"]
    fl = pre.flag(x_val)
    assert gate.threshold == pytest.approx(conformal_threshold(st[~fl], 0.05))
    assert gate.abnormal_threshold == pytest.approx(conformal_threshold(st[fl], 0.3))
    s_test, x_test = linear_world(3000, 1)
    out = gate.verify(s_test, x_test, target=1)
    fl = pre.flag(x_test)
    full = gate.check(s_test, x_test, target=1)["statistic"]  # the full statistic, for the rates
    assert torch.equal(out["passed"], full >= torch.where(fl, gate.abnormal_threshold, gate.threshold))
    fail = ~out["passed"]
    # ~20% flagged, failing at ~30%; the rest at ~5%; overall ~10% (calibration sd ~0.03 / 0.007 per stratum)
    assert abs(fail[fl].float().mean().item() - 0.3) < 0.1 and abs(fail[~fl].float().mean().item() - 0.05) < 0.03
    assert abs(fail.float().mean().item() - 0.1) < 0.04


def test_a_stratum_too_small_for_its_alpha_is_said_not_silent():
    bb, masker = linear_target(), PatchMasker((7, 7), (1, 28, 28))
    pre = Prescreen(PixelMean(), rate=0.5)
    pre.calibrate(torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    # half flagged at 0.19: the unflagged half keeps alpha 0.01, below one rank among ~40 right explanations
    gate = Gate(bb, masker, statistic="deletion", fallback=None, abnormality=pre, abnormal_alpha=0.19)
    s_val, x_val = linear_world(80, 0)
    with pytest.warns(UserWarning, match="stratum 'unflagged' has no threshold"):
        gate.calibrate(s_val, x_val, alpha=0.1, target=1, reference=None)
    assert gate.threshold == -math.inf and math.isfinite(gate.abnormal_threshold)


def test_sidecar_keeps_statistic_and_strata(tmp_path):
    bb = BlackBox(LinearPatchTarget(), num_classes=2)
    ckpt = make_checkpoint(tmp_path / "explainer.ckpt", bb)
    explainer = ExplainerModule.from_checkpoint(ckpt, target=bb)
    pre = Prescreen(PixelMean(), rate=0.2)
    pre.calibrate(torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    x = torch.rand(60, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gate = Gate(statistic="deletion", fallback=None, abnormality=pre, abnormal_alpha=0.3)
    gate.calibrate(explainer, x, alpha=0.2, reference=None)
    gate.save(ckpt)
    with pytest.raises(ConfigError, match="abnormality=prescreen"):
        Gate.load(ckpt).verify(explainer, x[:2])
    back = Gate.load(ckpt, abnormality=pre)
    assert (back.statistic, back.abnormal_alpha, back.threshold, back.abnormal_threshold) == (
        "deletion", 0.3, gate.threshold, gate.abnormal_threshold)
    assert torch.equal(back.verify(explainer, x)["passed"], gate.verify(explainer, x)["passed"])
    side = sidecar_path(ckpt)
    meta = json.loads(side.read_text())
    for key in ("statistic", "abnormal_alpha", "abnormal_threshold"):  # a sidecar from before: the contrast gate
        meta.pop(key)
    side.write_text(json.dumps(meta))
    old = Gate.load(ckpt)
    assert old.statistic == "contrast" and not old.stratified and old.queries_per_input == 9
    meta["statistic"] = "median"
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="statistic"):
        Gate.load(ckpt)
    assert math.isfinite(gate.threshold)


def test_binomial_tail_and_conformal_rank_by_hand():
    # P(Bin(3, 0.5) >= 2) = (3 + 1) / 8
    assert binomial_sf(2, 3, 0.5) == pytest.approx(0.5) and binomial_sf(0, 3, 0.5) == 1 and binomial_sf(4, 3, 0.5) == 0
    assert binomial_sf(3, 10, 0.1) == pytest.approx(
        1 - sum(math.comb(10, i) * 0.1 ** i * 0.9 ** (10 - i) for i in range(3)), rel=1e-12)
    assert conformal_rank(191, 0.1) == 19  # floor(0.1 * 192)
    k = conformal_rank(191, 0.1, confidence=0.9)  # the largest k with P(Bin(191, 0.1) >= k) >= 0.9
    assert binomial_sf(k, 191, 0.1) >= 0.9 > binomial_sf(k + 1, 191, 0.1) and 10 <= k < 19
    assert conformal_rank(9, 0.1, confidence=0.9) == 0  # too few: no threshold at that confidence
    with pytest.raises(ConfigError, match="confidence"):
        conformal_threshold(torch.rand(10), 0.1, confidence=1.5)


def test_confident_calibration_bounds_this_calibrations_false_alarms_with_the_stated_probability():
    # uniform statistics: the threshold T_(k) *is* this calibration's false-alarm rate
    g = torch.Generator().manual_seed(0)
    cal = torch.rand(4000, 200, generator=g)
    plain = torch.tensor([conformal_threshold(c, 0.1) for c in cal])
    pac = torch.tensor([conformal_threshold(c, 0.1, confidence=0.9) for c in cal])
    assert abs(plain.mean().item() - 20 / 201) < 0.003  # on average alpha (k/(n+1))...
    assert 0.35 < (plain > 0.1).float().mean().item() < 0.6  # ...but above it for nearly half the calibrations
    assert (pac > 0.1).float().mean().item() < 0.1 + 0.015  # at most 1 - confidence of them
    assert (pac <= plain).all()


def test_sidecar_keeps_confidence_and_refuses_a_bad_one(tmp_path):
    bb = BlackBox(LinearPatchTarget(), num_classes=2)
    ckpt = make_checkpoint(tmp_path / "explainer.ckpt", bb)
    explainer = ExplainerModule.from_checkpoint(ckpt, target=bb)
    x = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="confidence"):
        Gate(statistic="deletion", confidence=1.0)
    gate = Gate(statistic="deletion", fallback=None, confidence=0.9)
    with pytest.raises(ConfigError, match="too few to calibrate at alpha=0.1 with confidence 0.9"):
        gate.calibrate(explainer, x[:15], alpha=0.1, reference=None)  # P(Bin(15, 0.1) >= 1) = 0.79 < 0.9
    Gate(statistic="deletion", fallback=None).calibrate(explainer, x[:15], alpha=0.1, reference=None)  # k = 1
    gate.calibrate(explainer, x, alpha=0.2, reference=None)
    plain = Gate(statistic="deletion", fallback=None)
    plain.calibrate(explainer, x, alpha=0.2, reference=None)
    assert gate.threshold <= plain.threshold and gate.calibration["confidence"] == 0.9
    gate.save(ckpt)
    back = Gate.load(ckpt)
    assert (back.confidence, back.threshold) == (0.9, gate.threshold)
    side = sidecar_path(ckpt)
    meta = json.loads(side.read_text())
    meta["confidence"] = 2
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="confidence"):
        Gate.load(ckpt)


def test_served_verdicts_use_the_sequential_check_and_a_stratified_gate_is_not_served(tmp_path):
    bb = BlackBox(LinearPatchTarget(), num_classes=2)
    ckpt = make_checkpoint(tmp_path / "explainer.ckpt", bb)
    explainer = ExplainerModule.from_checkpoint(ckpt, target=bb)
    x = torch.rand(80, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gate = Gate(statistic="relative_deletion", fallback=None)
    gate.calibrate(explainer, x[:60], alpha=0.2, reference=None)
    gate.save(ckpt)
    served = load_gate(ckpt, explainer, "on")
    out = explainer.explain(x[60:])
    q0 = bb.queries
    verdicts = gate_verdicts(SimpleNamespace(gate=served), x[60:], out)
    assert bb.queries - q0 == sum(v["queries"] for v in verdicts) < 20 * 6  # sequential: fewer than the full check
    full = served.check(out["scores"], x[60:], out["target"])["statistic"]
    assert [v["passed"] for v in verdicts] == (full >= gate.threshold).tolist()  # the full check's decisions
    pre = Prescreen(PixelMean(), rate=0.2)
    pre.calibrate(torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    strata = Gate(statistic="deletion", fallback=None, abnormality=pre, abnormal_alpha=0.3)
    strata.calibrate(explainer, x, alpha=0.2, reference=None)
    strata.save(ckpt)
    with pytest.raises(ConfigError, match="abnormality strata"):
        load_gate(ckpt, explainer, "on")
    assert load_gate(ckpt, explainer, "auto") is None
