"""The modality-free part of the policy.

A backbone maps inputs to per-element embeddings (pixels, tokens) and a global
embedding; the masker pools element embeddings into per-feature embeddings [B, F, D];
the actor gives one logit per feature per class [B, F, C] and the critic a value per
class [B, C]. The Bernoulli mean ``sigmoid(logits[:, :, c])`` is the attribution for class c.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
        backbone: module with ``out_dim`` whose forward returns (element features, global [B, D]).
        num_classes: C, the target's number of classes.
        hidden: width of the actor and critic MLPs.
        init_bias: initial actor bias; sigmoid(init_bias) is the starting keep-probability.
    """

    registry_group = "policy"  # fex.registry.register(MyPolicy) infers the group

    def __init__(self, backbone: nn.Module, num_classes: int, hidden: int = 128, init_bias: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        d = int(backbone.out_dim)
        self.actor = mlp(d, hidden, num_classes)
        self.critic = mlp(d, hidden, num_classes)
        nn.init.constant_(self.actor[-1].bias, float(init_bias))

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

    def forward(self, x: Any, masker: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """-> logits [B, F, C], values [B, C]."""
        elements, pooled = self.backbone(x)
        feats = masker.pool(elements, x)  # [B, F, D]
        return self.actor(feats), self.critic(pooled)
