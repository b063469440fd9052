"""The modality-free part of the policy.

A backbone maps inputs to per-element embeddings (pixels, tokens) and a global
embedding; the masker pools element embeddings into per-feature embeddings [B, F, D];
the actor gives one logit per feature per class [B, F, C] and the critic a value per
class [B, C]. The Bernoulli mean ``sigmoid(logits[:, :, c])`` is the attribution for class c.

With ``heads=H > 1`` the policy is an ensemble that shares the backbone's expensive part: H actor/critic
pairs, each trained on its own loss (``forward_heads``), whose logits are averaged (``forward``). A backbone
with ``branches == H`` (e.g. the text encoder's per-head adapters) gives each head its own D channels of a
[.., H*D] embedding; a backbone with one branch gives all heads the same features.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fex.errors import ConfigError


def mlp(d_in: int, hidden: int, d_out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class Policy(nn.Module):
    """Actor-critic policy over features.

    Args:
        backbone: module with ``out_dim`` whose forward returns (element features, global [B, D]); with an
            attribute ``branches`` > 1, both have ``branches * out_dim`` channels, one block per head.
        num_classes: C, the target's number of classes.
        hidden: width of the actor and critic MLPs.
        init_bias: initial actor bias; sigmoid(init_bias) is the starting keep-probability.
        heads: H actor/critic pairs trained independently on the same rollouts; the policy's logits are
            their mean (a one-pass ensemble; 1 = a single policy).
    """

    registry_group = "policy"  # fex.registry.register(MyPolicy) infers the group

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 128, init_bias: float = 0.0,
                 heads: int = 1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if int(heads) < 1:
            raise ConfigError(f"policy heads must be >= 1, got {heads}")
        branches = int(getattr(backbone, "branches", 1))
        if branches not in (1, int(heads)):
            raise ConfigError(f"the backbone has {branches} branches but the policy {heads} heads: give the "
                              f"backbone branches=1 (all heads share its features) or branches={heads}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.heads = int(heads)
        self.branches = branches
        d = int(backbone.out_dim)
        if self.heads == 1:  # the single policy keeps its parameter names (actor.0.weight, ...)
            self.actor = mlp(d, hidden, num_classes)
            self.critic = mlp(d, hidden, num_classes)
            last = [self.actor[-1]]
        else:
            self.actor = nn.ModuleList(mlp(d, hidden, num_classes) for _ in range(self.heads))
            self.critic = nn.ModuleList(mlp(d, hidden, num_classes) for _ in range(self.heads))
            last = [a[-1] for a in self.actor]
        for layer in last:
            nn.init.constant_(layer.bias, float(init_bias))

    def param_groups(self) -> list[dict]:
        """The trainable parameters as optimizer groups: a backbone with ``lr_scaled_parameters()``
        (e.g. fine-tuned pretrained layers) gets its own group whose ``lr_scale`` multiplies the optimizer's
        learning rate; everything else trains at the optimizer's rate."""
        scaled: list[dict] = []
        if hasattr(self.backbone, "lr_scaled_parameters"):
            params, scale = self.backbone.lr_scaled_parameters()
            params = [q for q in params if q.requires_grad]
            if params:
                scaled.append({"params": params, "lr_scale": float(scale)})
        taken = {id(q) for g in scaled for q in g["params"]}
        rest = [q for q in self.parameters() if q.requires_grad and id(q) not in taken]
        return [{"params": rest, "lr_scale": 1.0}] + scaled

    def _split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """A backbone output [..., branches * D] -> one [..., D] block per head."""
        return list(t.chunk(self.heads, -1)) if self.branches > 1 else [t] * self.heads

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled per-feature embeddings [B, F, branches * D] -> every head's logits [H, B, F, C]."""
        if self.heads == 1:
            return self.actor(feats).unsqueeze(0)
        return torch.stack([a(f) for a, f in zip(self.actor, self._split(feats))])

    def head_values(self, pooled: torch.Tensor) -> torch.Tensor:
        """Global embeddings [B, branches * D] -> every head's values [H, B, C]."""
        if self.heads == 1:
            return self.critic(pooled).unsqueeze(0)
        return torch.stack([c(g) for c, g in zip(self.critic, self._split(pooled))])

    def actor_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled per-feature embeddings -> the policy's logits [B, F, C] (the heads' mean)."""
        return self.actor(feats) if self.heads == 1 else self.head_logits(feats).mean(0)

    def forward_heads(self, x: Any, masker: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> every head's logits [H, B, F, C] and values [H, B, C] (what training fits, head by head)."""
        elements, pooled = self.backbone(x)
        return self.head_logits(masker.pool(elements, x)), self.head_values(pooled)

    def forward(self, x: Any, masker: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits [B, F, C], values [B, C] (with several heads: their means)."""
        if self.heads == 1:
            elements, pooled = self.backbone(x)
            return self.actor(masker.pool(elements, x)), self.critic(pooled)
        logits, values = self.forward_heads(x, masker)
        return logits.mean(0), values.mean(0)


def merge_head_states(states: list[dict], heads: list[int], branch_prefixes: tuple[str, ...]) -> dict:
    """The state_dict of one policy whose heads are the heads of ``states`` (policy state_dicts, keys without
    ``policy.``), in order: ``heads[i]`` is member i's head count. The backbone's per-head parameters (keys
    under ``backbone.<prefix>`` for ``branch_prefixes``) are concatenated block by block along their first
    dimension; every other backbone parameter must be the same in all members (it is computed once)."""
    from_branch = tuple(f"backbone.{p}" for p in branch_prefixes)
    out: dict = {}
    offset = 0
    for state, h in zip(states, heads):
        for key, value in state.items():
            group, _, rest = key.partition(".")
            if group in ("actor", "critic"):  # actor.X (one head) / actor.j.X (several) -> actor.(offset + j).X
                j, rest = (0, rest) if h == 1 else (int(rest.partition(".")[0]), rest.partition(".")[2])
                out[f"{group}.{offset + j}.{rest}"] = value
            elif key.startswith(from_branch):
                out[key] = value if key not in out else torch.cat([out[key], value])
            elif key not in out:
                out[key] = value
            elif out[key].shape != value.shape or not torch.equal(out[key], value):
                raise ConfigError(f"the members' backbones differ in {key}, outside their per-head parameters: "
                                  "they cannot share one backbone pass")
        offset += h
    return out
