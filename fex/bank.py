"""Query once, learn many times: a per-input bank of (mask, reward) pairs for off-policy samplers.

Letters: B batch, K masks per input, F features, M masks banked for one input (at most ``budget``).

When masks do not depend on the policy (``sampler=uniform | paired_uniform | uniform_t |
shapley_kernel``), the rewards of an input's masks stay valid for the whole run. The bank keeps, per
training input (its dataset index), the explained class, the reward of the full and empty input where
needed, and up to ``budget`` masks with their rewards. While an input's bank is not full each step
queries K new masks for it; afterwards its steps draw K banked masks and spend no queries. Training
cost is then at most ``budget + 2`` queries per training input, however many epochs run.
"""
from __future__ import annotations

import torch


class RewardBank:
    def __init__(self, budget: int, paired: bool = False) -> None:
        if budget < 2:
            raise ValueError(f"query_budget must be >= 2 masks per input, got {budget}")
        self.budget = int(budget)
        self.paired = bool(paired)  # masks 2j and 2j+1 belong together (antithetic / complement pairs)
        self.masks: dict[int, torch.Tensor] = {}  # index -> bool [M, n]
        self.rewards: dict[int, torch.Tensor] = {}  # index -> [M]
        self.info: dict[int, dict[str, torch.Tensor]] = {}  # index -> {"cls", "p_full", ...}

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
