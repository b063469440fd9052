"""Path-sampled IG: closed forms, completeness, convergence of the Riemann sum, the method on features."""
import math

import pytest
import torch

from fex.blackbox import BlackBox
from fex.maskers.image import PatchMasker
from fex.methods.psig import PathSampledIG, path_cdf, path_sampled_ig
from tests.test_baselines import W, LinearProbs

D = torch.float64


def test_product_gives_a_third_at_baseline_zero():
    x = torch.tensor([1.5, -2.0], dtype=D)
    a = path_sampled_ig(lambda p: p[:, 0] * p[:, 1], x, torch.zeros(2, dtype=D), n_steps=500)
    # x1 x2 / 3 each; the midpoint rule's error is known exactly: sum_k s_k^2 / m = 1/3 - 1/(12 m^2)
    torch.testing.assert_close(a, torch.full((2,), 1.5 * -2.0 / 3, dtype=D), atol=2e-6, rtol=0)
    torch.testing.assert_close(a, torch.full((2,), 1.5 * -2.0 * (1 / 3 - 1 / (12 * 500**2)), dtype=D), atol=1e-12,
                               rtol=0)


def test_linear_gives_half_the_difference():
    w = torch.tensor([0.5, -1.0, 2.0], dtype=D)
    x, xb = torch.tensor([1.0, 2.0, -3.0], dtype=D), torch.tensor([0.5, -1.0, 1.0], dtype=D)
    a = path_sampled_ig(lambda p: p @ w, x, xb, n_steps=7)  # exact for any m (midpoints of s average 1/2)
    torch.testing.assert_close(a, w * (x - xb) / 2, atol=1e-12, rtol=0)


def f_smooth(p):
    return torch.exp(0.7 * p[:, 0]) * p[:, 1] + torch.sin(p[:, 2] * p[:, 0])


X, XB = torch.tensor([1.2, -0.8, 2.0], dtype=D), torch.tensor([0.1, 0.3, -0.5], dtype=D)


@pytest.mark.parametrize("density,a,b", [("uniform", 1, 1), ("beta", 2.0, 5.0)])
def test_completeness(density, a, b):
    """sum_i PSIG_i = f(x) - E_t f(xb + t (x - xb)), t ~ density (E by a fine quadrature)."""
    cdf = path_cdf(density, a, b)
    attr = path_sampled_ig(f_smooth, X, XB, n_steps=4000, cdf=cdf, batch=4000)
    s = (torch.arange(200000, dtype=D) + 0.5) / 200000
    pdf = torch.diff(cdf(torch.linspace(0, 1, 200001, dtype=D)))  # P(t in bin)
    expected = f_smooth(X[None])[0] - (pdf * f_smooth(XB + s[:, None] * (X - XB))).sum()
    assert float(attr.sum()) == pytest.approx(float(expected), abs=1e-6)


def test_riemann_error_falls_as_one_over_m_and_matches_the_monte_carlo_definition():
    exact = path_sampled_ig(f_smooth, X, XB, n_steps=100000, batch=100000)
    errs = {m: float((path_sampled_ig(f_smooth, X, XB, n_steps=m) - exact).abs().max()) for m in (4, 8, 16, 32, 64)}
    for m in (8, 16, 32, 64):  # at least O(1/m): halving the step at least halves the error
        assert errs[m] <= errs[m // 2] / 2 + 1e-12, errs
    # the definition, by Monte Carlo: t ~ U(0,1), s ~ U(t, 1): (x - xb) (1 - t) grad f(xb + s (x - xb))
    g = torch.Generator().manual_seed(0)
    n = 200000
    t = torch.rand(n, generator=g, dtype=D)
    s = t + torch.rand(n, generator=g, dtype=D) * (1 - t)
    pts = (XB + s[:, None] * (X - XB)).requires_grad_(True)
    (grad,) = torch.autograd.grad(f_smooth(pts).sum(), pts)
    samples = (X - XB) * (1 - t[:, None]) * grad
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert ((mc - exact).abs() <= 4 * se).all(), (mc, exact, se)
    # with 64 gradient evaluations the Riemann sum is far closer than a 64-sample Monte Carlo estimate
    assert errs[64] < float(samples.std(0).max()) / math.sqrt(64) / 10


def test_method_on_patch_features():
    """p(class 1) is linear in the patch presence -> PS-IG = W / 2; m gradient evaluations per example."""
    bb = BlackBox(LinearProbs(), output="probs")
    masker = PatchMasker(grid=(3, 3), input_shape=(1, 6, 6))
    m = PathSampledIG(bb, masker, n_steps=8, internal_batch_size=3)
    with bb.counting() as c:
        s = m.attribute(torch.ones(2, 1, 6, 6), 1)
    assert c.n == 16
    torch.testing.assert_close(s, (W / 2).expand(2, 9), atol=1e-6, rtol=0)


def test_word_masker_is_refused_with_a_pointer():
    from fex.errors import InputError
    from fex.maskers.text import WordMasker

    class Strings(torch.nn.Module):
        def forward(self, texts):
            return torch.zeros(len(texts), 2)

    masker = WordMasker()
    with pytest.raises(InputError, match="integrated_gradients_words"):
        PathSampledIG(BlackBox(Strings(), output="logits"), masker, n_steps=2).attribute(masker.encode(["a b"]), 1)
