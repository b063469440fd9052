"""Baselines on black boxes whose right attributions are known."""
import pytest
import torch

from fex import baselines as B
from fex.blackbox import BlackBox
from fex.errors import InputError, TargetError
from fex.maskers.image import PatchMasker
from tests.synth import LinearPatchTarget, make_checkpoint

W = torch.tensor([0.05, 0.3, 0.1, 0.2, 0.0, 0.15, 0.1, 0.1, 0.0])  # sums to 1


class LinearProbs(torch.nn.Module):
    """p(class 1) = sum_f w_f * mean(patch f) over a 3x3 grid on 6x6 images: exactly linear."""

    def __init__(self):
        super().__init__()
        self.inner = LinearPatchTarget(grid=3, size=6, weights=W.tolist())

    def forward(self, x):
        s = self.inner(x)[:, 1]
        return torch.stack([1 - s, s], 1)


@pytest.fixture
def linear():
    bb = BlackBox(LinearProbs(), output="probs")
    masker = PatchMasker(grid=(3, 3), input_shape=(1, 6, 6))
    return bb, masker, torch.ones(2, 1, 6, 6)


@pytest.mark.parametrize("cls,kw,tol", [
    (B.FeatureAblation, {}, 1e-5),
    (B.ShapleyValueSampling, {"n_samples": 3}, 1e-5),
    (B.KernelShap, {"n_samples": 300}, 1e-3),
    (B.IntegratedGradients, {"n_steps": 16}, 1e-4),
])
def test_exact_on_a_linear_box(linear, cls, kw, tol):
    bb, masker, x = linear
    scores = cls(bb, masker, **kw).attribute(x, 1)
    assert scores.shape == (2, 9)
    torch.testing.assert_close(scores, W.expand(2, 9), atol=tol, rtol=0)


def test_rise_and_lime_rank_the_weights(linear):
    bb, masker, x = linear
    for m in (B.Rise(bb, masker, n_masks=2000), B.Lime(bb, masker, n_samples=400, alpha=1e-4)):
        s = m.attribute(x, 1)[0]
        assert torch.corrcoef(torch.stack([s, W]))[0, 1] > 0.9, type(m).__name__


@pytest.mark.parametrize("name", ["kernel_shap", "lime", "feature_ablation", "shapley_sampling",
                                  "integrated_gradients", "rise"])
def test_only_patch_3_matters(name):
    w = torch.zeros(49)
    w[3] = 6.0
    bb = BlackBox(LinearPatchTarget(weights=w.tolist()), output="logits")
    masker = PatchMasker(grid=(7, 7), input_shape=(1, 28, 28))
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    budget = {"kernel_shap": {"n_samples": 100}, "lime": {"n_samples": 100}, "shapley_sampling": {"n_samples": 1},
              "rise": {"n_masks": 300}}.get(name, {})
    s = B.METHODS[name](bb, masker, **budget).attribute(x, 1)
    assert s.argmax(1).tolist() == [3, 3]


def test_query_accounting(linear):
    bb, masker, x = linear
    for m, per in ((B.KernelShap(bb, masker, n_samples=40), 40), (B.FeatureAblation(bb, masker), 10),
                   (B.Rise(bb, masker, n_masks=64, batch=16), 64), (B.RandomAttribution(bb, masker), 0),
                   (B.IntegratedGradients(bb, masker, n_steps=8), 8)):
        bb.reset_queries()
        m.attribute(x, 1)
        assert bb.queries == per * 2, type(m).__name__


class HalfValid(PatchMasker):
    """Only the first 5 features exist (as padding would in text)."""

    def valid(self, x):
        v = torch.zeros(x.shape[0], self.num_features(), dtype=torch.bool)
        v[:, :5] = True
        return v


def test_only_valid_features_are_attributed_or_perturbed():
    seen = []

    def probs(x):
        seen.append(x.detach().clone())
        s = LinearProbs()(x)
        return s

    bb = BlackBox(probs, output="probs")
    masker = HalfValid(grid=(3, 3), input_shape=(1, 6, 6))
    x = torch.ones(1, 1, 6, 6)
    for m in (B.FeatureAblation(bb, masker), B.KernelShap(bb, masker, n_samples=30), B.RandomAttribution(bb, masker)):
        seen.clear()
        s = m.attribute(x, 1)
        assert (s[0, 5:] == 0).all()
        fm = masker._fmask(x)
        for batch in seen:  # invalid features are never present in any query
            assert (batch[:, 0][:, fm >= 5] == 0).all()
    torch.testing.assert_close(B.FeatureAblation(bb, masker).attribute(x, 1)[0, :5], W[:5], atol=1e-5, rtol=0)


class OneValid(PatchMasker):
    """Only feature 1 exists (a one-word snippet)."""

    def valid(self, x):
        v = torch.zeros(x.shape[0], self.num_features(), dtype=torch.bool)
        v[:, 1] = True
        return v


def test_kernel_shap_on_a_single_feature_is_exact_with_two_queries():
    # Captum's KernelShap cannot sample coalitions of one feature; the Shapley value of the only
    # player is g(1) - g(0) = its weight here (the other features are absent in both queries).
    bb = BlackBox(LinearProbs(), output="probs")
    masker = OneValid(grid=(3, 3), input_shape=(1, 6, 6))
    bb.reset_queries()
    s = B.KernelShap(bb, masker, n_samples=200).attribute(torch.ones(2, 1, 6, 6), 1)
    assert bb.queries == 2 * 2
    torch.testing.assert_close(s[:, 1], W[1].expand(2), atol=1e-6, rtol=0)
    assert (s[:, [0, *range(2, 9)]] == 0).all()


def test_per_example_equals_batched(linear):
    bb, masker, _ = linear
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    m = B.KernelShap(bb, masker, n_samples=50)
    full = m.attribute(x, torch.tensor([1, 0, 1]))
    for i, t in enumerate([1, 0, 1]):
        torch.testing.assert_close(m.attribute(x[i:i + 1], t)[0], full[i])


def test_integrated_gradients_needs_a_module():
    bb = BlackBox(lambda x: torch.zeros(x.shape[0], 2), output="logits")
    with pytest.raises(TargetError, match="differentiable nn.Module"):
        B.IntegratedGradients(bb, PatchMasker(grid=(2, 2)))


def test_fex_method_is_the_explainer(tmp_path):
    bb = BlackBox(LinearPatchTarget(), output="logits")
    ckpt = make_checkpoint(tmp_path / "e.ckpt", bb)
    m = B.Fex(bb, checkpoint=ckpt)
    x = torch.rand(4, 1, 28, 28)
    t = torch.tensor([0, 1, 1, 0])
    bb.reset_queries()
    torch.testing.assert_close(m.attribute(x, t), m.explainer.explain(x, t)["scores"])
    with pytest.raises(InputError, match="checkpoint"):
        B.Fex(bb)
