"""Attribution-abnormality OOD scores, the prescreen and Gate(prescreen=...) (fex.ood): known answers."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fex.errors import ConfigError, InputError, TargetError
from fex.gate import Gate
from fex.maskers.image import PatchMasker
from fex.ood import (AbnormalityScore, AttributionAbnormality, FlagUnion, GradientAbnormality, Prescreen,
                     TargetConfidence, auroc, calibration_halves, split_calibration, upper_conformal_threshold,
                     zscore_abnormality)
from fex.shifts import (flip_images, photo_patches, printed_letters, rotate_images, scale_images, sklearn_digits,
                        translate_images, turn_images)
from helpers import PLANTED, planted_blackbox, synthetic_images

F = 16


def test_zscore_auroc_and_threshold_by_hand():
    v = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    a = zscore_abnormality(v, torch.zeros(2), torch.tensor([1.0, 2.0]))
    eps = 1e-3 * 1.5
    assert a.tolist() == pytest.approx([(1 / (1 + eps) + 2 / (2 + eps)) / 2, 0.0])
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5])) == 0.5
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5  # a tie counts half
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0])) == 0.0
    s = torch.arange(1.0, 10.0)  # n = 9, rate 0.2: k = ceil(0.8 * 10) = 8 -> the 8th smallest
    assert upper_conformal_threshold(s, 0.2) == 8.0
    assert upper_conformal_threshold(torch.arange(3.0), 0.1) == math.inf  # too few to flag at 10%


class QuadrantNet(nn.Module):
    """A = relu(x) on [B, 1, 2, 2] (the spatial block), then a linear head: log p gradients are analytic."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.block = nn.ReLU()
        self.head = nn.Linear(4, w.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(w)
        self.head.weight.requires_grad_(False)  # a frozen target, as BlackBox models are

    def forward(self, x):
        return self.head(self.block(x).flatten(1))


def test_gradient_abnormality_matches_the_analytic_gradient():
    w = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, -1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    net = QuadrantNet(w)
    x = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]]], [[[-1.0, -1.0], [-1.0, 3.0]]]])
    a = x.clamp_min(0).flatten(1)  # [B, 4]
    p = torch.softmax(a @ w.T, -1)
    y = p.argmax(-1)
    g = w[y] - p @ w  # d log p_y / d a = w_y - sum_c p_c w_c
    avg = GradientAbnormality(net, "average").statistics(x)
    assert avg.shape == (2, 1) and torch.allclose(avg[:, 0], g.mean(1), atol=1e-6)
    zeros = GradientAbnormality(net, "zeros").statistics(x)
    assert torch.allclose(zeros[:, 0], ((g * a) == 0).float().mean(1))
    assert zeros[1, 0] == 0.75  # three of four activations are 0 (negative inputs)
    with pytest.raises(TargetError, match="white-box"):
        GradientAbnormality(lambda t: t)


def stub_explainer(tau: float = 2.0):
    """policy_logits(x) = the 4 quadrant means of x for each of 2 classes (a zero-query 'attribution')."""
    masker = PatchMasker((2, 2), (1, 8, 8))
    obj = SimpleNamespace(temperature=tau, attribution="logit")

    def policy_logits(x):
        q = torch.nn.functional.avg_pool2d(x, 4).flatten(1)  # [B, 4]
        return torch.stack([q, -q], 2)  # [B, F=4, C=2]

    def read_out(logits, cls, valid):
        return tau * logits.gather(2, cls.view(-1, 1, 1).expand(-1, logits.shape[1], 1)).squeeze(2) * valid

    return SimpleNamespace(masker=masker, objective=obj, policy_logits=policy_logits, read_out=read_out)


def test_attribution_abnormality_is_the_mean_abs_zscore_of_the_attribution():
    g = torch.Generator().manual_seed(0)
    x_val = torch.rand(400, 1, 8, 8, generator=g)
    sc = AttributionAbnormality(stub_explainer(), "logits").fit(x_val)
    v = sc.statistics(x_val)
    assert v.shape == (400, 8)
    assert torch.allclose(sc.mean, v.mean(0)) and torch.allclose(sc.std, v.std(0))
    # uniform pixels: a quadrant mean (16 pixels) has mean 1/2 and std sqrt(1/12/16); the statistics are
    # +-tau * quadrant means, so a constant image 3 std above 1/2 is 3 std off in every statistic
    assert sc.mean.abs().tolist() == pytest.approx([1.0] * 8, rel=0.02)
    off = torch.full((1, 1, 8, 8), 0.5 + 3 * (1 / 12 / 16) ** 0.5)
    assert sc.score(off).item() == pytest.approx(3.0, rel=0.1)
    assert sc.score(torch.full((1, 1, 8, 8), 0.5)).item() < 0.2
    assert AttributionAbnormality(stub_explainer(), "scores").fit(x_val).statistics(x_val[:3], 0).shape == (3, 4)
    dark = x_val[:50] * 0.2
    assert auroc(sc.score(x_val[:200]), sc.score(dark)) == 1.0
    with pytest.raises(ConfigError, match="not calibrated"):
        AttributionAbnormality(stub_explainer()).score(x_val[:2])


class PixelSpread(AbnormalityScore):
    """One statistic: the standard deviation of an image's pixels (a test score, not a fex one)."""

    name = "pixel_spread"

    def statistics(self, x, target=None):
        return x.flatten(1).std(1, keepdim=True)


def test_prescreen_flags_the_stated_rate_in_distribution_and_every_shifted_input():
    pre = Prescreen(PixelSpread(), rate=0.1)
    pre.calibrate(synthetic_images(4000, seed=0))  # 2000 for the statistics, 2000 for the threshold
    rate = pre.flag(synthetic_images(4000, seed=1)).float().mean().item()
    assert 0.07 <= rate <= 0.13  # conformal: about 10% of new in-distribution inputs (sd of the rate ~0.007)
    assert pre.flag(0.4 + 0.3 * synthetic_images(100, seed=2)).all()  # low-contrast images: all flagged


def test_calibration_split_carries_per_input_targets_with_their_inputs():
    x, y = torch.arange(10.0), torch.arange(10) + 100
    (xa, ya), (xb, yb) = split_calibration(x, y, seed=3)
    assert torch.equal(ya, xa.long() + 100) and torch.equal(yb, xb.long() + 100)
    assert sorted(torch.cat([xa, xb]).tolist()) == x.tolist()  # two disjoint halves of all the inputs
    (_, one_a), (_, one_b) = split_calibration(x, 7)
    assert one_a == one_b == 7  # one target goes to both halves
    with pytest.raises(InputError, match="at least 4"):
        Prescreen(PixelSpread()).calibrate(synthetic_images(3, seed=0))


def oracle_scores(n, seed=0):
    s = 0.01 * torch.rand(n, F, generator=torch.Generator().manual_seed(seed))
    s[:, list(PLANTED)] += 1
    return s


def test_gate_with_prescreen_checks_only_flagged_inputs_with_exact_queries():
    bb, masker = planted_blackbox(), PatchMasker((4, 4), (1, 16, 16))
    pre = Prescreen(PixelSpread(), rate=0.1)
    pre.calibrate(synthetic_images(400, seed=0))
    gate = Gate(bb, masker, prescreen=pre)
    gate.calibrate(oracle_scores(200), synthetic_images(200, seed=0), alpha=0.1, target=1, reference=None)
    x = synthetic_images(40, seed=1)
    q0 = bb.queries
    good = gate.verify(oracle_scores(40, seed=1), x, target=1)
    fl = good["flagged"]
    assert int(fl.sum()) <= 10
    assert good["queries"][~fl].tolist() == [0] * int((~fl).sum())  # unflagged: no gate queries at all
    assert good["passed"][~fl].all() and torch.isnan(good["statistic"][~fl]).all()
    assert (good["queries"][fl] >= 9).all() and bb.queries - q0 == int(good["queries"].sum())
    # shifted inputs (low contrast, still class 1) with a shuffled explanation: all flagged, checked, caught
    xs = 0.4 + 0.3 * synthetic_images(20, seed=3)
    perm = torch.randperm(F, generator=torch.Generator().manual_seed(3))
    bad = gate.verify(oracle_scores(20, seed=3)[:, perm], xs, target=1)
    assert bad["flagged"].all() and not bad["passed"].any()
    assert bad["queries"].tolist() == [9 + F + 1] * 20 and set(bad["method"]) == {"feature_ablation"}


def test_new_shifts():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1
    assert rotate_images(x)[0, 0, 3, 0] == 1  # a quarter turn counter-clockwise: top-left -> bottom-left
    t = translate_images(x, dx=2, dy=1)
    assert t[0, 0, 1, 2] == 1 and t.sum() == 1
    assert translate_images(x, dx=-1).sum() == 0  # moved out of the frame
    xd, yd = sklearn_digits(size=28, n=10)
    assert xd.shape == (10, 1, 28, 28) and 0 <= xd.min() and xd.max() <= 1 and yd.tolist()[:3] == [0, 1, 2]
    # scale: a uniform 10x10 image shrunk to 60% is a centred 6x6 block of the same value on 0
    s = scale_images(torch.full((2, 1, 10, 10), 0.5), 0.6)
    assert torch.allclose(s[:, :, 2:8, 2:8], torch.tensor(0.5)) and s.sum() == pytest.approx(2 * 36 * 0.5)
    with pytest.raises(ValueError, match="scale factor"):
        scale_images(x, 0)
    p = photo_patches(size=28, n=6, seed=1)
    assert p.shape == (6, 1, 28, 28) and torch.allclose(p.amin((1, 2, 3)), torch.tensor(0.0))
    assert torch.allclose(p.amax((1, 2, 3)), torch.tensor(1.0)) and torch.equal(p, photo_patches(n=6, seed=1))
    assert not torch.equal(p, photo_patches(n=6, seed=2))
    assert torch.equal(flip_images(x)[..., 0], x[..., -1]) and torch.equal(flip_images(flip_images(x)), x)
    letters = printed_letters(size=28, n=8, seed=3)
    ink = (letters > 0.5).flatten(1).float().mean(1)
    assert letters.shape == (8, 1, 28, 28) and 0 <= letters.min() and letters.max() <= 1
    assert ((ink > 0.02) & (ink < 0.5)).all() and torch.equal(letters, printed_letters(n=8, seed=3))  # drawn, seeded


def test_turns_vertical_flips_and_printed_digits():
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(turn_images(x, 90), rotate_images(x), atol=1e-6)  # a quarter turn, the same way round
    assert torch.allclose(turn_images(x, 0), x, atol=1e-6)
    t = turn_images(x, 45)
    assert t.shape == x.shape and 0 <= t.min() and t.max() <= 1 and t[..., 0, 0].abs().max() < 0.3  # corners emptied
    assert torch.equal(flip_images(x, "vertical")[..., 0, :], x[..., -1, :])
    with pytest.raises(ValueError, match="flip axis"):
        flip_images(x, "diagonal")
    digits = printed_letters(n=6, seed=1, chars="0123456789")
    assert digits.shape == (6, 1, 28, 28) and not torch.equal(digits, printed_letters(n=6, seed=1))
    with pytest.raises(ValueError, match="at least one character"):
        printed_letters(n=1, chars="")


def test_target_confidence_is_one_minus_p_with_one_query_each():
    bb = planted_blackbox()
    x = torch.cat([synthetic_images(6, seed=0), 0.5 * torch.ones(2, 1, 16, 16)])
    with bb.uncounted():
        p = bb(x)
    tc = TargetConfidence(bb).fit(x)
    q0 = bb.queries
    assert torch.allclose(tc.score(x), 1 - p.max(-1).values, atol=1e-6)  # no target: the predicted class
    assert torch.allclose(tc.score(x, 0), 1 - p[:, 0], atol=1e-6)
    assert bb.queries - q0 == 2 * len(x) and tc.cost["queries"] == 1
    with pytest.raises(ConfigError, match="not calibrated"):
        TargetConfidence(bb).score(x)


class PixelMean(AbnormalityScore):
    """One statistic: an image's mean pixel (a test score)."""

    name = "pixel_mean"

    def statistics(self, x, target=None):
        return x.flatten(1).mean(1, keepdim=True)


def test_flag_union_flags_where_any_part_does_and_measures_its_rate():
    x_val = synthetic_images(1000, seed=0)
    a, b = Prescreen(PixelSpread(), rate=0.1), Prescreen(PixelMean(), rate=0.1)
    union = FlagUnion(a, b)
    rate = union.calibrate(x_val)
    _, held = calibration_halves(1000)  # the rate is measured on the half no score was fitted on
    both = a.flag(x_val[held]) | b.flag(x_val[held])
    assert rate == pytest.approx(both.float().mean().item()) and 0.1 <= rate <= 0.25
    x = torch.cat([synthetic_images(50, seed=1), 0.4 + 0.3 * synthetic_images(5, seed=2)])
    assert torch.equal(union.flag(x), a.flag(x) | b.flag(x)) and union.flag(x)[-5:].all()
    gate = Gate(planted_blackbox(), PatchMasker((4, 4), (1, 16, 16)), statistic="relative_deletion",
                abnormality=union, abnormal_alpha=0.3, probes=0)
    assert gate.unflagged_alpha() == pytest.approx((0.1 - rate * 0.3) / (1 - rate))
    with pytest.raises(ConfigError, match="at least one"):
        FlagUnion()
