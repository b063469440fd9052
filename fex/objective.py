"""The FEX objective as small pure functions, plus a config object that strings them together.

Letters: B batch, K masks per input, F features, C classes.

Faithful defaults (official FEX code): K=5 masks per input (a one-step bandit),
reward ``p(y_hat | masked x) * F / (sum(m) + 1)``, critic baseline ``A = r - V``,
PPO ratio over the joint mask log-probability with clip 0.2,
``loss = actor + 0.5 critic - 1e-4 entropy + 1.0 KL``, the KL anchoring the policy's
class head to the target's softmax on the unmasked input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F_

REWARDS = ("fex", "prob", "logprob")
BASELINES = ("critic", "loo", "none")


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

    kind: ``fex`` (official ratio), ``prob`` (p) or ``logprob`` (log p).
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

    num_samples: int = 5  # K masks per input per step
    reward: str = "fex"  # fex | prob | logprob
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
