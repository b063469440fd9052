"""Out-of-distribution scores from attribution abnormality (after GAIA, Chen et al., NeurIPS 2023).

Letters: B batch, F features, C classes, D statistics per input, Dc channels, h w positions.

Attributions of out-of-distribution inputs look abnormal. Each score here turns an input into a
vector of D statistics of an attribution and measures how far it lies from the same statistics
on in-distribution validation inputs (:meth:`AbnormalityScore.fit`): the **mean absolute
z-score**

    a(x) = mean_d |v_d(x) - mu_d| / (sigma_d + eps),   eps = 1e-3 * mean_d sigma_d,

GAIA's channel-wise average abnormality with fex's features (or the CNN's channels) as the
channels, calibrated on in-distribution data instead of a fixed sign. Higher is more abnormal.

* :class:`AttributionAbnormality` (black box, **zero queries**): the statistics are fex's own
  amortized attribution, the policy's tau * theta for every feature and class (``logits``, [F*C],
  no explained class needed) or the read-out for the explained class (``scores``, [F]). One
  policy forward pass per input; no target query, forward or backward pass.
* :class:`GradientAbnormality` (white box, GAIA's gradient version): the gradient of
  log p(y_hat | x) with respect to a spatial block's activation A [Dc, h, w] (the last 4-D output
  by default), reduced per channel: ``average`` (the channel's mean gradient, GAIA-A) or ``zeros``
  (the share of zero entries of gradient * activation, GAIA-Z's zero-deflation). One forward and
  one backward pass of the target per input (no black-box query counted).
* :class:`TargetConfidence` (black box, **one query**): ``1 - p(y | x)``, the target's doubt about the
  explained class. Shifts a fex attribution still looks normal on (mirrored or turned digits) mostly
  lower it: the first signal the trust gate's strata use that is not the explanation's own.
* :class:`Prescreen`: a score with a threshold at the ``(1 - rate)`` conformal quantile of held-out
  in-distribution scores, so about ``rate`` of in-distribution inputs are flagged; the trust gate
  (:class:`fex.gate.Gate`, ``prescreen=``) spends its queries only on flagged inputs.
* :class:`FlagUnion`: several calibrated prescreens as one stratifier that flags where any of them flags,
  its ``rate`` measured on in-distribution inputs (what :class:`fex.gate.Gate` spends ``abnormal_alpha`` on).
* :func:`auroc`: the area under the ROC curve separating in-distribution from shifted inputs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fex.errors import ConfigError, InputError, TargetError
from fex.methods.kmeans_prototypes import last_spatial_layer


# --------------------------------------------------------------------------- pure functions
def zscore_abnormality(v: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean absolute z-score [B] of statistics v [B, D] against mean/std [D] (std floored at 1e-3 x its mean)."""
    eps = 1e-3 * float(std.mean()) + 1e-12
    return ((v - mean).abs() / (std + eps)).mean(1)


def auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    """P(score(out) > score(in)) + P(tie) / 2: the AUROC of scores flagging ``outside`` (Mann-Whitney U)."""
    a, b = inside.double().flatten(), outside.double().flatten()
    if not len(a) or not len(b):
        raise InputError("auroc needs scores of both in-distribution and shifted inputs")
    greater = (b[:, None] > a[None, :]).double().sum()
    ties = (b[:, None] == a[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(a) * len(b)))


def upper_conformal_threshold(scores: torch.Tensor, rate: float) -> float:
    """Flag iff score > s_(k), k = ceil((1 - rate)(n + 1)): a new in-distribution input is flagged with
    probability <= rate (exchangeability); +inf when n is too small for that rate."""
    if not 0 < rate < 1:
        raise ConfigError(f"prescreen rate must be in (0, 1), got {rate}")
    s = torch.sort(scores.flatten().double()).values
    k = math.ceil((1 - rate) * (len(s) + 1))
    return math.inf if k > len(s) else float(s[k - 1])


def calibration_halves(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) of a seeded random split of n calibration inputs: a score is fitted on a, its threshold
    (and a union's flag rate) set on b."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2:]


def split_calibration(x_val: Any, target: Any = None, seed: int = 0) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``(x_a, target_a), (x_b, target_b)``: the halves of :func:`calibration_halves`, with per-input targets
    split alongside (one target, or None, goes to both)."""
    n = x_val.shape[0] if isinstance(x_val, torch.Tensor) else len(x_val)
    if n < 4:
        raise InputError(f"prescreen calibration needs at least 4 in-distribution inputs, got {n}")
    a, b = calibration_halves(n, seed)
    ta = tb = target
    if target is not None and torch.as_tensor(target).numel() > 1:
        ta, tb = torch.as_tensor(target)[a], torch.as_tensor(target)[b]
    return (x_val[a], ta), (x_val[b], tb)


# --------------------------------------------------------------------------- scores
class AbnormalityScore:
    """Statistics [B, D] of an input's attribution, and their abnormality against in-distribution data.

    Subclasses define :meth:`statistics`; ``cost`` says what one input costs (target queries,
    forward and backward passes of the target).
    """

    name = "abnormality"
    cost = {"queries": 0, "forward": 0, "backward": 0}

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def statistics(self, x: Any, target: Any = None) -> torch.Tensor:
        raise NotImplementedError

    def _stats(self, x: Any, target: Any, batch_size: int) -> torch.Tensor:
        n = x.shape[0] if isinstance(x, torch.Tensor) else len(x)
        parts = []
        for s in range(0, n, batch_size):
            t = None if target is None or torch.as_tensor(target).numel() == 1 else torch.as_tensor(target)[s:s + batch_size]
            parts.append(self.statistics(x[s:s + batch_size], target if t is None else t).float().cpu())
        return torch.cat(parts)

    def fit(self, x_val: Any, target: Any = None, batch_size: int = 256) -> "AbnormalityScore":
        """Mean and standard deviation of the statistics on in-distribution inputs ``x_val``."""
        v = self._stats(x_val, target, batch_size)
        if len(v) < 2:
            raise InputError(f"{self.name}: calibrating needs at least 2 in-distribution inputs, got {len(v)}")
        self.mean, self.std = v.mean(0), v.std(0)
        return self

    def score(self, x: Any, target: Any = None, batch_size: int = 256) -> torch.Tensor:
        """Abnormality [B] (higher: more out of distribution)."""
        if self.mean is None:
            raise ConfigError(f"{self.name} is not calibrated: call fit(x_val) on in-distribution inputs first")
        return zscore_abnormality(self._stats(x, target, batch_size), self.mean, self.std)


class AttributionAbnormality(AbnormalityScore):
    """Zero-query abnormality of fex's amortized attribution (module docstring).

    Args:
        explainer: a loaded :class:`fex.module.ExplainerModule`.
        statistic: ``logits`` (tau * theta for every feature and class, [F*C]) or ``scores`` (the
            read-out for the explained class, [F]; needs ``target``, else the policy's class guess).
    """

    name = "fex_abnormality"
    cost = {"queries": 0, "forward": 0, "backward": 0}  # one policy forward pass, nothing of the target

    def __init__(self, explainer: Any, statistic: str = "logits") -> None:
        super().__init__()
        if statistic not in ("logits", "scores"):
            raise ConfigError(f"fex abnormality statistic must be logits or scores, got {statistic!r}")
        if not hasattr(explainer, "policy_logits"):
            raise InputError(f"fex abnormality needs an fex explainer (policy_logits), got {type(explainer).__name__}")
        self.explainer, self.statistic = explainer, statistic

    def statistics(self, x: Any, target: Any = None) -> torch.Tensor:
        e = self.explainer
        x = e.masker.prepare(x)
        logits = e.policy_logits(x)  # [B, F, C]
        valid = e.masker.valid(x).to(logits.dtype)
        if self.statistic == "logits":
            tau = e.objective.temperature if e.objective.attribution == "logit" else 1.0
            return (tau * logits * valid.unsqueeze(2)).flatten(1)
        cls = logits.mean(1).argmax(-1) if target is None else torch.as_tensor(target).long().flatten().expand(
            logits.shape[0]).to(logits.device)
        return e.read_out(logits, cls, valid)


class GradientAbnormality(AbnormalityScore):
    """GAIA's gradient abnormality for white-box (``nn.Module``) targets (module docstring).

    Args:
        model: the target network (or a :class:`fex.blackbox.BlackBox` holding one).
        kind: ``average`` (channel-wise mean gradient) or ``zeros`` (zero share of gradient * activation).
        layer: the module whose 4-D output is differentiated against (``auto``: the last one).
    """

    cost = {"queries": 0, "forward": 1, "backward": 1}

    def __init__(self, model: Any, kind: str = "average", layer: str = "auto") -> None:
        super().__init__()
        model = getattr(model, "model", model)
        if not isinstance(model, nn.Module):
            raise TargetError(f"gradient abnormality is white-box: it needs an nn.Module target, got {type(model).__name__}")
        if kind not in ("average", "zeros"):
            raise ConfigError(f"gradient abnormality kind must be average or zeros, got {kind!r}")
        self.model, self.kind, self.layer = model, kind, layer
        self.name = f"gaia_{kind}"

    def statistics(self, x: Any, target: Any = None) -> torch.Tensor:
        if self.layer == "auto":
            self.layer = last_spatial_layer(self.model, x[:1])
        mods = dict(self.model.named_modules())
        if self.layer not in mods:
            raise ConfigError(f"gradient abnormality: the target has no module {self.layer!r}")
        keep: dict[str, torch.Tensor] = {}

        def hook(mod, inp, out):
            out.retain_grad()
            keep["a"] = out

        h = mods[self.layer].register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                logp = torch.log_softmax(self.model(x.detach().requires_grad_(True)), -1)  # [B, C]; grads flow to A even with frozen weights
                t = logp.argmax(-1) if target is None else torch.as_tensor(target).long().flatten().expand(
                    logp.shape[0]).to(logp.device)
                logp.gather(1, t.view(-1, 1)).sum().backward()
        finally:
            h.remove()
            self.model.train(was_training)
        a = keep["a"]
        if a.dim() != 4:
            raise ConfigError(f"gradient abnormality layer {self.layer!r} gives a {a.dim()}-D output, not [B, Dc, h, w]")
        g = a.grad.detach()
        self.model.zero_grad(set_to_none=True)
        if self.kind == "average":
            return g.mean((2, 3))  # [B, Dc]
        return ((g * a.detach()) == 0).float().mean((2, 3))  # [B, Dc]


# --------------------------------------------------------------------------- prescreen
class TargetConfidence(AbnormalityScore):
    """One-query doubt of the target: ``1 - p(y | x)`` for the explained class ``y`` (the predicted class
    where ``target`` is None). Higher is more unusual. :meth:`fit` asks the target about the in-distribution
    inputs once (it needs at least 2); the score itself is ``1 - p`` and does not depend on what was fitted.

    Args:
        blackbox: the target as a :class:`fex.blackbox.BlackBox` (its class probabilities; queries counted).
    """

    name = "target_confidence"
    cost = {"queries": 1, "forward": 0, "backward": 0}

    def __init__(self, blackbox: Any) -> None:
        super().__init__()
        if not callable(blackbox):
            raise InputError(f"target confidence needs the black box (callable), got {type(blackbox).__name__}")
        self.blackbox = blackbox

    def statistics(self, x: Any, target: Any = None) -> torch.Tensor:
        p = self.blackbox(x).float()  # [B, C]
        if target is None:
            cls = p.argmax(-1)
        else:
            cls = torch.as_tensor(target).long().flatten().expand(p.shape[0]).to(p.device)
        return p.gather(1, cls.view(-1, 1))  # [B, 1]

    def score(self, x: Any, target: Any = None, batch_size: int = 256) -> torch.Tensor:
        """``1 - p(y | x)`` [B] (one-sided: a target surer than usual is not unusual)."""
        if self.mean is None:
            raise ConfigError(f"{self.name} is not calibrated: call fit(x_val) on in-distribution inputs first")
        return 1 - self._stats(x, target, batch_size)[:, 0]


class Prescreen:
    """A calibrated abnormality score and threshold: ``flag`` marks inputs to send to the query check.

    :meth:`calibrate` fits the score's statistics on one half of the in-distribution inputs and sets
    the threshold on the other half (:func:`upper_conformal_threshold`), so about ``rate`` of new
    in-distribution inputs are flagged.
    """

    def __init__(self, score: AbnormalityScore, rate: float = 0.2, threshold: float | None = None) -> None:
        if not 0 < rate < 1:
            raise ConfigError(f"prescreen rate must be in (0, 1), got {rate}")
        self.score_fn, self.rate = score, float(rate)
        self.threshold = None if threshold is None else float(threshold)

    @property
    def cost(self) -> dict:
        return self.score_fn.cost

    def calibrate(self, x_val: Any, target: Any = None, seed: int = 0) -> float:
        (xa, ta), (xb, tb) = split_calibration(x_val, target, seed)
        self.score_fn.fit(xa, ta)
        self.threshold = upper_conformal_threshold(self.score_fn.score(xb, tb), self.rate)
        return self.threshold

    def scores(self, x: Any, target: Any = None) -> torch.Tensor:
        return self.score_fn.score(x, target)

    def flag(self, x: Any, target: Any = None) -> torch.Tensor:
        """bool [B]: abnormality above the threshold."""
        if self.threshold is None:
            raise ConfigError("the prescreen is not calibrated: call Prescreen.calibrate(x_val) first")
        return self.scores(x, target) > self.threshold


class FlagUnion:
    """Calibrated prescreens as one stratifier: an input is flagged where any of them flags it.

    :meth:`calibrate` calibrates each part (each fits its score on the same half of ``x_val`` and sets its
    threshold on the other) and then measures ``rate``, the share of that other half the union flags: what
    :class:`fex.gate.Gate` (``abnormality=``) spends ``abnormal_alpha`` on. (Measured on the inputs a score was
    fitted on, the rate would be too low: a fitted score finds those inputs more usual than new ones.)
    """

    def __init__(self, *parts: Prescreen) -> None:
        if not parts:
            raise ConfigError("FlagUnion needs at least one prescreen")
        self.parts = list(parts)
        self.rate: float | None = None

    @property
    def cost(self) -> dict:
        return {k: sum(p.cost.get(k, 0) for p in self.parts) for k in ("queries", "forward", "backward")}

    def calibrate(self, x_val: Any, target: Any = None, seed: int = 0) -> float:
        for p in self.parts:
            p.calibrate(x_val, target, seed)
        _, (xb, tb) = split_calibration(x_val, target, seed)
        self.rate = float(self.flag(xb, tb).float().mean())
        if not 0 < self.rate < 1:
            raise InputError(f"the prescreens flag {self.rate:.0%} of the in-distribution inputs together: "
                             "give them lower rates (or more inputs)")
        return self.rate

    def flag(self, x: Any, target: Any = None) -> torch.Tensor:
        """bool [B]: flagged by at least one part."""
        out = self.parts[0].flag(x, target).cpu().bool()
        for p in self.parts[1:]:
            out |= p.flag(x, target).cpu().bool()
        return out
