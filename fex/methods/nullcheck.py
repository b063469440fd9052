"""A black box that provably ignores given features: the ground truth for :func:`fex.metrics.null_feature`.

``IgnoreFeatures(model, masker, null)`` removes the ``null`` features (the masker's baseline) from
every input before calling ``model``, so its output cannot depend on them: any attribution they
receive is an error of the method.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from fex.errors import InputError
from fex.maskers.base import Masker


class IgnoreFeatures(nn.Module):
    """``model(masker.apply(x, keep-all-but-null))``: an ``nn.Module`` (differentiable if ``model`` and the
    masker are), so white-box methods apply too. ``num_features`` is the masker's F for these inputs."""

    def __init__(self, model: Any, masker: Masker, null: Sequence[int], num_features: int) -> None:
        super().__init__()
        if getattr(masker, "baseline", None) == "blur":
            raise InputError("IgnoreFeatures needs a constant baseline (zeros or mean): a blurred patch depends "
                             "on its own pixels")
        self.model = model  # registered when it is a Module (eval mode, frozen by BlackBox)
        self.masker = masker
        self.f = int(num_features)
        null = sorted({int(i) for i in null})
        if not null or null[0] < 0 or null[-1] >= self.f:
            raise InputError(f"null features must be non-empty ids in [0, {self.f}), got {null}")
        keep = torch.ones(self.f)
        keep[null] = 0
        self.register_buffer("keep", keep)
        self.null = null

    def null_mask(self) -> torch.Tensor:
        """Bool [F]: the ignored features."""
        return self.keep == 0

    def forward(self, x: Any) -> torch.Tensor:
        n = self.masker.batch_size(x)
        masks = self.keep.to(self.masker.device_of(x)).expand(n, 1, self.f)
        return self.model(self.masker.apply(x, masks))
