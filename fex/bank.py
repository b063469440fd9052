"""Query once, learn many times: a per-input bank of (mask, reward) pairs for off-policy samplers.

Letters: B batch, K masks per input, F features, M masks banked for one input (at most ``budget``).

When masks do not depend on the policy (``sampler=uniform | paired_uniform | uniform_t |
shapley_kernel``), the rewards of an input's masks stay valid for the whole run. The bank keeps, per
training input (its dataset index), the explained class, the reward of the full and empty input where
needed, and up to ``budget`` masks with their rewards. While an input's bank is not full each step
queries K new masks for it; afterwards its steps draw K banked masks and spend no queries. Training
cost is then at most ``budget + 2`` queries per training input, however many epochs run.

A bank outlives its run: training checkpoints store it (:meth:`RewardBank.state`), resuming restores it,
and ``objective.bank_from=<training checkpoint>`` starts a new run from it (:meth:`RewardBank.from_state`,
:meth:`RewardBank.resize`), as long as nothing its rewards depend on (:data:`DATA_FREE`,
:data:`REWARD_KEYS`, the masker, the target) changed.
"""
from __future__ import annotations

from typing import Any

import torch

from fex.errors import CheckpointError

#: data config keys that do not change which input a dataset index names (everything else must match)
DATA_FREE = ("batch_size", "num_workers")
#: data config keys of the masked training copies (``fex.data.text.TextDataModule``); with no copies they name nothing
MASKED_COPY_KEYS = ("masked_copies", "masked_share", "mask_mode", "mask_token")


def data_identity(data: dict | None) -> dict:
    """The part of a data config that decides which input a dataset index names: all of it but
    :data:`DATA_FREE`, and without the masked-copy settings where there are no copies (a config written
    before they existed names the same inputs as one with ``masked_copies: 0``)."""
    d = {k: v for k, v in (data or {}).items() if k not in DATA_FREE}
    if not d.get("masked_copies"):
        for k in MASKED_COPY_KEYS:
            d.pop(k, None)
    return d


#: objective fields a banked reward depends on (a bank serves a run only where these are equal)
REWARD_KEYS = ("reward", "sparsity", "comprehensiveness", "sampler", "keep_rate")


class RewardBank:
    def __init__(self, budget: int, paired: bool = False) -> None:
        if budget < 2:
            raise ValueError(f"query_budget must be >= 2 masks per input, got {budget}")
        self.budget = int(budget)
        self.paired = bool(paired)  # masks 2j and 2j+1 belong together (antithetic / complement pairs)
        self.masks: dict[int, torch.Tensor] = {}  # index -> bool [M, n]
        self.rewards: dict[int, torch.Tensor] = {}  # index -> [M]
        self.info: dict[int, dict[str, torch.Tensor]] = {}  # index -> {"cls", "p_full", ...}

    def state(self) -> dict[str, Any]:
        """Plain tensors and dicts (what a checkpoint stores; ``torch.load(weights_only=True)`` reads it)."""
        return {"budget": self.budget, "paired": self.paired, "masks": self.masks, "rewards": self.rewards,
                "info": self.info}

    @classmethod
    def from_state(cls, state: Any, where: str) -> "RewardBank":
        """The bank of :meth:`state`, checked for shape (a damaged or crafted one is a one-line error)."""
        try:
            bank = cls(state["budget"], paired=state["paired"])
            masks, rewards, info = dict(state["masks"]), dict(state["rewards"]), dict(state["info"])
            for k, r in rewards.items():
                m = masks[k]
                if (not isinstance(k, int) or not isinstance(m, torch.Tensor) or not isinstance(r, torch.Tensor)
                        or m.dtype != torch.bool or m.dim() != 2 or r.dim() != 1 or len(m) != len(r)
                        or not all(isinstance(v, torch.Tensor) for v in info[k].values())):
                    raise ValueError(f"input {k!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where}: its reward bank is malformed ({type(exc).__name__}: {exc})") from None
        bank.masks, bank.rewards, bank.info = masks, rewards, info
        return bank

    def resize(self, budget: int) -> "RewardBank":
        """Serve a run with another ``query_budget``: a smaller one keeps each input's first ``budget`` masks
        (whole pairs when ``paired`` and ``budget`` is even), a larger one queries the missing masks as usual."""
        self.budget = int(budget)
        for k, r in self.rewards.items():
            if len(r) > self.budget:
                self.masks[k], self.rewards[k] = self.masks[k][: self.budget], r[: self.budget]
        return self

    def __len__(self) -> int:
        return len(self.info)

    def known(self, keys: list[int]) -> bool:
        return all(k in self.info for k in keys)

    def room(self, keys: list[int]) -> int:
        """How many more masks the least-filled of ``keys`` may take (0: all full)."""
        return max(0, self.budget - min(len(self.rewards.get(k, ())) for k in keys))

    def remember(self, keys: list[int], **per_input: torch.Tensor) -> None:
        """Per-input tensors [B, ...] (e.g. cls, p_full) stored once per key."""
        for i, k in enumerate(keys):
            self.info.setdefault(k, {n: v[i].detach().cpu() for n, v in per_input.items()})

    def recall(self, keys: list[int], name: str, device: torch.device) -> torch.Tensor:
        return torch.stack([self.info[k][name] for k in keys]).to(device)

    def add(self, keys: list[int], masks: torch.Tensor, rewards: torch.Tensor, nvalid: torch.Tensor) -> None:
        """masks [B, K, F] (only the first ``nvalid[b]`` features are real), rewards [B, K]."""
        m, r = masks.detach().cpu() > 0.5, rewards.detach().float().cpu()
        for i, k in enumerate(keys):
            n = int(nvalid[i])
            take = min(m.shape[1], self.budget - len(self.rewards.get(k, ())))
            if take <= 0:
                continue
            if k in self.rewards:
                self.masks[k] = torch.cat([self.masks[k], m[i, :take, :n]])
                self.rewards[k] = torch.cat([self.rewards[k], r[i, :take]])
            else:
                self.masks[k], self.rewards[k] = m[i, :take, :n].clone(), r[i, :take].clone()

    def sample(self, keys: list[int], k: int, f: int, device: torch.device, dtype: torch.dtype = torch.float32,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """K banked masks per input (pairs kept together when ``paired``): masks [B, K, F], rewards [B, K]."""
        out_m = torch.zeros(len(keys), k, f, dtype=dtype)
        out_r = torch.zeros(len(keys), k)
        for i, key in enumerate(keys):
            m, r = self.masks[key], self.rewards[key]
            if self.paired:
                j = torch.randint(0, len(r) // 2, (k // 2,), generator=generator)
                idx = torch.stack([2 * j, 2 * j + 1], 1).flatten()
            else:
                idx = torch.randint(0, len(r), (k,), generator=generator)
            out_m[i, :, : m.shape[1]] = m[idx].to(dtype)
            out_r[i] = r[idx]
        return out_m.to(device), out_r.to(device)
