"""The temperature objective's estimators against exact answers on small enumerable games.

A game is a reward r(m) over masks m in {0,1}^F with pairwise and triple interactions. For a
factorised Bernoulli(pi) the exact multilinear derivative is
Delta_i(pi) = sum_{m_-i} P(m_-i) [r(m_i=1, m_-i) - r(m_i=0, m_-i)], computed by enumerating 2^F masks.
"""
import itertools
import math

import pytest
import torch

from fex import objective as obj
from fex.baselines import Banzhaf, msr_difference
from fex.blackbox import BlackBox
from fex.maskers.image import PatchMasker

F = 4


def game(m: torch.Tensor) -> torch.Tensor:
    """r(m) [..., F] -> [...]: linear terms, a pair, a triple; values stay in [0, 1]."""
    return (0.1 + 0.3 * m[..., 0] + 0.1 * m[..., 1] - 0.05 * m[..., 3] + 0.2 * m[..., 1] * m[..., 2]
            + 0.25 * m[..., 0] * m[..., 2] * m[..., 3]).clamp(0, 1)


def all_masks(f: int = F) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=f)))


def exact_delta(pi: torch.Tensor, r=game) -> torch.Tensor:
    """Delta_i(pi) [F] by enumeration."""
    f = pi.numel()
    out = torch.zeros(f)
    for i in range(f):
        for m in all_masks(f):
            if m[i] == 1:
                continue
            rest = torch.cat([m[:i], m[i + 1:]])
            pr = torch.cat([pi[:i], pi[i + 1:]])
            p = (pr ** rest * (1 - pr) ** (1 - rest)).prod()
            on = m.clone()
            on[i] = 1
            out[i] += p * (r(on) - r(m))
    return out


def semivalue_uniform_t(r=game, n: int = 2001) -> torch.Tensor:
    """int_0^1 6 t (1-t) Delta_i(t) dt by the trapezoid rule on an exact polynomial."""
    ts = torch.linspace(0, 1, n)
    vals = torch.stack([6 * t * (1 - t) * exact_delta(torch.full((F,), float(t)), r) for t in ts])
    return torch.trapezoid(vals, ts, dim=0)


def expected_regression_grad(sampler: str, pi: torch.Tensor, phi: torch.Tensor, n: int = 200_000, seed: int = 0):
    """Mean gradient of the regression loss in phi over n masks drawn by ``sampler`` (value held at E[r])."""
    torch.manual_seed(seed)
    k = 2
    probs = pi.expand(n // k, F)
    masks, centre = obj.sample_coupled(probs, k, sampler=sampler)
    r = game(masks)
    phi_ = phi.clone().expand(n // k, F).contiguous().requires_grad_(True)
    value = r.mean().expand(n // k)
    loss = obj.regression_loss(phi_, value, r, masks, centre)
    (g,) = torch.autograd.grad(loss, phi_)
    return g.sum(0)  # the loss is a mean over B*K samples: summing rows gives the per-sample mean gradient


@pytest.mark.parametrize("sampler", ["policy", "antithetic", "uniform"])
def test_regression_gradient_is_unbiased(sampler):
    """E[grad_phi] = -2 Var(m_i) (Delta_i(pi) - phi_i): zero exactly at the exact Delta."""
    pi = torch.tensor([0.5, 0.5, 0.5, 0.5]) if sampler == "uniform" else torch.tensor([0.3, 0.6, 0.5, 0.8])
    delta = exact_delta(pi)
    phi = torch.tensor([0.05, -0.1, 0.2, 0.0])
    g = expected_regression_grad(sampler, pi, phi)
    want = -2 * pi * (1 - pi) * (delta - phi)
    assert torch.allclose(g, want, atol=4e-3), (g, want)
    # at the fixed point the mean gradient vanishes
    g0 = expected_regression_grad(sampler, pi, delta, seed=1)
    assert g0.abs().max() < 4e-3


def test_uniform_t_targets_the_shapley_like_semivalue():
    """sampler=uniform_t: the regression's fixed point is int 6t(1-t) Delta_i(t) dt (not Banzhaf)."""
    target = semivalue_uniform_t()
    banzhaf = exact_delta(torch.full((F,), 0.5))
    assert (target - banzhaf).abs().max() > 0.01  # a different attribution on this game
    torch.manual_seed(0)
    phi = torch.zeros(F, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=0.01)
    for _ in range(600):
        masks, centre = obj.sample_coupled(torch.full((4096, F), 0.5), 2, sampler="uniform_t")
        r = game(masks)
        loss = obj.regression_loss(phi.expand(4096, F), r.mean().expand(4096), r, masks, centre)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(phi.detach(), target, atol=0.01), (phi, target)


def test_reinforce_and_disarm_are_unbiased():
    """-grad of the surrogate losses estimates grad E_pi[r] (analytic, by enumeration)."""
    theta = torch.tensor([0.3, -0.5, 1.0, 0.2], requires_grad=True)
    m = all_masks()
    logp = obj.joint_log_prob(theta.unsqueeze(0), m.unsqueeze(0))[0]
    (true,) = torch.autograd.grad((logp.exp() * game(m)).sum(), theta)
    torch.manual_seed(0)
    b = 100_000
    logits = theta.detach().expand(b, F).clone().requires_grad_(True)
    masks = obj.sample_masks(torch.sigmoid(logits), 4)
    loss = obj.reinforce_loss(logits, masks, obj.advantages(game(masks), kind="loo"))
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(-g.sum(0), true, atol=6e-3), (-g.sum(0), true)
    masks, _ = obj.sample_coupled(torch.sigmoid(logits.detach()), 4, sampler="antithetic")
    loss = obj.disarm_loss(logits, masks, game(masks))
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(-g.sum(0), true, atol=4e-3), (-g.sum(0), true)


def test_entropy_sum_is_per_feature_sum():
    logits = torch.zeros(3, 5)
    assert obj.entropy_sum(logits).item() == pytest.approx(5 * torch.log(torch.tensor(2.0)).item())
    valid = torch.tensor([[True] * 2 + [False] * 3] * 3)
    assert obj.entropy_sum(logits, valid).item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())


def test_antithetic_pairs_are_complements_at_one_half():
    masks, centre = obj.sample_coupled(torch.full((7, 6), 0.5), 4, sampler="antithetic")
    assert torch.equal(masks[:, 0::2] + masks[:, 1::2], torch.ones(7, 2, 6))
    with pytest.raises(ValueError, match="even"):
        obj.sample_coupled(torch.full((2, 3), 0.5), 3, sampler="antithetic")


def test_keep_minus_remove_reward():
    prob = torch.tensor([[0.9, 0.4]])
    comp = torch.tensor([[0.2, 0.5]])
    r = obj.compute_reward(prob, torch.ones(1, 2, 3), 3, "keep_minus_remove", prob_complement=comp)
    assert torch.allclose(r, torch.tensor([[0.7, -0.1]]))
    # its Banzhaf value is twice the prob reward's: Delta(p(m) - p(1-m)) = 2 Delta(p) at pi = 1/2
    m = all_masks()
    kmr = lambda mm: game(mm) - game(1 - mm)  # noqa: E731
    assert torch.allclose(exact_delta(torch.full((F,), 0.5), kmr), 2 * exact_delta(torch.full((F,), 0.5)), atol=1e-6)
    assert m.shape == (16, F)


def test_temperature_fixed_point_on_an_enumerable_game():
    """Free logits optimised with the regression estimator (on-policy) reach tau*theta = Delta(sigmoid(theta))."""
    tau = 0.25
    # the exact fixed point by iteration: theta <- Delta(sigmoid(theta)) / tau (damped)
    theta_star = torch.zeros(F)
    for _ in range(2000):
        theta_star = 0.9 * theta_star + 0.1 * exact_delta(torch.sigmoid(theta_star)) / tau
    fixed = tau * theta_star
    assert torch.allclose(fixed, exact_delta(torch.sigmoid(theta_star)), atol=1e-4)
    torch.manual_seed(0)
    theta = torch.zeros(F, requires_grad=True)
    value = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([theta, value], lr=0.02)
    for step in range(1500):
        if step == 1000:
            opt.param_groups[0]["lr"] = 0.005
        lg = theta.expand(2048, F)
        masks, centre = obj.sample_coupled(torch.sigmoid(lg), 2, sampler="antithetic")
        loss = obj.regression_loss(tau * lg, value.expand(2048), game(masks), masks, centre)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(tau * theta.detach(), fixed, atol=0.01), (tau * theta, fixed)
    # the temperature is a real knob: a larger tau keeps pi closer to 1/2 and tau*theta closer to Banzhaf
    assert (torch.sigmoid(theta_star) - 0.5).abs().max() > 0.1


def _game_blackbox():
    """A 1x1xF 'image' whose F pixels are the features; p(class 1) = game(presence)."""
    def model(x):
        g = game(x.flatten(1))
        return torch.stack([1 - g, g], 1)

    return BlackBox(model, output="probs", num_classes=2, name="tests.game"), PatchMasker((1, F), (1, 1, F))


def test_banzhaf_method_is_exact_by_enumeration_and_consistent_by_sampling():
    bb, masker = _game_blackbox()
    x = torch.ones(1, 1, 1, F)
    exact = exact_delta(torch.full((F,), 0.5))
    enum = Banzhaf(bb, masker, n_masks=2 ** F).attribute(x, 1)[0]
    assert torch.allclose(enum, exact, atol=1e-6)
    assert bb.queries == 2 ** F + 0  # one query per mask, nothing else
    at_03 = Banzhaf(bb, masker, n_masks=2 ** F, keep_rate=0.3).attribute(x, 1)[0]
    assert torch.allclose(at_03, exact_delta(torch.full((F,), 0.3)), atol=1e-6)
    sampled = Banzhaf(bb, masker, n_masks=20_000, keep_rate=0.3, batch=5000).attribute(x, 1)[0]
    assert torch.allclose(sampled, exact_delta(torch.full((F,), 0.3)), atol=0.01)


def test_msr_difference_of_means():
    z = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0]])
    r = torch.tensor([4.0, 2, 6, 0])
    assert torch.allclose(msr_difference(r, z), torch.tensor([(4 + 6) / 2 - (2 + 0) / 2, (2 + 6) / 2 - (4 + 0) / 2]))
    assert msr_difference(r, torch.ones(4, 1))[0] == 0  # never absent: no estimate


def test_fastshap_loss_minimiser_is_the_shapley_value():
    """Least squares over Shapley-kernel pairs with efficiency normalisation recovers exact Shapley values."""
    f = F
    m = all_masks(f)
    # exact Shapley value by enumeration
    import math
    shap = torch.zeros(f)
    for i in range(f):
        for mm in m:
            if mm[i] == 1:
                continue
            s = int(mm.sum())
            on = mm.clone()
            on[i] = 1
            shap[i] += math.factorial(s) * math.factorial(f - s - 1) / math.factorial(f) * (game(on) - game(mm))
    torch.manual_seed(0)
    phi = torch.zeros(1, f, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=0.01)
    r0, r1 = game(torch.zeros(f)).view(1), game(torch.ones(f)).view(1)
    for _ in range(800):
        masks, _ = obj.sample_shapley_kernel(1, 4096, f)
        loss = obj.fastshap_loss(phi, game(masks), masks, r0, r1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gap = (r1 - r0) - phi.detach().sum()
    assert torch.allclose(phi.detach()[0] + gap / f, shap, atol=0.01), (phi, shap)
    masks, _ = obj.sample_shapley_kernel(3, 6, f)
    assert torch.equal(masks[:, 0::2] + masks[:, 1::2], torch.ones(3, 3, f))  # pairs are complements
    assert ((masks.sum(-1) >= 1) & (masks.sum(-1) <= f - 1)).all()  # never empty or full


def logodds_game(m: torch.Tensor) -> torch.Tensor:
    """The game's reward as log-odds: logit(clamp(game, eps, 1 - eps)), through compute_reward."""
    g = game(m)
    return obj.compute_reward(g.reshape(1, -1), m.reshape(1, -1, m.shape[-1]), F, "logodds").reshape(g.shape)


def test_logodds_reward_is_the_logit_of_p():
    prob = torch.tensor([[0.5, 0.8, 0.2, 1.0]])
    r = obj.compute_reward(prob, torch.ones(1, 4, 3), 3, "logodds", eps=1e-6)
    want = torch.tensor([[0.0, math.log(4.0), -math.log(4.0), math.log((1 - 1e-6) / 1e-6)]])
    assert torch.allclose(r, want, atol=0.05) and torch.allclose(r[:, :3], want[:, :3], atol=1e-5), r  # p = 1: clamped
    assert "logodds" in obj.REWARDS and obj.FexObjective(reward="logodds").reward == "logodds"


def test_regression_solution_is_the_exact_banzhaf_value_on_all_masks():
    """Least squares on every mask once (keep rate 1/2: an orthogonal design) = the exact Banzhaf value,
    for the prob and the log-odds reward; invalid (padding) features get 0."""
    m = all_masks()
    for r in (game, logodds_game):
        phi = obj.regression_solution(r(m)[None], m[None], torch.full_like(m, 0.5)[None])[0]
        assert torch.allclose(phi, exact_delta(torch.full((F,), 0.5), r), atol=1e-5), (phi, r)
    pad = torch.cat([m, torch.zeros(16, 2)], 1)[None]  # two padding features never present
    valid = torch.tensor([[True] * F + [False] * 2])
    phi = obj.regression_solution(game(m)[None], pad, torch.full_like(pad, 0.5), valid)[0]
    assert torch.allclose(phi[:F], exact_delta(torch.full((F,), 0.5)), atol=1e-5) and (phi[F:] == 0).all()


@pytest.mark.parametrize("keep_rate", [0.7, 0.9])
def test_banked_uniform_masks_at_a_keep_rate_reach_the_banzhaf_value_at_that_rate(keep_rate):
    """The text preset's value: Bernoulli(keep_rate) masks drawn once (a bank) and fitted by the
    regression loss for many steps reach Delta_i(keep_rate) of the log-odds reward (fixed point =
    exact value, by enumeration), and so does the per-input least-squares oracle on the same masks."""
    exact = exact_delta(torch.full((F,), keep_rate), logodds_game)
    gen = torch.Generator().manual_seed(0)
    masks, centre = obj.sample_coupled(torch.full((1, F), 0.5), 60_000, sampler="uniform", keep_rate=keep_rate,
                                       generator=gen)
    r = logodds_game(masks)
    oracle = obj.regression_solution(r, masks, centre)[0]
    assert torch.allclose(oracle, exact, atol=0.03), (oracle, exact)
    phi = torch.zeros(1, F, requires_grad=True)
    value = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([phi, value], lr=0.02)
    for step in range(600):  # epochs over the same bank, K masks per step
        if step == 400:
            opt.param_groups[0]["lr"] = 0.005
        idx = torch.randint(0, masks.shape[1], (2048,), generator=gen)
        loss = obj.regression_loss(phi, value, r[:, idx], masks[:, idx], centre[:, idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(phi.detach()[0], oracle, atol=0.02), (phi, oracle)
    assert (exact - exact_delta(torch.full((F,), 0.5), logodds_game)).abs().max() > 0.05  # a different value


def test_regression_solution_with_uniform_t_masks_is_the_beta22_semivalue():
    masks, centre = obj.sample_coupled(torch.full((1, F), 0.5), 100_000, sampler="uniform_t",
                                       generator=torch.Generator().manual_seed(0))
    phi = obj.regression_solution(game(masks), masks, centre)[0]
    assert torch.allclose(phi, semivalue_uniform_t(n=401), atol=0.01), phi
