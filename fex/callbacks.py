"""Lightning callbacks for explainer training.

:class:`PolicyHealth` watches for a *degenerate* policy, one whose explanations carry no
information although the reward looks fine (issue 9: on a two-class text target the paper's
reward ``p * F / (sum(m) + 1)`` is largest for the empty mask, so the policy learns to keep no
words at all, while ``train/reward`` rises). Three symptoms, each judged on a running window
of training steps:

* ``mask_frac``: the sampled masks keep (almost) no features or (almost) all of them
  (logged ``train/mask_frac`` <= ``min_mask_frac`` or >= ``1 - min_mask_frac``; only when the
  masks are drawn from the policy, ``objective.sampler`` ``policy`` or ``antithetic``);
* ``entropy``: the Bernoulli policy is (almost) deterministic (logged ``train/entropy``,
  nats per feature, below ``min_entropy``; the maximum is ln 2 = 0.693);
* ``tied``: the read-out scores of (almost) every example are all equal, so they rank nothing
  (:func:`tied_fraction` of the policy's scores on the current batch >= ``max_tied_frac``;
  computed here every ``every_n_steps`` steps with one no-grad policy forward, no queries).

A symptom that persists for ``patience`` consecutive checks is reported once as a warning in
the log and kept in :attr:`PolicyHealth.problems`; :func:`health_summary` turns it into the
one-line training summary. ``mask_frac`` and ``tied`` make the policy DEGENERATE (logged as
``health/degenerate`` = 1; ``action=stop`` also ends training, and the checkpoint monitor keeps
the best earlier explainer). ``entropy`` alone makes it SATURATED: a near-deterministic policy
can still rank its top features (a planted word), but its Bernoulli means tie among the rest;
read out logits (``attribution=logit``) or raise the temperature.

Letters: B batch, F features, C classes.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("fex")

ACTIONS = ("warn", "stop")
ON_POLICY = ("policy", "antithetic")  # samplers whose masks are the policy's (mask_frac is about it)
SEVERE = ("mask_frac", "tied")  # symptoms that make the explanations meaningless
ADVICE = {True: "Its explanations rank little or nothing; try another objective (e.g. objective.reward=prob, "
                "a higher objective.temperature) or the preset of your modality.",
          False: "Its scores saturate towards 0/1 and tie below the top features; read out logits "
                 "(objective.attribution=logit) or raise objective.temperature."}


def tied_fraction(scores: torch.Tensor, valid: torch.Tensor | None = None, tol: float = 1e-4) -> torch.Tensor:
    """Fraction of rows whose scores over valid features span less than ``tol`` (they rank nothing).

    scores [B, F] or [B, F, C] (every class column is a row of its own); rows with fewer than
    two valid features are left out. Returns a scalar in [0, 1] (0 when no row qualifies).
    """
    if scores.dim() == 2:
        scores = scores.unsqueeze(-1)
    b, f, c = scores.shape
    v = torch.ones(b, f, dtype=torch.bool, device=scores.device) if valid is None else valid.to(scores.device).bool()
    vv = v.unsqueeze(-1).expand(b, f, c)
    hi = torch.where(vv, scores, torch.full_like(scores, -torch.inf)).amax(1)  # [B, C]
    lo = torch.where(vv, scores, torch.full_like(scores, torch.inf)).amin(1)
    rows = (v.sum(1) >= 2).unsqueeze(-1).expand(b, c)
    if not rows.any():
        return torch.zeros((), device=scores.device)
    return ((hi - lo) < tol)[rows].float().mean()


def readout(module: Any, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The scores a user sees, for every class: logits [B, F, C] -> [B, F, C] through the module's
    own read-out (``ExplainerModule.read_out``: Bernoulli means or tau * logits)."""
    b, _, c = logits.shape
    return torch.stack([module.read_out(logits, torch.full((b,), k, dtype=torch.long, device=logits.device), valid)
                        for k in range(c)], -1)


class PolicyHealth(pl.Callback):
    """Warn (or stop) when the policy degenerates; see the module docstring.

    Args:
        min_mask_frac: mask fraction at or below this (or at or above 1 minus it) is degenerate.
        min_entropy: mean per-feature Bernoulli entropy (nats) below this is degenerate.
        max_tied_frac: a batch where at least this fraction of explanations are all ties is degenerate.
        tie_tol: scores within this range count as tied (read-out units).
        patience: consecutive degenerate checks before reporting.
        every_n_steps: check interval (in training steps); the tie check costs one policy forward.
        action: ``warn`` (log and report) or ``stop`` (also end training).
    """

    def __init__(self, min_mask_frac: float = 0.01, min_entropy: float = 0.01, max_tied_frac: float = 0.9,
                 tie_tol: float = 1e-4, patience: int = 5, every_n_steps: int = 5, action: str = "warn") -> None:
        super().__init__()
        if action not in ACTIONS:
            raise ValueError(f"PolicyHealth action must be one of {ACTIONS}, got {action!r}")
        if patience < 1 or every_n_steps < 1:
            raise ValueError("PolicyHealth patience and every_n_steps must be >= 1")
        self.min_mask_frac, self.min_entropy = float(min_mask_frac), float(min_entropy)
        self.max_tied_frac, self.tie_tol = float(max_tied_frac), float(tie_tol)
        self.patience, self.every_n_steps, self.action = int(patience), int(every_n_steps), action
        self.streak: dict[str, int] = {}
        self.problems: dict[str, dict] = {}  # symptom -> {"step", "value", "message"} when first reported
        self.last: dict[str, float] = {}  # latest value of each statistic
        self.degenerate_now = False  # the latest check was degenerate (for the end-of-training verdict)
        self.steps = 0

    # ------------------------------------------------------------------ checks
    def symptoms(self, stats: dict[str, float]) -> dict[str, str]:
        """Statistics -> {symptom: one-line description} of those that are degenerate."""
        out = {}
        mf = stats.get("mask_frac")
        if mf is not None and mf <= self.min_mask_frac:
            out["mask_frac"] = f"masks keep no features (mask fraction {mf:.3f})"
        elif mf is not None and mf >= 1 - self.min_mask_frac:
            out["mask_frac"] = f"masks keep every feature (mask fraction {mf:.3f})"
        ent = stats.get("entropy")
        if ent is not None and ent < self.min_entropy:
            out["entropy"] = f"policy is deterministic (entropy {ent:.4f} nats per feature)"
        tied = stats.get("tied_frac")
        if tied is not None and tied >= self.max_tied_frac:
            out["tied"] = f"scores are all tied for {tied:.0%} of explanations"
        return out

    @torch.no_grad()
    def _tied(self, module: Any, batch: Any) -> float | None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = module.policy_logits(x)
        valid = module.masker.valid(x)
        return float(tied_fraction(readout(module, logits, valid), valid, self.tie_tol))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps += 1
        step = self.steps  # training batches seen (manual optimisation may step the optimiser K times)
        if step % self.every_n_steps:
            return
        cm = trainer.callback_metrics
        stats = {k: float(cm[f"train/{k}"]) for k in ("mask_frac", "entropy") if f"train/{k}" in cm}
        if getattr(getattr(pl_module, "objective", None), "sampler", "policy") not in ON_POLICY:
            stats.pop("mask_frac", None)  # masks come from a fixed sampler, not the policy
        stats["tied_frac"] = self._tied(pl_module, batch)
        self.last.update(stats)
        found = self.symptoms(stats)
        for k in list(self.streak):
            if k not in found:
                self.streak[k] = 0
        for k, msg in found.items():
            self.streak[k] = self.streak.get(k, 0) + 1
            if self.streak[k] >= self.patience and k not in self.problems:
                first = step - (self.patience - 1) * self.every_n_steps
                self.problems[k] = {"step": first, "value": stats.get(k if k != "tied" else "tied_frac"),
                                    "message": f"{msg} since step {first}"}
                if trainer.is_global_zero:
                    log.warning("fex: %s policy: %s. %s", "degenerate" if k in SEVERE else "saturated",
                                self.problems[k]["message"], ADVICE[k in SEVERE])
                if self.action == "stop" and k in SEVERE:
                    trainer.should_stop = True
        self.degenerate_now = any(self.streak.get(k, 0) >= self.patience for k in found if k in SEVERE)
        pl_module.log("health/degenerate", float(self.degenerate), on_step=True, on_epoch=False,
                      batch_size=pl_module.masker.batch_size(batch[0]))

    @property
    def degenerate(self) -> bool:
        """A severe symptom (no/all features kept, tied scores) was reported during training."""
        return any(k in SEVERE for k in self.problems)

    def verdict(self) -> str:
        """``ok``, ``SATURATED (...)`` or ``DEGENERATE (...)``: one line naming what went wrong."""
        if not self.problems:
            return "ok"
        what = "; ".join(p["message"] for p in self.problems.values())
        if not self.degenerate:
            return f"SATURATED ({what})"
        return f"DEGENERATE ({what}{'' if self.degenerate_now else '; recovered by the end'})"


def health_summary(trainer: pl.Trainer) -> dict:
    """``{"policy_health": verdict}`` from the trainer's :class:`PolicyHealth` callback, if any."""
    for cb in getattr(trainer, "callbacks", []):
        if isinstance(cb, PolicyHealth):
            return {"policy_health": cb.verdict()}
    return {}
