"""Maskers own the modality. Everything else (policy heads, objective, metrics) sees
only feature scores [B, F] and masks [B, K, F].

Letters: B batch, K masks per input, F features, C classes, D embedding width.

A *feature* is an integer group id (Captum's ``feature_mask`` contract: ids 0..F-1).
Inputs whose feature count varies (text) pad to the batch's largest F and report
which features are real through :meth:`Masker.valid`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from fex.render.base import Renderer


class Masker(ABC):
    """Turns masks over features into model inputs, and feature scores back into input shape."""

    registry_group = "masker"  # fex.registry.register(MyMasker) infers the group

    @abstractmethod
    def validate(self, x: Any) -> None:
        """Raise :class:`fex.errors.InputError` if ``x`` cannot be explained (shape, NaN, ...)."""

    def prepare(self, x: Any) -> Any:
        """``validate`` an input a user hands in, after the conversions that are always safe (e.g. a
        float64 image cast to float32); returns what to explain."""
        self.validate(x)
        return x

    @abstractmethod
    def num_features(self, x: Any) -> int:
        """F for this batch (the padded width for variable-length inputs)."""

    def valid(self, x: Any) -> torch.Tensor:
        """Bool [B, F]: which features exist. Padding features never get masks or attribution."""
        return torch.ones(self.batch_size(x), self.num_features(x), dtype=torch.bool, device=self.device_of(x))

    @abstractmethod
    def batch_size(self, x: Any) -> int: ...

    @abstractmethod
    def device_of(self, x: Any) -> torch.device: ...

    @abstractmethod
    def apply(self, x: Any, masks: torch.Tensor) -> Any:
        """Masks [B, K, F] (1 keeps a feature, 0 removes it) -> model inputs for B*K queries (b-major)."""

    @abstractmethod
    def pool(self, feats: Any, x: Any) -> torch.Tensor:
        """Per-element backbone features -> per-feature embeddings [B, F, D]."""

    @abstractmethod
    def expand(self, scores: torch.Tensor, x: Any) -> Any:
        """Feature scores [B, F] -> attributions in the input's shape (Captum's convention)."""

    def select(self, x: Any, index: torch.Tensor | list[int]) -> Any:
        """Sub-batch of ``x`` (used by evaluation to go one example at a time)."""
        return x[index]

    def to(self, device: torch.device | str) -> "Masker":
        return self

    def renderer(self):
        """The modality's :class:`fex.render.Renderer`: reads its inputs, draws its attributions."""
        return Renderer(self)
