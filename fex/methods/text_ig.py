"""Integrated Gradients for text targets, on the word-embedding layer, as an evaluation method on the
masker's word features (:func:`fex.targets.text.integrated_gradients_words` does the integration)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fex.errors import TargetError
from fex.methods.baselines import Method
from fex.targets.text import integrated_gradients_words


class WordIntegratedGradients(Method):
    """Evaluation method ``integrated_gradients`` for text: :func:`integrated_gradients_words` on the
    target's word-embedding layer (white box: needs an :class:`HFTextClassifier` target), on the
    masker's word features. Each IG step is counted as one query."""

    name = "integrated_gradients"

    def __init__(self, blackbox: Any, masker: Any, n_steps: int = 50, internal_batch_size: int = 64,
                 baseline: str = "mask", seed: int = 0) -> None:
        super().__init__(blackbox, masker, seed)
        if not hasattr(self.blackbox.model, "tokenizer") or not isinstance(self.blackbox.model, nn.Module):
            raise TargetError("integrated_gradients on embeddings needs a transformers text target "
                              f"(HFTextClassifier); this target is a {type(self.blackbox.model).__name__}")
        self.n_steps, self.internal_batch_size, self.baseline = int(n_steps), int(internal_batch_size), baseline

    def attribute(self, x: Any, target: Any) -> torch.Tensor:
        self.masker.validate(x)
        valid = self.masker.valid(x).cpu()
        t = torch.as_tensor(target).long().flatten()
        scores = integrated_gradients_words(self.blackbox.model, None, x, t, self.n_steps, self.internal_batch_size,
                                            self.baseline)
        self.blackbox.queries += self.n_steps * valid.shape[0]
        out = torch.zeros(valid.shape)
        out[:, : scores.shape[1]] = scores
        return out * valid
