"""Text backbones: token embeddings [B, L, D] that the word masker pools per word.

* :class:`TextEncoderBackbone` - a pretrained transformer encoder (default: the bundled
  all-MiniLM-L6-v2), frozen or with its last ``train_last_n_layers`` layers fine-tuned, plus a
  small trainable adapter. Frozen encoder weights are left out of the policy's state_dict
  (they are reloaded from ``path``), so explainer checkpoints stay small.
* :class:`WordEmbeddingBackbone` - a tiny embedding + bidirectional GRU over the same token ids,
  for fast tests and small problems.

Both read the text batch dict of :func:`fex.maskers.text.encode_texts` (``input_ids``,
``attention_mask``) and return (token features [B, L, D], pooled [B, D]).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from fex.errors import ConfigError
from fex.maskers.text import load_tokenizer, resolve_model_path


class BranchLayerNorm(nn.Module):
    """LayerNorm over each of ``branches`` blocks of ``dim`` channels, with its own affine parameters per
    block: [..., branches * dim] -> same shape (``branches=1`` is ``nn.LayerNorm(dim)``, same parameters)."""

    def __init__(self, branches: int, dim: int) -> None:
        super().__init__()
        self.branches, self.dim = int(branches), int(dim)
        self.weight = nn.Parameter(torch.ones(self.branches * self.dim))
        self.bias = nn.Parameter(torch.zeros(self.branches * self.dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = torch.nn.functional.layer_norm(h.unflatten(-1, (self.branches, self.dim)), (self.dim,))
        return n.flatten(-2) * self.weight + self.bias


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


def truncate_layers(encoder: nn.Module, num_layers: int | None) -> int:
    """Keep the first ``num_layers`` transformer layers of a BERT-style ``encoder`` (in place);
    returns the number of layers it has now."""
    layers = encoder.encoder.layer
    if num_layers is None:
        return len(layers)
    if not 1 <= int(num_layers) <= len(layers):
        raise ConfigError(f"policy num_layers must be in 1..{len(layers)} for this encoder, got {num_layers}")
    encoder.encoder.layer = nn.ModuleList(list(layers)[: int(num_layers)])
    encoder.config.num_hidden_layers = int(num_layers)
    return int(num_layers)


class TextEncoderBackbone(nn.Module):
    """Pretrained transformer encoder -> (token features [B, L, D], mean-pooled [B, D]).

    Args:
        path: model dir or hub name; ``null``/``minilm`` = the bundled all-MiniLM-L6-v2.
        freeze: freeze the encoder (then ``train_last_n_layers`` of its top layers are unfrozen).
        train_last_n_layers: top encoder layers to fine-tune when ``freeze`` is true.
        out_dim: width of the trainable adapter on top (``null`` = the encoder's hidden size).
        num_layers: keep only the first ``num_layers`` transformer layers of the encoder (``null`` =
            all). A smaller, faster policy from the same pretrained weights (``policy=text_small``).
        encoder_lr_scale: learning-rate multiplier of the fine-tuned encoder layers (pretrained weights
            usually want a smaller step than the freshly initialised adapter and heads).
        branches: independent adapters over the one encoder pass, for a policy with as many ``heads``
            (:class:`fex.policy.Policy`): the outputs have ``branches * out_dim`` channels, one block each.
    """

    #: state_dict prefixes of the per-branch parameters (their first dimension is ``branches`` blocks):
    #: what :func:`fex.policy.heads.merge_head_states` concatenates when explainers are merged
    branch_params = ("adapter.", "global_proj.")

    def __init__(self, path: str | None = None, freeze: bool = True, train_last_n_layers: int = 0,
                 out_dim: int | None = 256, num_layers: int | None = None, encoder_lr_scale: float = 1.0,
                 branches: int = 1) -> None:
        super().__init__()
        from transformers import AutoModel

        p = resolve_model_path(path)
        if os.path.isdir(p):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = path
        self.encoder = AutoModel.from_pretrained(p)
        self.num_layers = truncate_layers(self.encoder, num_layers)
        hidden = int(self.encoder.config.hidden_size)
        self.out_dim = int(out_dim or hidden)
        self.freeze = bool(freeze)
        self.train_last_n_layers = int(train_last_n_layers)
        if encoder_lr_scale <= 0:
            raise ValueError(f"encoder_lr_scale must be > 0, got {encoder_lr_scale}")
        self.encoder_lr_scale = float(encoder_lr_scale)
        if self.freeze:
            for q in self.encoder.parameters():
                q.requires_grad_(False)
            if self.train_last_n_layers > 0:
                layers = self.encoder.encoder.layer
                for layer in layers[len(layers) - self.train_last_n_layers:]:
                    for q in layer.parameters():
                        q.requires_grad_(True)
        self._frozen = {n for n, q in self.encoder.named_parameters() if not q.requires_grad}
        if int(branches) < 1:
            raise ConfigError(f"backbone branches must be >= 1, got {branches}")
        self.branches = int(branches)
        width = self.branches * self.out_dim
        norm = nn.LayerNorm(self.out_dim) if self.branches == 1 else BranchLayerNorm(self.branches, self.out_dim)
        self.adapter = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), norm)
        self.global_proj = nn.Linear(hidden, width)

    def lr_scaled_parameters(self) -> tuple[list[nn.Parameter], float]:
        """The encoder's trainable (fine-tuned) parameters and their learning-rate multiplier."""
        return [q for q in self.encoder.parameters() if q.requires_grad], self.encoder_lr_scale

    @property
    def fully_frozen(self) -> bool:
        return self.freeze and self.train_last_n_layers == 0

    def train(self, mode: bool = True) -> "TextEncoderBackbone":
        super().train(mode)
        if self.fully_frozen:
            self.encoder.eval()  # no dropout in a frozen feature extractor
        return self

    def forward(self, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> token features [B, L, branches * out_dim], pooled [B, branches * out_dim]."""
        ids, am = x["input_ids"], x["attention_mask"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.fully_frozen):
            h = self.encoder(input_ids=ids, attention_mask=am).last_hidden_state  # [B, L, H]
        return self.adapter(h), self.global_proj(_masked_mean(h, am))

    # frozen encoder weights are reloaded from `path`, not stored
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for n in self._frozen:
            out.pop(f"{prefix}encoder.{n}", None)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        for n, q in self.encoder.named_parameters():
            if n in self._frozen:
                state_dict.setdefault(f"{prefix}encoder.{n}", q.detach())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class WordEmbeddingBackbone(nn.Module):
    """Token embedding + a small 1-D convolution over neighbours + the sentence mean
    -> (token features [B, L, D], pooled [B, D]). Padding is zeroed, so results do not depend
    on how much padding a batch has.

    Args:
        vocab_size: embedding rows; ``null`` = the size of ``tokenizer``'s vocabulary.
        tokenizer: tokenizer path for ``vocab_size`` (``null`` = bundled MiniLM).
        dim: embedding and output width D.
        kernel: convolution width (odd).
    """

    def __init__(self, vocab_size: int | None = None, tokenizer: str | None = None, dim: int = 64,
                 kernel: int = 3) -> None:
        super().__init__()
        if vocab_size is None:
            vocab_size = len(load_tokenizer(tokenizer))
        self.out_dim = int(dim)
        self.embed = nn.Embedding(int(vocab_size), dim)
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.mix = nn.Linear(3 * dim, dim)

    def forward(self, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ids, am = x["input_ids"], x["attention_mask"]
        m = am.unsqueeze(-1).to(self.embed.weight.dtype)
        e = self.embed(ids) * m  # [B, L, D]
        ctx = torch.relu(self.conv(e.transpose(1, 2))).transpose(1, 2) * m
        g = _masked_mean(e, am)  # [B, D]
        h = torch.relu(self.mix(torch.cat([e, ctx, g.unsqueeze(1).expand_as(e)], -1))) * m
        return h, _masked_mean(h, am)
