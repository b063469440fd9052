"""Policies: a modality-specific backbone + modality-free actor/critic heads."""
from fex.policy.heads import Policy
from fex.policy.image import ConvBackbone

__all__ = ["Policy", "ConvBackbone"]
