"""The FEX objective's pure functions against hand-computed and analytic answers."""
import itertools

import pytest
import torch

from fex import objective as obj


def test_fex_reward_matches_formula():
    prob = torch.tensor([[0.8, 0.5]])
    masks = torch.tensor([[[1.0, 1, 0, 0], [0.0, 0, 0, 0]]])
    r = obj.fex_reward(prob, masks, 4)
    assert torch.allclose(r, torch.tensor([[0.8 * 4 / 3, 0.5 * 4 / 1]]))


def test_reward_variants():
    prob = torch.tensor([[0.5, 0.25]])
    masks = torch.tensor([[[1.0, 1, 0, 0], [1.0, 0, 0, 0]]])
    assert torch.allclose(obj.compute_reward(prob, masks, 4, "prob"), prob)
    assert torch.allclose(obj.compute_reward(prob, masks, 4, "logprob"), prob.log())
    r = obj.compute_reward(prob, masks, 4, "prob", sparsity=1.0)
    assert torch.allclose(r, torch.tensor([[0.5 - 0.5, 0.25 - 0.25]]))
    r = obj.compute_reward(prob, masks, 4, "prob", comprehensiveness=2.0, prob_full=torch.tensor([0.9]),
                           prob_complement=torch.tensor([[0.1, 0.4]]))
    assert torch.allclose(r, torch.tensor([[0.5 + 2 * 0.8, 0.25 + 2 * 0.5]]))
    with pytest.raises(ValueError, match="needs prob_full"):
        obj.compute_reward(prob, masks, 4, "prob", comprehensiveness=1.0)


def test_advantages():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(obj.advantages(r, torch.tensor([2.0]), "critic"), torch.tensor([[-1.0, 0, 1]]))
    # leave-one-out: r_k - mean of the others
    assert torch.allclose(obj.advantages(r, kind="loo"), torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5]]))
    assert torch.allclose(obj.advantages(r, kind="none"), r)


def test_ppo_clip_stops_gradient_outside_trust_region():
    adv = torch.tensor([[1.0, -1.0]])
    old = torch.zeros(1, 2)
    # ratio e^0.5 = 1.65 > 1.2 with positive advantage: clipped, no gradient
    new = torch.tensor([[0.5, 0.0]], requires_grad=True)
    obj.ppo_actor_loss(new, old, adv, 0.2).backward()
    assert new.grad[0, 0] == 0
    assert new.grad[0, 1] == pytest.approx(0.5)  # d/dlogp of -(-1 * e^logp)/2 at ratio 1
    # value: -(mean(min(1.2*1, 1.65*1), 1*-1)) = -(1.2 - 1)/2
    assert obj.ppo_actor_loss(torch.tensor([[0.5, 0.0]]), old, adv).item() == pytest.approx(-(1.2 - 1.0) / 2)


def test_joint_log_prob_and_entropy():
    logits = torch.tensor([[0.0, 2.0]])
    masks = torch.tensor([[[1.0, 0.0]]])
    p = torch.sigmoid(logits)
    expected = torch.log(p[0, 0]) + torch.log(1 - p[0, 1])
    assert obj.joint_log_prob(logits, masks).item() == pytest.approx(expected.item(), abs=1e-6)
    # padding features do not count
    valid = torch.tensor([[True, False]])
    assert obj.joint_log_prob(logits, masks, valid).item() == pytest.approx(torch.log(p[0, 0]).item(), abs=1e-6)
    assert obj.bernoulli_entropy(torch.zeros(1, 3)).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_class_head_and_kl():
    logits = torch.randn(3, 5, 4)
    lp = obj.class_head_log_probs(logits)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3))
    # identical distributions: KL 0; KL(p||q) for two-point distributions by hand
    assert obj.kl_to_target(lp.exp(), lp).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[0.25, 0.75]]).log()
    expected = 0.5 * (torch.log(torch.tensor(0.5 / 0.25)) + torch.log(torch.tensor(0.5 / 0.75)))
    assert obj.kl_to_target(t, q).item() == pytest.approx(expected.item(), abs=1e-6)


def test_sample_masks_respects_probs_and_padding():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.0, 1.0, 0.3, 0.9]])
    valid = torch.tensor([[True, True, True, False]])
    m = obj.sample_masks(probs.expand(2000, 4), 5, valid.expand(2000, 4), generator=g)
    assert m.shape == (2000, 5, 4)
    mean = m.mean((0, 1))
    assert mean[0] == 0 and mean[1] == 1 and mean[3] == 0
    assert mean[2].item() == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("baseline", ["none", "loo"])
def test_policy_gradient_matches_analytic_gradient(baseline):
    """On a 3-feature bandit, the PPO estimator's mean gradient (ratio 1) equals -grad E[r]."""
    torch.manual_seed(0)
    f = 3
    theta = torch.tensor([0.3, -0.5, 1.0], requires_grad=True)

    def reward(m):  # any fixed function of the mask; an interaction makes it non-trivial
        return 1.0 * m[..., 0] + 0.5 * m[..., 1] * m[..., 2] - 0.3 * m[..., 2]

    # analytic: J = sum_m pi(m) r(m) over all 2^F masks, differentiated exactly
    all_m = torch.tensor(list(itertools.product([0.0, 1.0], repeat=f)))
    logp_all = obj.joint_log_prob(theta.unsqueeze(0), all_m.unsqueeze(0))[0]
    j = (logp_all.exp() * reward(all_m)).sum()
    (grad_true,) = torch.autograd.grad(j, theta)

    # estimator: B inputs sharing the same policy, K samples each
    b, k = 20000, 5
    logits = theta.unsqueeze(0).expand(b, f)
    masks = obj.sample_masks(torch.sigmoid(logits), k)
    r = reward(masks)
    adv = obj.advantages(r, kind=baseline)
    logp = obj.joint_log_prob(logits, masks)
    loss = obj.ppo_actor_loss(logp, logp.detach(), adv, clip=0.2)
    (grad_est,) = torch.autograd.grad(loss, theta)
    # loss is a mean over B*K terms, so -grad_est estimates grad J; loo scales by 1 (unbiased)
    # tolerance: a few standard errors of a 100k-sample mean of O(1) terms
    assert torch.allclose(-grad_est, grad_true, atol=0.02), (grad_est, grad_true)
