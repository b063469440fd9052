"""Faithfulness metrics on hand-built cases with answers computed by hand."""
import pytest
import torch

from fex import metrics as M
from fex.blackbox import BlackBox
from fex.errors import InputError
from fex.maskers.image import PatchMasker

W = torch.tensor([0.4, 0.3, 0.2, 0.1])


def linear_probs(x: torch.Tensor) -> torch.Tensor:
    """p(class 1) = sum_f w_f * pixel_f on a 1x4 image: linear in feature presence."""
    s = x.flatten(1) @ W
    return torch.stack([1 - s, s], 1)


@pytest.fixture
def setup():
    bb = BlackBox(linear_probs, output="probs")
    masker = PatchMasker(grid=(1, 4), input_shape=(1, 1, 4))  # one pixel per feature
    x = torch.ones(1, 1, 1, 4)
    return bb, masker, x, torch.tensor([1])


def test_order_masks_deletion_and_insertion():
    scores = torch.tensor([[0.1, 0.9, 0.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    d = M.order_masks(scores, valid, mode="deletion")
    assert d[0].tolist() == [[1, 1, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]]
    i = M.order_masks(scores, valid, mode="insertion")
    assert i[0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1], [1, 1, 1]]


def test_auc_trapezoid():
    assert M.auc(torch.tensor([[1.0, 0.5, 0.0]])).item() == pytest.approx(0.5)
    assert M.auc(torch.tensor([[0.3, 0.3, 0.3, 0.3]])).item() == pytest.approx(0.3)


def test_linear_blackbox_curves_by_hand(setup):
    bb, masker, x, t = setup
    # best order: curve 1, .6, .3, .1, 0 -> AUC (1.6+.9+.4+.1)/8 = 0.375
    assert M.deletion_auc(bb, masker, x, W[None], t).item() == pytest.approx(0.375, abs=1e-6)
    # insertion 0, .4, .7, .9, 1 -> (0.4+1.1+1.6+1.9)/8 = 0.625
    assert M.insertion_auc(bb, masker, x, W[None], t).item() == pytest.approx(0.625, abs=1e-6)
    # worst order: deletion 1, .9, .7, .4, 0 -> 0.625
    assert M.deletion_auc(bb, masker, x, -W[None], t).item() == pytest.approx(0.625, abs=1e-6)
    curve = M.perturbation_curve(bb, masker, x, W[None], t, "deletion")
    assert M.aopc(curve).item() == pytest.approx((0 + 0.4 + 0.7 + 0.9 + 1.0) / 5, abs=1e-6)


def test_eraser_by_hand(setup):
    bb, masker, x, t = setup
    out = M.eraser(bb, masker, x, W[None], t, fractions=(0.25, 0.5))
    # top-1 = {0}, top-2 = {0, 1}: comp = mean(1-.6, 1-.3) = .55; suff = mean(1-.4, 1-.7) = .45
    assert out["comprehensiveness"].item() == pytest.approx(0.55, abs=1e-6)
    assert out["sufficiency"].item() == pytest.approx(0.45, abs=1e-6)
    assert M.comprehensiveness(bb, masker, x, W[None], t, (0.25,)).item() == pytest.approx(0.4, abs=1e-6)
    assert M.sufficiency(bb, masker, x, W[None], t, (0.25,)).item() == pytest.approx(0.6, abs=1e-6)


def test_rationale_masks_at_least_one_feature_and_respects_valid():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    valid = torch.tensor([[True, True, True, False]])
    r = M.rationale_masks(scores, valid, (0.01, 0.5, 1.0))
    assert r[0].tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]]


def test_faithfulness_correlation_is_exact_for_a_linear_box(setup):
    bb, masker, x, t = setup
    assert M.faithfulness_correlation(bb, masker, x, W[None], t, 0.5, 32).item() == pytest.approx(1.0, abs=1e-5)
    assert M.faithfulness_correlation(bb, masker, x, -W[None], t, 0.5, 32).item() == pytest.approx(-1.0, abs=1e-5)


def test_pearson_known_values():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [1.0, 2.0, 3.0]])
    assert M.pearson(a, b).tolist() == pytest.approx([1.0, 0.0])


def test_metrics_do_not_depend_on_batching(setup):
    bb, masker, _, _ = setup
    x = torch.rand(5, 1, 1, 4)
    scores = torch.rand(5, 4)
    t = torch.ones(5, dtype=torch.long)
    full = M.faithfulness(bb, masker, x, scores, t, num_subsets=8)
    for i in range(5):
        one = M.faithfulness(bb, masker, x[i:i + 1], scores[i:i + 1], t[i:i + 1], num_subsets=8)
        for k in ("deletion_auc", "insertion_auc", "aopc", "comprehensiveness", "sufficiency"):
            assert one[k].item() == pytest.approx(full[k][i].item(), abs=1e-6)


def test_substrate_is_configurable_without_touching_the_original():
    m = PatchMasker(grid=(2, 2), input_shape=(1, 4, 4))
    b = M.with_substrate(m, "blur")
    assert b.baseline == "blur" and m.baseline == "zeros"
    assert M.with_substrate(m, None) is m
    with pytest.raises(InputError, match="substrate"):
        M.with_substrate(m, "noise")
    x = torch.ones(1, 1, 4, 4)
    sub = M.with_substrate(m, "mean")
    sub.fill = [0.5]
    # with every feature removed the input becomes the substrate
    assert sub.apply(x, torch.zeros(1, 1, 4)).unique().tolist() == [0.5]


def test_one_step_per_feature_area_is_each_examples_own():
    """steps=None: S is the batch's largest feature count, so a 2-feature example's curve repeats points
    when batched with a 4-feature one; its area and AOPC are still those of its own 3 points."""
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    frac = M.curve_fractions(valid)
    assert frac.tolist() == [[0.0, 0.0, 0.5, 1.0, 1.0], [0.0, 0.25, 0.5, 0.75, 1.0]]  # round half to even
    curve = torch.tensor([[1.0, 1.0, 0.4, 0.0, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0]])
    # own points (0, 1), (.5, .4), (1, 0): (1 + .4)/2 * .5 + (.4 + 0)/2 * .5 = 0.45; the linear one: 0.5
    torch.testing.assert_close(M.auc(curve, frac), torch.tensor([0.45, 0.5]))
    torch.testing.assert_close(M.aopc(curve, frac), torch.tensor([(0 + 0.6 + 1.0) / 3, 0.5]))
    assert M.auc(curve)[0] != pytest.approx(0.45)  # evenly spaced: what the batch would have said
    alone = M.curve_fractions(valid[:1])
    torch.testing.assert_close(M.auc(curve[:1, [0, 2, 3]], alone), torch.tensor([0.45]))


def test_deletion_auc_with_one_step_per_word_does_not_depend_on_the_batch():
    from fex.maskers.text import WordMasker
    from tests.text_helpers import planted_word_blackbox

    masker = WordMasker(max_length=32)
    bb = BlackBox(planted_word_blackbox("great"), output="probs", num_classes=2)
    texts = ["a great film", "the plot is great and the cast is fine too"]
    x = masker.encode(texts)
    scores = torch.randn(2, int(masker.valid(x).sum(1).max()), generator=torch.Generator().manual_seed(0))
    t = torch.ones(2, dtype=torch.long)
    both = M.deletion_auc(bb, masker, x, scores, t)
    first = masker.encode(texts[:1])
    alone = M.deletion_auc(bb, masker, first, scores[:1, : int(masker.valid(first).sum())], t[:1])
    torch.testing.assert_close(both[:1], alone)
    ins = M.faithfulness(bb, masker, x, scores, t)["insertion_auc"]
    torch.testing.assert_close(ins[:1], M.insertion_auc(bb, masker, first, scores[:1, :3], t[:1]))
