"""Notice that the model behind an explainer changed: its answers to a few fixed probe inputs, recorded once.

Letters: P probes, C classes.

An explainer (and a gate calibrated for it) is only as good as its match to the target it was trained on.
For a white-box target, :meth:`fex.blackbox.BlackBox.fingerprint` hashes the weights; a black box behind
an API has none to hash, and can be swapped (a new model version, another model family) without notice.
:class:`TargetProbe` records the target's class probabilities on P probe inputs (calibration inputs with
a fixed random half of their features masked: ambiguous inputs, where two models disagree far more than
on clean ones) and later asks the same P queries again. The distance is the mean total-variation
distance between the recorded and the current answers,

    d = mean_p 1/2 sum_c |p_now(c | probe_p) - p_then(c | probe_p)|,

and the target counts as changed when ``d > tolerance`` (default 1e-3: the same deterministic model
answers within ~1e-6; any retraining, another architecture or another family moves it by far more). The
probes are stored with the answers (a tensor or a list of strings, whatever the masker's ``apply`` gives
the black box), so a saved probe needs neither the data nor the masker: :meth:`state` is plain JSON.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError
from fex.maskers.base import Masker


class TargetProbe:
    """The target's answers ``probs`` [P, C] to ``probes`` (what the black box takes: a tensor whose first
    dimension is P, or P strings); :meth:`distance` asks them again (P queries)."""

    def __init__(self, probes: Any, probs: torch.Tensor, tolerance: float = 1e-3) -> None:
        n = len(probes)
        probs = torch.as_tensor(probs, dtype=torch.float32)
        if n < 1 or probs.dim() != 2 or probs.shape[0] != n:
            raise ConfigError(f"a target probe needs P >= 1 probes and [P, C] answers, got {n} and {tuple(probs.shape)}")
        if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigError(f"probe tolerance must be a finite number >= 0, got {tolerance!r}")
        self.probes, self.probs, self.tolerance = probes, probs, float(tolerance)

    @classmethod
    def record(cls, blackbox: BlackBox, masker: Masker, x: Any, n: int = 8, seed: int = 0,
               tolerance: float = 1e-3) -> "TargetProbe":
        """Probes from the first ``n`` inputs of the batch ``x``, each with a random half of its valid features
        masked (drawn from ``seed``), and the target's answers to them (``n`` queries)."""
        if int(n) < 1:
            raise ConfigError(f"a target probe needs n >= 1 probe inputs, got {n}")
        b = masker.batch_size(x)
        n = min(int(n), b)
        sub = masker.select(x, torch.arange(n, device=masker.device_of(x)))
        valid = masker.valid(sub).cpu()
        gen = torch.Generator().manual_seed(int(seed))
        keep = (torch.rand(valid.shape, generator=gen) < 0.5) & valid
        probes = masker.apply(sub, keep.float().unsqueeze(1).to(masker.device_of(x)))  # [n, 1, F] -> n inputs
        if isinstance(probes, torch.Tensor):
            probes = probes.detach().cpu()
        return cls(probes, blackbox(probes).detach().float().cpu(), tolerance)

    def distance(self, blackbox: BlackBox) -> float:
        """Mean total-variation distance between the recorded answers and ``blackbox``'s now (P queries)."""
        now = blackbox(self.probes).detach().float().cpu()
        if now.shape != self.probs.shape:
            return 1.0  # another number of classes: another model
        return float(0.5 * (now - self.probs).abs().sum(1).mean())

    def matches(self, blackbox: BlackBox) -> bool:
        return self.distance(blackbox) <= self.tolerance

    def __len__(self) -> int:
        return len(self.probes)

    # ------------------------------------------------------------------ plain-JSON state
    def state(self) -> dict:
        if isinstance(self.probes, torch.Tensor):
            probes = {"kind": "tensor", "shape": list(self.probes.shape),
                      "data": self.probes.float().flatten().tolist()}
        else:
            probes = {"kind": "texts", "data": list(self.probes)}
        return {"probes": probes, "probs": self.probs.tolist(), "tolerance": self.tolerance}

    @classmethod
    def from_state(cls, state: Any, where: str) -> "TargetProbe":
        """The probe of :meth:`state`, checked for shape and types (a damaged or crafted one is a one-line error)."""
        try:
            p = state["probes"]
            if p["kind"] == "tensor":
                shape = [int(s) for s in p["shape"]]
                data = p["data"]
                if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in data):
                    raise ValueError("probe values must be finite numbers")
                probes = torch.tensor(data, dtype=torch.float32).view(shape)
            elif p["kind"] == "texts":
                probes = list(p["data"])
                if not all(isinstance(t, str) for t in probes):
                    raise ValueError("text probes must be strings")
            else:
                raise ValueError(f"unknown probe kind {p['kind']!r}")
            probs = state["probs"]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for row in probs for v in row):
                raise ValueError("answers must be finite numbers")
            return cls(probes, torch.tensor(probs, dtype=torch.float32), state["tolerance"])
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
            raise CheckpointError(f"{where}: its target probe is malformed ({type(exc).__name__}: {exc})") from None
