"""Task-level screen (:class:`Screen`): before an explainer (say one trained on a cheap proxy)
is used on a target, a sequential test over at most ``max_inputs`` inputs decides whether its
fidelity is at least ``ratio`` times the per-instance reference's. Per input
``D = fid_explainer - ratio * fid_reference`` lies in ``[-ratio, 1]``; two test-by-betting
wealth processes (Waudby-Smith & Ramdas 2023), ``prod(1 + l_i D_i)`` against H0: E[D] <= 0 and
``prod(1 - l_i D_i)`` against H0: E[D] >= 0 with predictable bets ``l_i``, are nonnegative
supermartingales under their nulls, so by Ville's inequality crossing ``1/alpha`` has probability
at most ``alpha`` however often one looks: the test may stop after any input. It accepts,
rejects, or (out of inputs) stays undecided, which callers treat as "not accepted".

Letters: B batch, F features, S curve steps.
"""
from __future__ import annotations

from typing import Any

import torch

from fex import metrics as M
from fex.blackbox import BlackBox
from fex.errors import ConfigError
from fex.maskers.base import Masker
from fex.methods import per_instance, scores_of

FIDELITY_METRICS = ("deletion", "insertion")


def batches(x: Any, target: Any, masker: Masker, batch_size: int):
    """(x, target) chunks from one batch or an iterable of batches / (x, y, index) tuples."""
    if isinstance(x, (torch.Tensor, dict)):
        b = masker.batch_size(x)
        t = None if target is None else torch.as_tensor(target).long().flatten()
        for s in range(0, b, batch_size):
            idx = torch.arange(s, min(b, s + batch_size), device=masker.device_of(x))
            yield masker.select(x, idx), None if t is None else (t if t.numel() == 1 else t[s:s + batch_size])
        return
    for item in x:
        yield (item[0] if isinstance(item, (list, tuple)) else item), None


# --------------------------------------------------------------------------- the screen
def fidelity(blackbox: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, target: torch.Tensor,
             metric: str = "deletion", steps: int | None = None) -> torch.Tensor:
    """Per-input fidelity in [0, 1], higher is better: ``1 - deletion AUC / p(y|x)`` or
    ``insertion AUC / p(y|x)``, clipped. [B]."""
    if metric not in FIDELITY_METRICS:
        raise ConfigError(f"fidelity metric must be one of {FIDELITY_METRICS}, got {metric!r}")
    curve = M.perturbation_curve(blackbox, masker, x, scores, target, metric, steps).cpu()  # [B, S+1]
    p_full = curve[:, 0 if metric == "deletion" else -1].clamp_min(1e-6)  # every feature present: p(y|x)
    area = M.curve_auc(curve, masker.valid(x).cpu(), steps)
    return ((1 - area / p_full) if metric == "deletion" else area / p_full).clamp(0, 1)


def betting_step(history: list[float], lo: float, hi: float, max_bet: float) -> float:
    """Predictable bet from past payoffs ``history`` in [lo, hi] (lo < 0): aGRAPA, mean / (var + mean^2),
    clipped to [0, max_bet / -lo] so every wealth factor ``1 + bet * payoff`` stays >= 1 - max_bet > 0."""
    n = len(history)
    if n == 0:
        return 0.0
    mean = sum(history) / n
    var = (((hi - lo) / 4) ** 2 + sum((h - mean) ** 2 for h in history)) / (n + 1)  # shrunk towards a prior variance
    return min(max(mean / (var + mean * mean), 0.0), max_bet / -lo)


class SequentialTest:
    """Anytime-valid two-sided test of E[D] >= 0 for D in [lo, hi] (lo < 0 < hi), by betting.

    ``update(d)`` after every observation returns ``accept`` (E[D] > 0 shown at level alpha),
    ``reject`` (E[D] < 0 shown) or ``undecided``. Each error has probability <= alpha at any
    stopping time (Ville's inequality), so looking after every observation needs no correction.
    """

    def __init__(self, lo: float, hi: float, alpha: float = 0.05, max_bet: float = 0.95) -> None:
        if not lo < 0 < hi:
            raise ConfigError(f"sequential test needs lo < 0 < hi, got [{lo}, {hi}]")
        self.lo, self.hi, self.alpha, self.max_bet = float(lo), float(hi), float(alpha), float(max_bet)
        self.history: list[float] = []
        self.wealth_accept, self.wealth_reject = 1.0, 1.0
        self.trajectory: list[tuple[float, float]] = []
        self.decision = "undecided"

    def update(self, d: float) -> str:
        if self.decision != "undecided":
            return self.decision
        d = min(max(float(d), self.lo), self.hi)
        lam_a = betting_step(self.history, self.lo, self.hi, self.max_bet)
        lam_r = betting_step([-h for h in self.history], -self.hi, -self.lo, self.max_bet)
        self.wealth_accept *= 1 + lam_a * d
        self.wealth_reject *= 1 - lam_r * d
        self.history.append(d)
        self.trajectory.append((self.wealth_accept, self.wealth_reject))
        if self.wealth_accept >= 1 / self.alpha:
            self.decision = "accept"
        elif self.wealth_reject >= 1 / self.alpha:
            self.decision = "reject"
        return self.decision


class Screen:
    """Sequential screen-and-apply test: is the explainer's fidelity >= ``ratio`` x the reference's?

    Args:
        blackbox, masker: the real target and the features.
        reference: the per-instance method (a :data:`fex.methods.METHODS` name).
        ratio: the fraction of the reference's fidelity required (default 0.9).
        alpha: error probability of each decision (accept a bad explainer / reject a good one),
            valid at any stopping time (anytime-valid), so looking after every input is allowed.
        max_inputs: at most this many inputs are used (N = 50).
        metric: ``deletion`` or ``insertion`` fidelity; ``steps`` curve steps (None: one per feature).
        batch_size: inputs explained per batch (queries for a batch's inputs past the stopping
            point are still spent and counted).
        max_bet: each wealth factor stays >= 1 - max_bet.
    """

    def __init__(self, blackbox: BlackBox, masker: Masker, reference: str = "feature_ablation",
                 reference_kwargs: dict | None = None, ratio: float = 0.9, alpha: float = 0.05,
                 max_inputs: int = 50, metric: str = "deletion", steps: int | None = None, batch_size: int = 10,
                 max_bet: float = 0.95) -> None:
        method = per_instance(reference, "screen reference")
        if not 0 < ratio <= 1 or not 0 < alpha < 1 or not 0 < max_bet < 1 or max_inputs < 1:
            raise ConfigError(f"screen needs 0 < ratio <= 1, 0 < alpha < 1, 0 < max_bet < 1, max_inputs >= 1 "
                              f"(got {ratio}, {alpha}, {max_bet}, {max_inputs})")
        if metric not in FIDELITY_METRICS:
            raise ConfigError(f"screen metric must be one of {FIDELITY_METRICS}, got {metric!r}")
        self.blackbox = blackbox if isinstance(blackbox, BlackBox) else BlackBox(blackbox)
        self.masker = masker
        self.reference = method(self.blackbox, masker, **dict(reference_kwargs or {}))
        self.ratio, self.alpha, self.max_inputs = float(ratio), float(alpha), int(max_inputs)
        self.metric, self.steps, self.batch_size, self.max_bet = metric, steps, int(batch_size), float(max_bet)

    def run(self, explainer: Any, x: Any, target: Any = None) -> dict:
        """Screen ``explainer`` (``.explain`` / ``.attribute`` / a callable ``(x, t) -> scores``) on
        the inputs ``x`` (a batch, or an iterable of batches), in order.

        Returns ``decision`` (``accept`` / ``reject`` / ``undecided``), ``accepted`` (bool),
        ``n`` (inputs used), ``queries`` (all target queries spent), ``fidelity`` /
        ``reference_fidelity`` (means over the inputs used), ``ratio_estimate``, and the wealth
        trajectories ``wealth_accept`` / ``wealth_reject``.
        """
        bb, masker = self.blackbox, self.masker
        test = SequentialTest(-self.ratio, 1.0, self.alpha, self.max_bet)  # D = fid - ratio * ref in [-ratio, 1]
        fe: list[float] = []
        fr: list[float] = []
        with bb.counting() as c:
            for xb, tb in batches(x, target, masker, self.batch_size):
                with torch.no_grad():
                    t = bb(xb).argmax(-1).cpu() if tb is None else tb.expand(masker.batch_size(xb)).cpu()
                s_e = (explainer(xb, t) if callable(explainer) and not hasattr(explainer, "explain")
                       and not hasattr(explainer, "attribute") else scores_of(explainer, xb, t)).float()
                s_r = self.reference.attribute(xb, t).float()
                f_e = fidelity(bb, masker, xb, s_e, t, self.metric, self.steps)
                f_r = fidelity(bb, masker, xb, s_r, t, self.metric, self.steps)
                for a, r in zip(f_e.tolist(), f_r.tolist()):
                    fe.append(a)
                    fr.append(r)
                    if test.update(a - self.ratio * r) != "undecided" or len(fe) >= self.max_inputs:
                        break
                if test.decision != "undecided" or len(fe) >= self.max_inputs:
                    break
        decision = test.decision
        traj_acc = [w for w, _ in test.trajectory]
        traj_rej = [w for _, w in test.trajectory]
        hist = test.history
        mean_e = sum(fe) / max(1, len(fe))
        mean_r = sum(fr) / max(1, len(fr))
        return {"decision": decision, "accepted": decision == "accept", "n": len(hist), "queries": int(c.n),
                "fidelity": mean_e, "reference_fidelity": mean_r,
                "ratio_estimate": mean_e / mean_r if mean_r > 0 else float("nan"),
                "wealth_accept": traj_acc, "wealth_reject": traj_rej, "ratio": self.ratio, "alpha": self.alpha,
                "metric": self.metric}
