"""Trust gate: check each amortized explanation with a few black-box queries, and screen an
explainer on a target before using it.

Letters: B batch, F features, J removal sizes checked per input, C classes.

**Per-explanation gate** (:class:`Gate`). For an input x, explained class y and feature scores s,
the gate spends ``1 + 2J`` queries (batched): the unmasked input, x without the top-k features
s names (most relevant first, MoRF) and x without the k lowest-ranked ones (least relevant
first, LeRF; or k random ones), for the J sizes ``k_j = ceil(fraction_j * n)``. Its statistic is

    T = mean_j [p(y | x - comparator_j) - p(y | x - top_j)] / p(y | x)

A faithful explanation names features whose removal hurts more than removing the ones it calls
unimportant (T well above 0); a constant or shuffled one cannot tell them apart (T near 0). The
explanation **passes** when T >= threshold. The threshold is calibrated, not chosen: on
validation inputs whose explanation is *right* (deletion AUC within ``margin`` of a per-instance
reference's, FeatureAblation by default) it is the conformal lower quantile ``T_(k)``,
``k = floor(alpha * (n + 1))``, so a right explanation of an exchangeable new input fails with
probability ``k / (n + 1) <= alpha``: the stated false-alarm rate. (``reference=None`` calibrates on
all validation inputs, without reference queries: then ``P(fail) <= alpha``.) The calibration is saved
next to the checkpoint (``<ckpt>.gate.json``, with the checkpoint's sha256; a stale sidecar is
refused). A failed explanation is replaced by a per-instance method on the same features
(``FeatureAblation`` by default), and its queries are counted per input too. With
``prescreen=`` (a calibrated :class:`fex.ood.Prescreen`: a zero-query abnormality score of the
explanation and a threshold) only the inputs it flags are checked; the others pass unchecked and
cost no gate queries.

**Task-level screen** (:class:`Screen`). Before an explainer (say one trained on a cheap proxy)
is used on a target, a sequential test over at most ``max_inputs`` inputs decides whether its
fidelity is at least ``ratio`` times the per-instance reference's. Per input
``D = fid_explainer - ratio * fid_reference`` lies in ``[-ratio, 1]``; two test-by-betting
wealth processes (Waudby-Smith & Ramdas 2023), ``prod(1 + l_i D_i)`` against H0: E[D] <= 0 and
``prod(1 - l_i D_i)`` against H0: E[D] >= 0 with predictable bets ``l_i``, are nonnegative
supermartingales under their nulls, so by Ville's inequality crossing ``1/alpha`` has probability
at most ``alpha`` however often one looks: the test may stop after any input. It accepts,
rejects, or (out of inputs) stays undecided, which callers treat as "not accepted".
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fex import metrics as M
from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError, InputError
from fex.io import write_json
from fex.maskers.base import Masker

SIDECAR_SUFFIX = ".gate.json"
SIDECAR_FORMAT = "fex-gate"
SIDECAR_VERSION = 1
COMPARATORS = ("bottom", "random")
FIDELITY_METRICS = ("deletion", "insertion")


# --------------------------------------------------------------------------- pure functions
def removal_masks(scores: torch.Tensor, valid: torch.Tensor, fractions: Sequence[float],
                  which: str = "top", generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-masks [B, J, F] removing ``ceil(fraction * n)`` (at least 1) valid features each.

    ``which``: ``top`` removes the highest-scored, ``bottom`` the lowest-scored, ``random`` a
    uniformly random set. Ties are broken by feature index, so a constant explanation removes
    the same features from the top and from the bottom (its statistic is exactly 0).
    """
    scores = scores.to(valid.device).float()
    if which == "top":
        key = scores
    elif which == "bottom":
        key = -scores
    elif which == "random":
        key = torch.rand(scores.shape, generator=generator).to(valid.device)
    else:
        raise ConfigError(f"removal must be top, bottom or random, got {which!r}")
    removed = M.rationale_masks(key, valid, tuple(float(f) for f in fractions))  # [B, J, F] top-k by key
    return valid[:, None, :].to(removed.dtype) - removed


def gate_statistic(p_full: torch.Tensor, p_top: torch.Tensor, p_comp: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """T = mean_j (p_comp - p_top) / p_full: p_full [B], p_top/p_comp [B, J] -> [B]."""
    return (p_comp - p_top).mean(1) / p_full.clamp_min(eps)


def conformal_threshold(stats: torch.Tensor, alpha: float) -> float:
    """Lower conformal quantile: fail iff T < T_(k), k = floor(alpha (n+1)); P(fail) = k/(n+1) <= alpha."""
    if not 0 < alpha < 1:
        raise ConfigError(f"gate alpha (false-alarm rate) must be in (0, 1), got {alpha}")
    s = torch.sort(stats.flatten().double()).values
    k = math.floor(alpha * (len(s) + 1))
    return -math.inf if k < 1 else float(s[k - 1])


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    p = Path(os.fspath(checkpoint))
    return p if p.name.endswith(SIDECAR_SUFFIX) else p.with_name(p.name + SIDECAR_SUFFIX)


def _probs_of(blackbox: BlackBox, masker: Masker, x: Any, masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target-class probability of masked inputs: masks [B, K, F] -> [B, K] (B*K queries)."""
    b, k, _ = masks.shape
    probs = blackbox(masker.apply(x, masks.to(masker.device_of(x))))
    return probs.view(b, k, -1).gather(2, target.view(b, 1, 1).expand(b, k, 1).to(probs.device)).squeeze(2).cpu()


def _scores_of(explainer: Any, x: Any, target: torch.Tensor) -> torch.Tensor:
    if isinstance(explainer, torch.Tensor):
        return explainer
    if hasattr(explainer, "explain"):
        return explainer.explain(x, target)["scores"]
    if hasattr(explainer, "attribute"):  # a fex.baselines.Method
        return explainer.attribute(x, target)
    raise InputError(f"cannot get feature scores from {type(explainer).__name__}: pass an explainer or scores [B, F]")


# --------------------------------------------------------------------------- the gate
class Gate:
    """Per-explanation verification with at most ``max_queries`` target queries per input.

    Args:
        blackbox: the target (default: the explainer's attached black box at verify time).
        masker: the features' masker (default: the explainer's).
        fractions: removal sizes as fractions of an input's valid features (J of them);
            the check costs ``1 + 2J`` queries per input.
        comparator: ``bottom`` (remove the k lowest-ranked features) or ``random``.
        threshold: pass iff statistic >= threshold; set by :meth:`calibrate` or :meth:`load`.
        alpha: the false-alarm rate the threshold was (or will be) calibrated for.
        max_queries: budget for the check itself (``1 + 2J`` must fit).
        fallback: a :data:`fex.baselines.METHODS` name run on failed inputs, or None (keep the
            explainer's scores, only flag them).
        fallback_kwargs: constructor arguments of the fallback method.
        seed: random comparator seed.
        prescreen: a first stage (a calibrated :class:`fex.ood.Prescreen`, or anything with
            ``flag(x, target) -> bool [B]``): :meth:`verify` checks only the flagged inputs.
            Not saved in the sidecar: pass it again after :meth:`load`.
    """

    def __init__(self, blackbox: BlackBox | None = None, masker: Masker | None = None,
                 fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.5), comparator: str = "bottom",
                 threshold: float | None = None, alpha: float = 0.1, max_queries: int = 10,
                 fallback: str | None = "feature_ablation", fallback_kwargs: dict | None = None, seed: int = 0,
                 prescreen: Any = None) -> None:
        self.fractions = tuple(float(f) for f in fractions)
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"gate fractions must be in (0, 1], got {list(self.fractions)}")
        if comparator not in COMPARATORS:
            raise ConfigError(f"gate comparator must be one of {COMPARATORS}, got {comparator!r}")
        if self.queries_per_input > int(max_queries):
            raise ConfigError(f"gate check needs 1 + 2*{len(self.fractions)} = {self.queries_per_input} queries per "
                              f"input but max_queries={max_queries}; use fewer fractions")
        if fallback is not None:
            from fex.baselines import METHODS

            if fallback not in METHODS or fallback == "fex":
                raise ConfigError(f"gate fallback must be a per-instance method in {sorted(set(METHODS) - {'fex'})}, "
                                  f"got {fallback!r}")
        if not 0 < alpha < 1:
            raise ConfigError(f"gate alpha (false-alarm rate) must be in (0, 1), got {alpha}")
        self.blackbox = blackbox if blackbox is None or isinstance(blackbox, BlackBox) else BlackBox(blackbox)
        self.masker = masker
        self.comparator = comparator
        self.threshold = None if threshold is None else float(threshold)
        self.alpha = float(alpha)
        self.max_queries = int(max_queries)
        self.fallback = fallback
        self.fallback_kwargs = dict(fallback_kwargs or {})
        self.seed = int(seed)
        self.prescreen = prescreen
        self.calibration: dict = {}

    @property
    def queries_per_input(self) -> int:
        return 1 + 2 * len(self.fractions)

    def _parts(self, explainer: Any) -> tuple[BlackBox, Masker]:
        bb = self.blackbox if self.blackbox is not None else getattr(explainer, "blackbox", None)
        masker = self.masker if self.masker is not None else getattr(explainer, "masker", None)
        if bb is None:
            raise InputError("the gate needs a target: Gate(blackbox=...) or an explainer with one attached")
        if masker is None:
            raise InputError("the gate needs the features' masker: Gate(masker=...) or an explainer")
        return bb, masker

    # ------------------------------------------------------------------ statistic
    def check(self, explainer_or_scores: Any, x: Any, target: Any = None) -> dict:
        """The statistic only (no threshold, no fallback): ``1 + 2J`` counted queries per input.

        Returns ``statistic`` [B], ``p_full`` [B], ``target`` [B], ``scores`` [B, F] (the
        explanation checked), ``valid`` [B, F] and ``queries`` [B].
        """
        bb, masker = self._parts(explainer_or_scores)
        masker.validate(x)
        valid = masker.valid(x)
        b = valid.shape[0]
        with bb.counting() as c0:
            probs = bb(x).cpu()  # [B, C]: the prediction and p(y|x), 1 query per input
        if target is None:
            t = probs.argmax(-1)
        else:
            t = torch.as_tensor(target).long().flatten().cpu()
            t = t.expand(b) if t.numel() == 1 else t
            if t.numel() != b:
                raise InputError(f"target has {t.numel()} entries for a batch of {b}")
        scores = _scores_of(explainer_or_scores, x, t).float().cpu()  # a method's own queries are not the gate's
        if scores.shape != valid.shape:
            raise InputError(f"scores must be [B, F] = {tuple(valid.shape)}, got {tuple(scores.shape)}")
        gen = torch.Generator().manual_seed(self.seed)
        top = removal_masks(scores, valid, self.fractions, "top")
        comp = removal_masks(scores, valid, self.fractions, self.comparator, gen)
        with bb.counting() as c1:
            p = _probs_of(bb, masker, x, torch.cat([top, comp], 1), t)  # [B, 2J], one batched call
        j = len(self.fractions)
        if c0.n + c1.n != b * self.queries_per_input:  # the budget is a promise: never spend more
            raise AssertionError(f"gate spent {c0.n + c1.n} queries for {b} inputs, not {b * self.queries_per_input}")
        p_full = probs.gather(1, t.view(-1, 1)).squeeze(1)
        return {"statistic": gate_statistic(p_full, p[:, :j], p[:, j:]), "p_full": p_full, "target": t,
                "scores": scores, "valid": valid.cpu(),
                "queries": torch.full((b,), self.queries_per_input, dtype=torch.long)}

    # ------------------------------------------------------------------ verify
    def verify(self, explainer_or_scores: Any, x: Any, target: Any = None) -> dict:
        """Check every explanation; replace failed ones by the fallback method's.

        ``explainer_or_scores``: an explainer (``.explain(x, target)``), a per-instance method
        (``.attribute``) or precomputed scores [B, F] (then pass ``target`` too).
        Returns the explain() keys (``scores``, ``attributions``, ``target``, ``valid``,
        ``num_features``) for the *final* attribution, plus per input ``passed`` [B] bool,
        ``statistic`` [B], ``queries`` [B] (check + fallback), ``method`` (list of names),
        ``explainer_scores`` [B, F] and the ``threshold`` used.
        """
        if self.threshold is None:
            raise ConfigError("the gate is not calibrated: call Gate.calibrate(...) or Gate.load(checkpoint)")
        if isinstance(explainer_or_scores, torch.Tensor) and target is None:
            raise InputError("verifying precomputed scores needs their explained class: target=...")
        if self.prescreen is not None:
            return self._verify_prescreened(explainer_or_scores, x, target)
        bb, masker = self._parts(explainer_or_scores)
        out = self.check(explainer_or_scores, x, target)
        passed = out["statistic"] >= self.threshold
        final = out["scores"].clone()
        queries = out["queries"].clone()
        name = getattr(explainer_or_scores, "name", "fex") if not isinstance(explainer_or_scores, torch.Tensor) else "given"
        method = [name] * len(passed)
        failed = (~passed).nonzero().flatten().tolist()
        if failed and self.fallback is not None:
            from fex.baselines import METHODS

            fb = METHODS[self.fallback](bb, masker, **self.fallback_kwargs)
            dev = masker.device_of(x)
            for i in failed:
                xi = masker.select(x, torch.tensor([i], device=dev))
                with bb.counting() as c:
                    s = fb.attribute(xi, out["target"][i:i + 1]).float().cpu()[0]
                f = min(s.shape[0], final.shape[1])
                final[i] = 0
                final[i, :f] = s[:f]
                queries[i] += c.n
                method[i] = self.fallback
        valid = out["valid"]
        return {"scores": final, "attributions": masker.expand(final.to(masker.device_of(x)), x),
                "target": out["target"], "valid": valid, "num_features": valid.sum(1),
                "passed": passed, "statistic": out["statistic"], "queries": queries, "method": method,
                "explainer_scores": out["scores"], "threshold": self.threshold}

    def _verify_prescreened(self, explainer_or_scores: Any, x: Any, target: Any) -> dict:
        """:meth:`verify` of the inputs the prescreen flags; the rest keep the explainer's scores,
        pass unchecked (``statistic`` NaN) and spend only the prediction query, if one was needed.
        Adds ``flagged`` [B] bool."""
        bb, masker = self._parts(explainer_or_scores)
        given = isinstance(explainer_or_scores, torch.Tensor)
        b = masker.batch_size(x)
        with bb.counting() as c:  # the explainer's own cost: the prediction when target is None
            if given:
                base = {"scores": explainer_or_scores.float().cpu(), "target": torch.as_tensor(target).long().flatten()
                        .expand(b)}
            else:
                base = explainer_or_scores.explain(x, target) if hasattr(explainer_or_scores, "explain") else \
                    {"scores": explainer_or_scores.attribute(x, target)}
                if "target" not in base:
                    base["target"] = torch.as_tensor(target).long().flatten().expand(b)
        t = base["target"].cpu()
        flagged = self.prescreen.flag(x, t).cpu().bool()  # zero target queries
        pred_q = c.n // max(1, b)
        scores, valid = base["scores"].float().cpu().clone(), masker.valid(x).cpu()
        passed = torch.ones(b, dtype=torch.bool)
        statistic = torch.full((b,), float("nan"))
        queries = torch.full((b,), pred_q, dtype=torch.long)
        name = "given" if given else getattr(explainer_or_scores, "name", "fex")
        method = [name] * b
        idx = flagged.nonzero().flatten()
        if idx.numel():
            inner = copy.copy(self)
            inner.prescreen = None
            sub = inner.verify(scores[idx], masker.select(x, idx.to(masker.device_of(x))), t[idx])
            scores[idx], passed[idx], statistic[idx] = sub["scores"], sub["passed"], sub["statistic"]
            queries[idx] += sub["queries"]
            for j, i in enumerate(idx.tolist()):
                method[i] = name if sub["method"][j] == "given" else sub["method"][j]
        return {"scores": scores, "attributions": masker.expand(scores.to(masker.device_of(x)), x), "target": t,
                "valid": valid, "num_features": valid.sum(1), "passed": passed, "statistic": statistic,
                "queries": queries, "method": method, "explainer_scores": base["scores"].float().cpu(),
                "threshold": self.threshold, "flagged": flagged}

    # ------------------------------------------------------------------ calibration
    def calibrate(self, explainer: Any, x_val: Any, alpha: float | None = None, target: Any = None,
                  reference: str | None = "feature_ablation", margin: float = 0.2, steps: int | None = None,
                  batch_size: int = 256) -> float:
        """Set the threshold from validation inputs at false-alarm rate ``alpha``; returns it.

        ``reference`` (default FeatureAblation): a validation explanation counts as *right* when its
        deletion AUC (``steps`` curve steps, None: one per feature) is at most ``margin`` above the
        reference's on the same input, and the threshold is the conformal ``alpha`` quantile of the
        statistic over the right ones only, so ``P(fail | right) <= alpha`` for a new in-distribution
        input. ``reference=None`` uses every validation input (``P(fail) <= alpha``; no reference
        queries: ``1 + 2J`` per input instead of about ``3F``).
        ``x_val``: a batch, or an iterable of batches (e.g. a DataLoader yielding (x, y, index)).
        The calibration's queries are counted on the black box and recorded in :attr:`calibration`.
        """
        self.alpha = float(self.alpha if alpha is None else alpha)
        bb, masker = self._parts(explainer)
        ref = None
        if reference is not None:
            from fex.baselines import METHODS

            if reference not in METHODS or reference == "fex":
                raise ConfigError(f"gate calibration reference must be a per-instance method, got {reference!r}")
            ref = METHODS[reference](bb, masker)
        stats, right = [], []
        given = isinstance(explainer, torch.Tensor)  # precomputed scores: sliced along with the inputs
        if given and not isinstance(x_val, (torch.Tensor, dict)):
            raise InputError("calibrating precomputed scores needs x_val as one batch")
        with bb.counting() as c:
            for start, (xb, tb) in zip(range(0, 1 << 62, batch_size), _batches(x_val, target, masker, batch_size)):
                e = explainer[start:start + masker.batch_size(xb)] if given else explainer
                out = self.check(e, xb, tb)
                stats.append(out["statistic"])
                if ref is not None:
                    t = out["target"]
                    d_e = M.deletion_auc(bb, masker, xb, out["scores"], t, steps).cpu()
                    d_r = M.deletion_auc(bb, masker, xb, ref.attribute(xb, t), t, steps).cpu()
                    right.append(d_e - d_r <= margin)
        s = torch.cat(stats)
        keep = torch.cat(right) if right else torch.ones_like(s, dtype=torch.bool)
        n = int(keep.sum())
        if math.floor(self.alpha * (n + 1)) < 1:
            raise ConfigError(f"only {n} of {len(s)} validation explanations are right (deletion AUC within {margin} "
                              f"of {reference}'s): too few to calibrate at alpha={self.alpha}; use more inputs")
        self.threshold = conformal_threshold(s[keep], self.alpha)
        k = math.floor(self.alpha * (n + 1))
        q = torch.quantile(s[keep].double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
        self.calibration = {"n": int(len(s)), "n_right": n, "alpha": self.alpha, "false_alarm_bound": k / (n + 1),
                            "reference": reference, "margin": margin if reference else None, "steps": steps,
                            "queries": int(c.n), "statistic_quantiles": dict(zip(["q05", "q25", "q50", "q75", "q95"], q)),
                            "statistic_right_vs_wrong_median": [float(s[keep].median()),
                                                                float(s[~keep].median()) if (~keep).any() else None],
                            "target": bb.fingerprint().get("weights_sha256")}
        return self.threshold

    # ------------------------------------------------------------------ sidecar
    def settings(self) -> dict:
        return {"fractions": list(self.fractions), "comparator": self.comparator, "alpha": self.alpha,
                "max_queries": self.max_queries, "fallback": self.fallback, "fallback_kwargs": self.fallback_kwargs,
                "seed": self.seed}

    def save(self, checkpoint: str | os.PathLike) -> Path:
        """Write ``<checkpoint>.gate.json`` atomically (threshold, settings, checkpoint sha256)."""
        if self.threshold is None:
            raise ConfigError("nothing to save: the gate is not calibrated")
        ckpt = Path(os.fspath(checkpoint))
        if not ckpt.is_file():
            raise CheckpointError(f"checkpoint not found: {ckpt}")
        return write_json(sidecar_path(ckpt), {
            "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "checkpoint": ckpt.name,
            "checkpoint_sha256": sha256_file(ckpt), "threshold": self.threshold if math.isfinite(self.threshold) else None,
            **self.settings(), "calibration": self.calibration})

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, blackbox: BlackBox | None = None, masker: Masker | None = None,
             **overrides: Any) -> "Gate":
        """The gate calibrated for ``checkpoint`` (its sidecar); refuses a sidecar of another checkpoint."""
        ckpt = Path(os.fspath(checkpoint))
        if ckpt.name.endswith(SIDECAR_SUFFIX):
            ckpt = ckpt.with_name(ckpt.name[: -len(SIDECAR_SUFFIX)])
        side = sidecar_path(ckpt)
        if not side.is_file():
            raise CheckpointError(f"no gate calibration for {ckpt} (expected {side}); run the gate's calibrate first")
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"gate calibration {side} is unreadable ({type(exc).__name__})") from exc
        if meta.get("format") != SIDECAR_FORMAT or meta.get("version") != SIDECAR_VERSION:
            raise CheckpointError(f"{side} is not an fex gate calibration (version {SIDECAR_VERSION})")
        if not ckpt.is_file():
            raise CheckpointError(f"checkpoint not found: {ckpt}")
        digest = sha256_file(ckpt)
        if meta.get("checkpoint_sha256") != digest:
            raise CheckpointError(f"gate calibration {side.name} is stale: it was made for checkpoint sha256 "
                                  f"{str(meta.get('checkpoint_sha256'))[:12]}, this one is {digest[:12]}; recalibrate")
        kw = {k: meta[k] for k in ("fractions", "comparator", "alpha", "max_queries", "fallback", "fallback_kwargs",
                                   "seed") if k in meta}
        kw.update(overrides)
        thr = meta.get("threshold")
        gate = cls(blackbox=blackbox, masker=masker, threshold=-math.inf if thr is None else thr, **kw)
        gate.calibration = meta.get("calibration", {})
        return gate


def as_gate(verify: Any) -> Gate:
    """``explain(verify=...)``: a :class:`Gate`, or a checkpoint / sidecar path to load one from."""
    if isinstance(verify, Gate):
        return verify
    if isinstance(verify, (str, os.PathLike)):
        return Gate.load(verify)
    raise InputError(f"verify must be a fex.gate.Gate or a checkpoint path, got {type(verify).__name__}")


def _batches(x: Any, target: Any, masker: Masker, batch_size: int):
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
        reference: the per-instance method (a :data:`fex.baselines.METHODS` name).
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
        from fex.baselines import METHODS

        if reference not in METHODS or reference == "fex":
            raise ConfigError(f"screen reference must be a per-instance method, got {reference!r}")
        if not 0 < ratio <= 1 or not 0 < alpha < 1 or not 0 < max_bet < 1 or max_inputs < 1:
            raise ConfigError(f"screen needs 0 < ratio <= 1, 0 < alpha < 1, 0 < max_bet < 1, max_inputs >= 1 "
                              f"(got {ratio}, {alpha}, {max_bet}, {max_inputs})")
        if metric not in FIDELITY_METRICS:
            raise ConfigError(f"screen metric must be one of {FIDELITY_METRICS}, got {metric!r}")
        self.blackbox = blackbox if isinstance(blackbox, BlackBox) else BlackBox(blackbox)
        self.masker = masker
        self.reference = METHODS[reference](self.blackbox, masker, **dict(reference_kwargs or {}))
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
            for xb, tb in _batches(x, target, masker, self.batch_size):
                with torch.no_grad():
                    t = bb(xb).argmax(-1).cpu() if tb is None else tb.expand(masker.batch_size(xb)).cpu()
                s_e = (explainer(xb, t) if callable(explainer) and not hasattr(explainer, "explain")
                       and not hasattr(explainer, "attribute") else _scores_of(explainer, xb, t)).float()
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
