"""The FEX objective as small pure functions, plus a config object that strings them together.

Letters: B batch, K masks per input, F features, C classes.

The policy gives each feature a logit theta_i; pi_i = sigmoid(theta_i) keeps it. Training maximises
``J = E_{m~pi}[r(m)] + tau * sum_i H(pi_i)`` with the reward r in its own units and the temperature
``tau`` in the same units (independent of F and of the batch size). Its stationary point is

    tau * theta_i = Delta_i(pi) = E_{m_-i ~ pi}[ r(m_i=1, m_-i) - r(m_i=0, m_-i) ]

(the multilinear extension's partial derivative; Owen 1975): as tau grows, pi -> 1/2 and
``tau * theta`` -> the Banzhaf value of the reward. ``attribution=logit`` reads ``tau * theta`` out
(in reward units; nothing saturates into ties), ``attribution=prob`` reads ``pi`` (the paper).

Estimators of the gradient of J (``estimator``):

* ``ppo`` (the paper's): clipped surrogate over the joint mask log-probability with an advantage
  (critic / leave-one-out / none) and ``entropy_weight`` times the mean entropy;
* ``reinforce``: the score-function gradient with an advantage plus the exact entropy gradient;
  with ``sampler=antithetic`` it is DisARM (Dong, Mnih, Tucker 2020) on coupled pairs;
* ``regression``: the same gradient with a per-feature linear control variate. Regressing
  ``r(m)`` on the centred mask, ``(r - b - sum_j phi_j (m_j - c_j))^2`` with ``phi = tau * theta``,
  has the expected gradient ``-2 Var(m_i) (Delta_i - phi_i)``: the entropy-regularised policy
  gradient (up to a positive per-feature scale), with every other feature's effect subtracted.

Samplers (``sampler``): ``policy`` (m ~ pi), ``antithetic`` (coupled pairs u, 1-u: both marginally
pi; at pi = 1/2 the pair is m and 1-m), ``uniform`` (m ~ Bernoulli(keep_rate): the tau -> infinity
limit, off-policy), ``paired_uniform`` (pairs m, 1-m at 1/2: the antithetic sampler of that limit),
``uniform_t`` (a keep rate t ~ U(0,1) per mask, m ~ Bernoulli(t): the regression
then targets ``int_0^1 6 t (1-t) Delta_i(t) dt``, a semivalue weighting coalition sizes like Shapley's
does, symmetric and all sizes, instead of Banzhaf's 1/2).

Faithful paper settings (``objective=fex_paper``; also ``FexObjective()``): K=5 masks per input
(a one-step bandit), reward ``p(y_hat | masked x) * F / (sum(m) + 1)``, critic baseline ``A = r - V``,
PPO ratio over the joint mask log-probability with clip 0.2,
``loss = actor + 0.5 critic - 1e-4 entropy + 1.0 KL``, the KL anchoring the policy's
class head to the target's softmax on the unmasked input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F_

REWARDS = ("fex", "prob", "logprob", "logodds", "keep_minus_remove")
BASELINES = ("critic", "loo", "none")
ESTIMATORS = ("ppo", "reinforce", "regression", "fastshap")
SAMPLERS = ("policy", "antithetic", "uniform", "paired_uniform", "uniform_t", "shapley_kernel")
BANKABLE = ("uniform", "paired_uniform", "shapley_kernel")  # masks independent of the policy and of t
ATTRIBUTIONS = ("prob", "logit")


# --------------------------------------------------------------------------- sampling
def sample_masks(probs: torch.Tensor, k: int, valid: torch.Tensor | None = None,
                 epsilon: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw K Bernoulli masks per input: probs [B, F] -> masks [B, K, F] in {0, 1}.

    With probability ``epsilon`` a whole mask is replaced by a uniformly random one
    (the official code's epsilon-greedy exploration). Invalid (padding) features are 0.
    """
    b, f = probs.shape
    p = probs.detach().unsqueeze(1).expand(b, k, f)
    u = torch.rand(b, k, f, device=probs.device, generator=generator)
    masks = (u < p).to(probs.dtype)
    if epsilon > 0:
        explore = torch.rand(b, k, 1, device=probs.device, generator=generator) < epsilon
        rnd = (torch.rand(b, k, f, device=probs.device, generator=generator) < 0.5).to(probs.dtype)
        masks = torch.where(explore, rnd, masks)
    if valid is not None:
        masks = masks * valid.unsqueeze(1).to(masks.dtype)
    return masks


def sample_coupled(probs: torch.Tensor, k: int, valid: torch.Tensor | None = None, sampler: str = "policy",
                   keep_rate: float = 0.5, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks [B, K, F] and the probability each entry was drawn with ("centres" [B, K, F]).

    ``policy``: Bernoulli(probs). ``antithetic``: K/2 coupled pairs from one uniform u per pair,
    ``1[u < p]`` and ``1[1 - u < p]`` (each marginally Bernoulli(p); pairs are masks 2j and 2j+1).
    ``uniform``: Bernoulli(keep_rate). ``paired_uniform``: K/2 pairs (m, 1 - m) with m ~ Bernoulli(1/2)
    (the antithetic sampler at pi = 1/2, independent of the policy). ``uniform_t``: one t ~ U(0,1) per mask, Bernoulli(t).
    """
    b, f = probs.shape
    dev, dt = probs.device, probs.dtype
    p = probs.detach().unsqueeze(1).expand(b, k, f)
    if sampler == "policy":
        centre = p
        masks = (torch.rand(b, k, f, device=dev, generator=generator) < centre).to(dt)
    elif sampler == "antithetic":
        if k % 2:
            raise ValueError(f"sampler=antithetic needs an even number of masks per input, got {k}")
        u = torch.rand(b, k // 2, 1, f, device=dev, generator=generator)
        u = torch.cat([u, 1 - u], 2).reshape(b, k, f)
        centre = p
        masks = (u < centre).to(dt)
    elif sampler == "uniform":
        centre = torch.full((b, k, f), float(keep_rate), device=dev, dtype=dt)
        masks = (torch.rand(b, k, f, device=dev, generator=generator) < centre).to(dt)
    elif sampler == "paired_uniform":
        if k % 2:
            raise ValueError(f"sampler=paired_uniform draws pairs (m, 1-m): num_samples must be even, got {k}")
        half = (torch.rand(b, k // 2, 1, f, device=dev, generator=generator) < 0.5).to(dt)
        masks = torch.cat([half, 1 - half], 2).reshape(b, k, f)
        centre = torch.full((b, k, f), 0.5, device=dev, dtype=dt)
    elif sampler == "uniform_t":
        centre = torch.rand(b, k, 1, device=dev, generator=generator, dtype=dt).expand(b, k, f)
        masks = (torch.rand(b, k, f, device=dev, generator=generator) < centre).to(dt)
    elif sampler == "shapley_kernel":
        return sample_shapley_kernel(b, k, f, valid, generator, dev, dt)
    else:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if valid is not None:
        masks = masks * valid.unsqueeze(1).to(dt)
    return masks, centre


def sample_shapley_kernel(b: int, k: int, f: int, valid: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, device: Any = None,
                          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """FastSHAP's masks (Jethani et al., ICLR 2022): K/2 pairs (m, complement); each m has a subset size
    s in 1..n-1 drawn with probability proportional to the Shapley kernel (n-1) / (s (n-s)) and s
    features chosen uniformly among the n valid ones. Returns masks [B, K, F] and centres (zeros)."""
    if k % 2:
        raise ValueError(f"the Shapley-kernel sampler draws pairs: num_samples must be even, got {k}")
    v = torch.ones(b, f, dtype=torch.bool, device=device) if valid is None else valid.to(device)
    n = v.sum(1)  # [B]
    sizes = torch.arange(1, f, device=device, dtype=torch.float64)  # candidate s = 1..F-1
    w = 1.0 / (sizes[None, :] * (n[:, None] - sizes[None, :]))  # [B, F-1], invalid where s >= n
    w = torch.where(sizes[None, :] < n[:, None], w, torch.zeros_like(w))
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w) * (sizes[None, :] == 1))  # n <= 1: s = 1
    s = torch.multinomial(w.float(), k // 2, replacement=True, generator=generator) + 1  # [B, K/2]
    u = torch.rand(b, k // 2, f, device=device, generator=generator).masked_fill(~v[:, None, :], 2.0)
    rank = u.argsort(-1).argsort(-1)
    m = ((rank < s[..., None]) & v[:, None, :]).to(dtype)
    masks = torch.stack([m, v[:, None, :].to(dtype) - m], 2).reshape(b, k, f)
    return masks, torch.zeros_like(masks)


def joint_log_prob(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(m | x) of whole masks: logits [B, F], masks [B, K, F] -> [B, K]."""
    lp = -F_.binary_cross_entropy_with_logits(
        logits.unsqueeze(1).expand_as(masks), masks, reduction="none"
    )
    if valid is not None:
        lp = lp * valid.unsqueeze(1).to(lp.dtype)
    return lp.sum(-1)


def bernoulli_entropy(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-feature entropy of Bernoulli(sigmoid(logits)) over valid features -> scalar."""
    p = torch.sigmoid(logits)
    ent = F_.binary_cross_entropy_with_logits(logits, p, reduction="none")
    if valid is None:
        return ent.mean()
    v = valid.to(ent.dtype)
    return (ent * v).sum() / v.sum().clamp_min(1)


def entropy_sum(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i H(pi_i) over valid features, mean over the batch: logits [B, F] -> scalar (nats)."""
    ent = F_.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits), reduction="none")
    if valid is not None:
        ent = ent * valid.to(ent.dtype)
    return ent.sum(-1).mean()


# --------------------------------------------------------------------------- rewards
def fex_reward(prob: torch.Tensor, masks: torch.Tensor, num_features: torch.Tensor | int) -> torch.Tensor:
    """Official FEX reward ``p * F / (sum(m) + 1)``: prob [B, K], masks [B, K, F] -> [B, K]."""
    nf = torch.as_tensor(num_features, dtype=prob.dtype, device=prob.device)
    if nf.dim() == 1:
        nf = nf.unsqueeze(1)
    return prob * nf / (masks.sum(-1) + 1)


def compute_reward(prob: torch.Tensor, masks: torch.Tensor, num_features: torch.Tensor | int, kind: str = "fex",
                   sparsity: float = 0.0, comprehensiveness: float = 0.0,
                   prob_full: torch.Tensor | None = None, prob_complement: torch.Tensor | None = None,
                   eps: float = 1e-6) -> torch.Tensor:
    """Reward [B, K] for masks [B, K, F] given the target-class probability of each masked input.

    kind: ``fex`` (official ratio), ``prob`` (p), ``logprob`` (log p), ``logodds`` (``log p - log(1 - p)``,
        the logit of p: it does not saturate near p = 1 where a confident classifier's p barely moves) or
        ``keep_minus_remove`` (``p(m) - p(1 - m)``; needs ``prob_complement`` [B, K]). p is clamped to
        [eps, 1 - eps] inside the logs.
    sparsity: subtract ``sparsity * sum(m) / F`` (pressure towards small masks).
    comprehensiveness: add ``w * (p_full - p(complement of m))``, the deletion term:
        removing what the mask keeps should hurt (needs ``prob_full`` [B] and ``prob_complement`` [B, K]).
    """
    if kind == "fex":
        r = fex_reward(prob, masks, num_features)
    elif kind == "prob":
        r = prob
    elif kind == "logprob":
        r = torch.log(prob.clamp_min(eps))
    elif kind == "logodds":
        p = prob.clamp(eps, 1 - eps)
        r = torch.log(p) - torch.log1p(-p)
    elif kind == "keep_minus_remove":
        if prob_complement is None:
            raise ValueError("keep_minus_remove reward needs prob_complement")
        r = prob - prob_complement
    else:
        raise ValueError(f"reward kind must be one of {REWARDS}, got {kind!r}")
    if sparsity:
        nf = torch.as_tensor(num_features, dtype=prob.dtype, device=prob.device)
        nf = nf.unsqueeze(1) if nf.dim() == 1 else nf
        r = r - sparsity * masks.sum(-1) / nf
    if comprehensiveness:
        if prob_full is None or prob_complement is None:
            raise ValueError("comprehensiveness reward needs prob_full and prob_complement")
        r = r + comprehensiveness * (prob_full.unsqueeze(1) - prob_complement)
    return r


# --------------------------------------------------------------------------- advantages
def advantages(rewards: torch.Tensor, values: torch.Tensor | None = None, kind: str = "critic",
               normalize: bool = False) -> torch.Tensor:
    """Advantage [B, K] from rewards [B, K].

    critic: ``r - V`` (values [B] broadcast over K); loo: ``r_k - mean_{j != k} r_j``; none: ``r``.
    """
    if kind == "critic":
        if values is None:
            raise ValueError("critic advantage needs values")
        adv = rewards - values.unsqueeze(1)
    elif kind == "loo":
        k = rewards.shape[1]
        if k < 2:
            raise ValueError("leave-one-out baseline needs K >= 2 masks per input")
        adv = rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    elif kind == "none":
        adv = rewards
    else:
        raise ValueError(f"advantage baseline must be one of {BASELINES}, got {kind!r}")
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


# --------------------------------------------------------------------------- estimators
def regression_loss(phi: torch.Tensor, value: torch.Tensor, rewards: torch.Tensor, masks: torch.Tensor,
                    centre: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Least squares of rewards on centred masks: ``mean_{b,k} (r - v - sum_j phi_j (m_j - c_j))^2``.

    phi [B, F] (attributions in reward units, = tau * theta), value [B], rewards [B, K], masks and
    centres [B, K, F]. Its expected gradient in phi_i is ``-2 Var(m_i) (Delta_i - phi_i)``, so the
    minimiser (for independent masks) is ``phi_i = Delta_i``, ``v = E[r]``.
    """
    z = masks - centre.detach()
    if valid is not None:
        z = z * valid.unsqueeze(1).to(z.dtype)
    pred = value.unsqueeze(1) + torch.einsum("bkf,bf->bk", z, phi)
    return ((rewards.detach() - pred) ** 2).mean()


def regression_solution(rewards: torch.Tensor, masks: torch.Tensor, centre: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """The minimiser of :func:`regression_loss` for each input alone (ordinary least squares with an
    intercept): rewards [B, K], masks and centres [B, K, F] -> phi [B, F] (0 on invalid features).

    This is what the regression estimator's fixed point is for one input's masks: a per-input oracle of
    the value fex learns (Banzhaf at a keep rate for Bernoulli masks, the 6 t (1-t) semivalue for
    ``uniform_t``), with every other feature's effect regressed out (less noisy than the difference of
    conditional means). Least-norm where a feature never varies.
    """
    b, k, f = masks.shape
    v = torch.ones(b, f, dtype=torch.bool, device=masks.device) if valid is None else valid.bool()
    z = (masks - centre) * v.unsqueeze(1).to(masks.dtype)
    design = torch.cat([torch.ones(b, k, 1, dtype=z.dtype, device=z.device), z], -1).double()  # [B, K, 1+F]
    sol = torch.linalg.lstsq(design, rewards.double().unsqueeze(-1), driver="gelsd").solution  # [B, 1+F, 1]
    return (sol[:, 1:, 0] * v).to(rewards.dtype)


def reinforce_loss(logits: torch.Tensor, masks: torch.Tensor, adv: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Score-function surrogate ``-mean(A * log pi(m))``: its gradient estimates -grad E[r] (unbiased for
    any baseline that does not depend on the mask)."""
    return -(adv.detach() * joint_log_prob(logits, masks, valid)).mean()


def disarm_loss(logits: torch.Tensor, masks: torch.Tensor, rewards: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """DisARM (Dong, Mnih, Tucker 2020) on antithetic pairs (masks 2j, 2j+1 from u and 1-u).

    Per pair and feature: ``g_i = 1/2 (r(b) - r(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigmoid(|theta_i|)`` is an
    unbiased estimate of dE[r]/dtheta_i. Returns the surrogate ``-sum_i g_i theta_i`` (mean over pairs).
    """
    b, k, f = masks.shape
    m = masks.view(b, k // 2, 2, f)
    r = rewards.detach().view(b, k // 2, 2)
    b1, b2 = m[:, :, 0], m[:, :, 1]
    sign = 1 - 2 * b2  # (-1)^{b~}
    g = 0.5 * (r[:, :, 0] - r[:, :, 1]).unsqueeze(-1) * sign * (b1 != b2).to(masks.dtype)
    g = g * torch.sigmoid(logits.detach().abs()).unsqueeze(1)
    if valid is not None:
        g = g * valid.unsqueeze(1).to(g.dtype)
    return -(g.mean(1) * logits).sum(-1).mean()


def fastshap_loss(phi: torch.Tensor, rewards: torch.Tensor, masks: torch.Tensor, r_empty: torch.Tensor,
                  r_full: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """FastSHAP's amortised least squares with additive efficient normalisation.

    phi [B, F] is first shifted so that ``sum_i phi_i = r_full - r_empty`` over the valid features, then
    ``mean (r(m) - r_empty - sum_i m_i phi_i)^2`` over Shapley-kernel masks; its minimiser is the Shapley value.
    """
    v = torch.ones_like(phi, dtype=torch.bool) if valid is None else valid
    vf = v.to(phi.dtype)
    gap = (r_full - r_empty) - (phi * vf).sum(-1)  # [B]
    phi = (phi + (gap / vf.sum(-1).clamp_min(1)).unsqueeze(-1)) * vf
    pred = r_empty.unsqueeze(1) + torch.einsum("bkf,bf->bk", masks, phi)
    return ((rewards.detach() - pred) ** 2).mean()


# --------------------------------------------------------------------------- losses
def ppo_actor_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """Clipped surrogate ``-E[min(rho A, clip(rho, 1-e, 1+e) A)]`` with rho over the joint mask."""
    ratio = torch.exp(new_logp - old_logp.detach())
    adv = adv.detach()
    surr1 = ratio * adv
    surr2 = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    return -torch.min(surr1, surr2).mean()


def class_head_log_probs(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The policy's class head: log softmax of the mean over features of per-feature
    log-softmaxed class logits. logits [B, F, C] -> log-probs [B, C]."""
    ls = torch.log_softmax(logits, dim=-1)
    if valid is None:
        mean = ls.mean(1)
    else:
        v = valid.unsqueeze(-1).to(ls.dtype)
        mean = (ls * v).sum(1) / v.sum(1).clamp_min(1)
    return torch.log_softmax(mean, dim=-1)


def kl_to_target(target_probs: torch.Tensor, policy_log_probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(target || policy class head), batch mean. target_probs [B, C], policy_log_probs [B, C]."""
    t = target_probs.clamp_min(eps)
    return (t * (torch.log(t) - policy_log_probs)).sum(-1).mean()


# --------------------------------------------------------------------------- config
@dataclass
class FexObjective:
    """All knobs of the FEX objective (Hydra group ``objective``)."""

    registry_group = "objective"  # fex.registry.register(MyObjective) infers the group (not a field)
    num_samples: int = 5  # K masks per input per step
    estimator: str = "ppo"  # ppo (paper) | reinforce | regression
    temperature: float = 1.0  # tau, in reward units (reinforce, regression; the logit read-out tau * theta)
    sampler: str = "policy"  # policy | antithetic | uniform | uniform_t
    keep_rate: float = 0.5  # sampler=uniform
    query_budget: int = 0  # >0: bank this many masks per training input and reuse them (off-policy samplers)
    bank_from: str | None = None  # a training checkpoint whose reward bank this run starts from (query_budget > 0)
    attribution: str = "prob"  # read-out: prob (pi, the paper) | logit (tau * theta, reward units)
    reward: str = "fex"  # fex | prob | logprob | logodds | keep_minus_remove
    sparsity: float = 0.0
    comprehensiveness: float = 0.0
    baseline: str = "critic"  # critic | loo | none
    normalize_advantage: bool = False
    clip: float = 0.2
    ppo_epochs: int = 1  # optimisation passes over each batch of samples
    epsilon: float = 0.0  # epsilon-greedy exploration over whole masks
    actor_weight: float = 1.0
    critic_weight: float = 0.5
    entropy_weight: float = 1e-4
    kl_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples (K) must be >= 1, got {self.num_samples}")
        for name, val, allowed in (("estimator", self.estimator, ESTIMATORS), ("sampler", self.sampler, SAMPLERS),
                                   ("attribution", self.attribution, ATTRIBUTIONS)):
            if val not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {val!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (reward units), got {self.temperature}")
        if self.sampler == "antithetic" and self.num_samples % 2:
            raise ValueError(f"sampler=antithetic needs an even num_samples, got {self.num_samples}")
        if self.estimator == "ppo" and self.sampler != "policy":
            raise ValueError("estimator=ppo samples from the policy: use sampler=policy")
        if (self.estimator == "fastshap") != (self.sampler == "shapley_kernel"):
            raise ValueError("estimator=fastshap goes with sampler=shapley_kernel (and only it)")
        if self.estimator == "fastshap" and self.reward not in ("prob", "logprob"):
            raise ValueError("estimator=fastshap regresses the target's output: reward=prob or logprob")
        if self.sampler == "shapley_kernel" and self.num_samples % 2:
            raise ValueError(f"sampler=shapley_kernel draws pairs: num_samples must be even, got {self.num_samples}")
        if self.estimator == "reinforce" and self.sampler not in ("policy", "antithetic"):
            raise ValueError("estimator=reinforce needs on-policy masks: sampler=policy or antithetic")
        if self.query_budget and self.sampler not in BANKABLE:
            raise ValueError(f"query_budget reuses masks across epochs: it needs a policy-free sampler {BANKABLE}, "
                             f"not {self.sampler!r}")
        if self.bank_from and not self.query_budget:
            raise ValueError("bank_from starts from an earlier run's reward bank: it needs query_budget > 0")
        if self.query_budget and self.query_budget < self.num_samples:
            raise ValueError(f"query_budget ({self.query_budget}) must be >= num_samples ({self.num_samples})")
        if self.sampler == "paired_uniform" and self.num_samples % 2:
            raise ValueError(f"sampler=paired_uniform needs an even num_samples, got {self.num_samples}")
        if not 0 < self.keep_rate < 1:
            raise ValueError(f"keep_rate must be in (0, 1), got {self.keep_rate}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.baseline == "loo" and self.num_samples < 2:
            raise ValueError("baseline=loo needs num_samples >= 2")
        if self.ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {self.ppo_epochs}")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def needs_empty(self) -> bool:
        """Whether the all-removed input is queried too (one extra query per input: FastSHAP)."""
        return self.estimator == "fastshap"

    @property
    def needs_complement(self) -> bool:
        """Whether each mask's complement is queried too (K extra queries per input)."""
        return self.reward == "keep_minus_remove" or bool(self.comprehensiveness)
