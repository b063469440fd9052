"""Trust gate: check each amortized explanation with a few black-box queries, and fall back to a
per-instance method where it fails.

Letters: B batch, F features, J removal sizes checked per input, C classes.

**Per-explanation gate** (:class:`Gate`). For an input x, explained class y and feature scores s,
the gate queries the target on x and on x without the top ``k_j = ceil(fraction_j * n)`` features
s names (J sizes, most relevant first), and condenses the answers into a statistic T (higher:
more trustworthy). Three statistics:

* ``contrast`` (``1 + 2J`` queries): also removes the k lowest-ranked features (LeRF; or k random
  ones) and compares,

      T = mean_j [p(y | x - comparator_j) - p(y | x - top_j)] / p(y | x).

  A faithful explanation names features whose removal hurts more than removing the ones it calls
  unimportant (T well above 0); a constant or shuffled one cannot tell them apart (T near 0).
* ``deletion`` (at most ``1 + J`` queries): T = -A, A the area under the explanation's own
  deletion curve through (0, p(y|x)) and (x_j, p(y | x - top_j)), x_j the share removed, each
  value replaced by its running minimum and flat after the last size (:func:`deletion_area`).
  A is what "wrong" is measured by (a deletion AUC far above the per-instance reference's), in
  the same absolute units. Verification is **sequential**: the sizes are queried in order, only for
  the undecided inputs, and an input stops once its decision is certain, because the running
  minimum can only fall and never below 0 (:func:`deletion_area_bounds`): the same decisions as
  the full check with fewer queries (an input with p(y|x) below the threshold's area needs none).
* ``relative_deletion`` (the same queries, sequential too): T = -A / p(y|x), the share of the
  prediction the explanation's deletion curve keeps on average. In distribution p(y|x) is mostly
  near 1 and the two statistics nearly agree; where a shift lowers p(y|x) the per-instance
  reference's area falls with it, so an absolute gap that makes an explanation wrong is a larger
  share of what is left, and this statistic holds such inputs to a proportionally stricter standard.

The explanation **passes** when T >= threshold. The threshold is calibrated, not chosen: on
validation inputs whose explanation is *right* (deletion AUC within ``margin`` of a per-instance
reference's, FeatureAblation by default) it is the conformal lower quantile ``T_(k)``,
``k = floor(alpha * (n + 1))``, so a right explanation of an exchangeable new input fails with
probability ``k / (n + 1) <= alpha``: the stated false-alarm rate, on average over calibration sets.
With ``confidence=c`` the rank is lowered (training-conditional conformal, :func:`conformal_rank`) so
that this calibration's own false-alarm rate is at most alpha with probability c. (``reference=None`` calibrates on
all validation inputs, without reference queries: then ``P(fail) <= alpha``.) With ``abnormality=``
(a calibrated :class:`fex.ood.Prescreen`: a zero-query abnormality score of the explanation that
flags a share ``rate`` of in-distribution inputs) and ``abnormal_alpha``, the calibration is
Mondrian: flagged inputs get their own threshold at false-alarm rate ``abnormal_alpha`` and the
others one at ``(alpha - rate * abnormal_alpha) / (1 - rate)``, so the in-distribution false-alarm
rate is still at most ``alpha`` while unusual-looking inputs, where wrong explanations are common,
are held to a stricter standard. The calibration is saved next to the checkpoint
(``<ckpt>.gate.json``, with the checkpoint's sha256; a stale sidecar is refused; the abnormality
score is not in it: pass it again). A failed explanation is replaced by a per-instance method on
the same features (``FeatureAblation`` by default), and its queries are counted per input too. With
``prescreen=`` (the same kind of score, used as a first stage instead) only the inputs it flags
are checked; the others pass unchecked and cost no gate queries.

**Two stages by queries** (``early_alpha=``, contrast statistic): the first stage asks the prediction and
one removal pair (3 queries) and passes the input when that pair's term of T is above a cut-off; only the
others are asked the remaining ``2(J - 1)`` removals, and those get exactly the one-stage decision. The
cut-off is calibrated on the validation inputs the full check fails: a conformal upper bound on their
first-stage term, so that a new exchangeable input the full check would fail passes early with
probability at most ``early_alpha``. The pair is the one that lets the most validation inputs pass early.

**A changed target** (``probes=``, default 8): calibration also records the target's answers to a few
half-masked validation inputs (:class:`fex.target_probe.TargetProbe`, saved in the sidecar). Before the first
check against a black box the gate asks them again (``probes`` queries, once per black-box object); if the
answers moved by more than ``probe_tolerance`` (mean total variation), the model behind the explainer is not
the one it was calibrated for, and every explanation fails without removal queries (``target_changed``).
This is the black-box counterpart of the weight hash a white-box target is checked by when a checkpoint loads.

The task-level screen (is this explainer good enough on this target at all?) is :mod:`fex.screen`;
its names are importable from here too.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch

from fex import metrics as M
from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError, InputError
from fex.io import write_json
from fex.maskers.base import Masker
from fex.methods import per_instance, scores_of
from fex.module import ExplainerModule
from fex.screen import FIDELITY_METRICS, Screen, SequentialTest, batches, betting_step, fidelity  # noqa: F401 (re-exported)
from fex.target_probe import TargetProbe

SIDECAR_SUFFIX = ".gate.json"
NO_THRESHOLD = "-inf"  # a calibration on too few inputs for its alpha: every explanation passes (said, not null)
SIDECAR_FORMAT = "fex-gate"
SIDECAR_VERSION = 1
COMPARATORS = ("bottom", "random")
STATISTICS = ("contrast", "deletion", "relative_deletion")
NO_EARLY = "inf"  # an early-pass cut-off no input can clear (no validation input could be bounded): said, not null
SEQUENTIAL = ("deletion", "relative_deletion")  # the statistics checked removal by removal


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


def removal_positions(valid: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """Share of each input's valid features that :func:`removal_masks` removes: ``ceil(f * n) / n`` [B, J]."""
    n = valid.sum(1).double().clamp_min(1)[:, None]  # [B, 1]
    fr = torch.as_tensor(tuple(float(f) for f in fractions), dtype=torch.float64)[None, :]
    return (torch.ceil(fr * n - 1e-9).clamp_min(1) / n).clamp_max(1).float()


def deletion_area(p_full: torch.Tensor, p_top: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Area under the monotone deletion curve: p_full [B], p_top [B, J], positions [B, J] -> [B].

    The curve runs through (0, p_full) and (x_j, p_top_j), x_j the share of features removed
    (increasing), each value replaced by its running minimum (the lowest target probability
    reached removing at most that many top features), and stays flat from x_J to 1. Trapezoids.
    """
    c = torch.cummin(torch.cat([p_full[:, None], p_top], 1).float(), dim=1).values  # [B, J+1]
    xs = torch.cat([torch.zeros_like(positions[:, :1]), positions, torch.ones_like(positions[:, :1])], 1).float()
    ys = torch.cat([c, c[:, -1:]], 1)  # [B, J+2]
    return ((ys[:, 1:] + ys[:, :-1]) * (xs[:, 1:] - xs[:, :-1])).sum(1) / 2


def deletion_area_bounds(p_full: torch.Tensor, p_top: torch.Tensor, measured: torch.Tensor,
                         positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) bounds [B] on :func:`deletion_area` when only the first ``measured`` [B, J] (a
    prefix per row) of p_top are known: the running minimum can only fall, and never below 0, so
    the unknown points lie between 0 (lower) and the last running minimum (upper)."""
    lo = deletion_area(p_full, torch.where(measured, p_top, torch.zeros_like(p_top)), positions)
    hi = deletion_area(p_full, torch.where(measured, p_top, torch.ones_like(p_top)), positions)
    return lo, hi


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k), summed in log space (exact for the n of a calibration set)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k, n + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


@functools.lru_cache(maxsize=256)
def conformal_rank(n: int, alpha: float, confidence: float | None = None) -> int:
    """The rank k of the threshold T_(k) among n calibration statistics (0: no threshold, all pass).

    ``confidence=None``: ``k = floor(alpha (n+1))``, so a new input fails with probability ``k/(n+1) <= alpha``
    on average over calibration sets. ``confidence=c`` (training-conditional, PAC): the largest k with
    ``P(Binomial(n, alpha) >= k) >= c``. The false-alarm rate of *this* calibration, ``F(T_(k)) ~ Beta(k,
    n-k+1)``, is then at most alpha with probability at least c over calibration sets; k is smaller,
    so the gate catches less.
    """
    if confidence is None:
        return math.floor(alpha * (n + 1))
    k = 0
    while k < n and binomial_sf(k + 1, n, alpha) >= confidence:
        k += 1
    return k


def conformal_threshold(stats: torch.Tensor, alpha: float, confidence: float | None = None) -> float:
    """Lower conformal quantile: fail iff T < T_(k), k = :func:`conformal_rank` (``k = floor(alpha (n+1))``
    unless ``confidence`` is given); P(fail) = k/(n+1) <= alpha."""
    if not 0 < alpha < 1:
        raise ConfigError(f"gate alpha (false-alarm rate) must be in (0, 1), got {alpha}")
    if confidence is not None and not 0 < confidence < 1:
        raise ConfigError(f"gate confidence must be in (0, 1), got {confidence}")
    s = torch.sort(stats.flatten().double()).values
    k = conformal_rank(len(s), alpha, confidence)
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


# --------------------------------------------------------------------------- the gate
class Gate:
    """Per-explanation verification with at most ``max_queries`` target queries per input.

    Args:
        blackbox: the target (default: the explainer's attached black box at verify time).
        masker: the features' masker (default: the explainer's).
        fractions: removal sizes as fractions of an input's valid features (J of them; increasing
            for ``deletion``).
        comparator: ``bottom`` (remove the k lowest-ranked features) or ``random`` (``contrast`` only).
        threshold: pass iff statistic >= threshold; set by :meth:`calibrate` or :meth:`load`.
        alpha: the false-alarm rate the threshold was (or will be) calibrated for.
        max_queries: budget for the check itself (:attr:`queries_per_input` must fit).
        fallback: a :data:`fex.methods.METHODS` name run on failed inputs, or None (keep the
            explainer's scores, only flag them).
        fallback_kwargs: constructor arguments of the fallback method.
        seed: random comparator seed.
        statistic: ``contrast`` (``1 + 2J`` queries), ``deletion`` or ``relative_deletion`` (sequential,
            at most ``1 + J``).
        abnormality: a calibrated :class:`fex.ood.Prescreen` whose flag picks the threshold per input
            (with ``abnormal_alpha``; module docstring), or a :class:`fex.ood.FlagUnion` of several (e.g. the
            attribution's abnormality or the target's doubt, :class:`fex.ood.TargetConfidence`, whose one query
            per input is counted on its black box). Not saved in the sidecar.
        abnormal_alpha: the false-alarm rate spent on flagged inputs (``>= alpha``); None: one threshold.
        abnormal_threshold: the flagged inputs' threshold; set by :meth:`calibrate` or :meth:`load`.
        confidence: None (the false-alarm rate is at most ``alpha`` on average over calibration sets) or
            c in (0, 1): at most ``alpha`` for this calibration with probability c (:func:`conformal_rank`).
        prescreen: a first stage (a calibrated :class:`fex.ood.Prescreen`, or anything with
            ``flag(x, target) -> bool [B]``): :meth:`verify` checks only the flagged inputs.
            Not saved in the sidecar: pass it again after :meth:`load`.
        early_alpha: a first stage by queries (contrast only; module docstring): the share of inputs the
            full check would fail that may pass after the first removal pair. None: one stage.
        early_index, early_threshold: the first stage's removal pair (index into ``fractions``) and cut-off;
            set by :meth:`calibrate` or :meth:`load`.
        probes: how many target probes :meth:`calibrate` records (0: none), to notice a changed target
            (module docstring); ``probe_tolerance`` the mean total-variation distance still taken as the same.
        probe: a recorded :class:`fex.target_probe.TargetProbe`; set by :meth:`calibrate` or :meth:`load`.
    """

    def __init__(self, blackbox: BlackBox | None = None, masker: Masker | None = None,
                 fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.5), comparator: str = "bottom",
                 threshold: float | None = None, alpha: float = 0.1, max_queries: int = 10,
                 fallback: str | None = "feature_ablation", fallback_kwargs: dict | None = None, seed: int = 0,
                 prescreen: Any = None, statistic: str = "contrast", abnormality: Any = None,
                 abnormal_alpha: float | None = None, abnormal_threshold: float | None = None,
                 confidence: float | None = None, early_alpha: float | None = None,
                 early_index: int | None = None, early_threshold: float | None = None, probes: int = 8,
                 probe_tolerance: float = 1e-3, probe: TargetProbe | None = None) -> None:
        self.fractions = tuple(float(f) for f in fractions)
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"gate fractions must be in (0, 1], got {list(self.fractions)}")
        if statistic not in STATISTICS:
            raise ConfigError(f"gate statistic must be one of {STATISTICS}, got {statistic!r}")
        self.statistic = statistic
        if statistic in SEQUENTIAL and list(self.fractions) != sorted(set(self.fractions)):
            raise ConfigError(f"the {statistic} statistic needs increasing fractions, got {list(self.fractions)}")
        if comparator not in COMPARATORS:
            raise ConfigError(f"gate comparator must be one of {COMPARATORS}, got {comparator!r}")
        if self.queries_per_input > int(max_queries):
            raise ConfigError(f"gate check needs up to {self.queries_per_input} queries per input ({statistic} "
                              f"statistic, {len(self.fractions)} fractions) but max_queries={max_queries}; "
                              "use fewer fractions")
        if abnormal_alpha is not None and not (0 < alpha <= abnormal_alpha < 1):
            raise ConfigError(f"abnormal_alpha must be in [alpha, 1) = [{alpha}, 1), got {abnormal_alpha}")
        if abnormality is not None and prescreen is not None:
            raise ConfigError("use the abnormality score either to skip checks (prescreen=) or to set the "
                              "threshold per input (abnormality=), not both")
        if fallback is not None:
            per_instance(fallback, "gate fallback")
        if not 0 < alpha < 1:
            raise ConfigError(f"gate alpha (false-alarm rate) must be in (0, 1), got {alpha}")
        if confidence is not None and not 0 < confidence < 1:
            raise ConfigError(f"gate confidence must be in (0, 1) or None, got {confidence}")
        self.confidence = None if confidence is None else float(confidence)
        if early_alpha is not None:
            if statistic != "contrast":
                raise ConfigError(f"early_alpha (a first stage of one removal pair) needs statistic='contrast'; "
                                  f"the {statistic} statistic is already checked sequentially")
            if not 0 < early_alpha < 1:
                raise ConfigError(f"early_alpha must be in (0, 1) or None, got {early_alpha}")
            if abnormal_alpha is not None:
                raise ConfigError("early_alpha and abnormal_alpha cannot be combined (one threshold per input)")
            if len(self.fractions) < 2:
                raise ConfigError("early_alpha needs at least 2 fractions (the first stage asks one of them)")
        if early_index is not None and not 0 <= int(early_index) < len(self.fractions):
            raise ConfigError(f"early_index must index fractions (0..{len(self.fractions) - 1}), got {early_index}")
        self.early_alpha = None if early_alpha is None else float(early_alpha)
        self.early_index = None if early_index is None else int(early_index)
        self.early_threshold = None if early_threshold is None else float(early_threshold)
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
        self.abnormality = abnormality
        self.abnormal_alpha = None if abnormal_alpha is None else float(abnormal_alpha)
        self.abnormal_threshold = None if abnormal_threshold is None else float(abnormal_threshold)
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
            raise ConfigError(f"gate probes must be an integer >= 0, got {probes!r}")
        if not (_is_number(probe_tolerance) and probe_tolerance >= 0):
            raise ConfigError(f"gate probe_tolerance must be a finite number >= 0, got {probe_tolerance!r}")
        self.probes, self.probe_tolerance, self.probe = int(probes), float(probe_tolerance), probe
        self._probed = _ProbeMemory()  # black box -> probe distance
        self.calibration: dict = {}

    def probe_distance(self, blackbox: BlackBox) -> float | None:
        """The recorded probe's distance to ``blackbox`` (asked once per black-box object, then remembered);
        None without a probe."""
        if self.probe is None:
            return None
        if blackbox not in self._probed:
            self._probed[blackbox] = self.probe.distance(blackbox)
        return self._probed[blackbox]

    def target_changed(self, blackbox: BlackBox) -> bool:
        """Whether ``blackbox`` answers the recorded probes differently from the calibration's target."""
        d = self.probe_distance(blackbox)
        return d is not None and d > self.probe_tolerance

    @property
    def queries_per_input(self) -> int:
        """The most a check spends on one input: ``1 + 2J`` (contrast) or ``1 + J`` (deletion; the
        sequential check often stops sooner)."""
        return 1 + (2 if self.statistic == "contrast" else 1) * len(self.fractions)

    @property
    def sequential(self) -> bool:
        """Whether the check can stop early per input (the deletion statistics)."""
        return self.statistic in SEQUENTIAL

    @property
    def two_stage(self) -> bool:
        """Whether :meth:`check` stops after the first removal pair where it can (calibrated ``early_alpha``)."""
        return self.early_alpha is not None and self.early_index is not None and self.early_threshold is not None

    @property
    def stratified(self) -> bool:
        return self.abnormal_alpha is not None

    def unflagged_alpha(self) -> float:
        """False-alarm rate spent on inputs the abnormality score does not flag, so that in distribution
        ``rate * abnormal_alpha + (1 - rate) * unflagged_alpha = alpha`` (``rate``: the score's flag rate)."""
        rate = float(self.abnormality.rate)
        a = (self.alpha - rate * self.abnormal_alpha) / (1 - rate)
        if a <= 0:
            raise ConfigError(f"abnormal_alpha={self.abnormal_alpha} at flag rate {rate} spends more than alpha="
                              f"{self.alpha}: need rate * abnormal_alpha < alpha")
        return a

    def thresholds(self, x: Any, target: torch.Tensor) -> torch.Tensor:
        """Per-input thresholds [B]: the calibrated one, or with ``abnormality=`` the flagged inputs' own
        (zero target queries: the score looks at the explanation only)."""
        b = target.shape[0]
        if self.threshold is None:
            raise ConfigError("the gate is not calibrated: call Gate.calibrate(...) or Gate.load(checkpoint)")
        thr = torch.full((b,), float(self.threshold))
        if not self.stratified:
            return thr
        if self.abnormality is None:
            raise ConfigError("this gate was calibrated per abnormality stratum: pass the same calibrated score "
                              "again, Gate.load(..., abnormality=prescreen)")
        if self.abnormal_threshold is None:
            raise ConfigError("the gate is not calibrated for flagged inputs: call Gate.calibrate(...)")
        flagged = self.abnormality.flag(x, target).cpu().bool()
        return torch.where(flagged, torch.tensor(float(self.abnormal_threshold)), thr)

    def _parts(self, explainer: Any) -> tuple[BlackBox, Masker]:
        bb = self.blackbox if self.blackbox is not None else getattr(explainer, "blackbox", None)
        masker = self.masker if self.masker is not None else getattr(explainer, "masker", None)
        if bb is None:
            raise InputError("the gate needs a target: Gate(blackbox=...) or an explainer with one attached")
        if masker is None:
            raise InputError("the gate needs the features' masker: Gate(masker=...) or an explainer")
        return bb, masker

    # ------------------------------------------------------------------ statistic
    def check(self, explainer_or_scores: Any, x: Any, target: Any = None, thresholds: Any = None,
              early: bool = True) -> dict:
        """The statistic only (no fallback): at most :attr:`queries_per_input` counted queries per input.

        ``thresholds`` (a number, [B], or a function of the explained classes [B] -> [B]; deletion
        statistic only): check sequentially, stopping each
        input as soon as its pass/fail decision at its threshold is certain (the same decision as the
        full check); an input that stopped early reports the bound on its statistic that decided it.
        Returns ``statistic`` [B], ``p_full`` [B], ``target`` [B], ``scores`` [B, F] (the
        explanation checked), ``valid`` [B, F], ``queries`` [B], ``early`` [B] (passed after the first
        stage: a calibrated two-stage gate with ``early=True``; their ``statistic`` is the first pair's term)
        and, for the contrast statistic, ``terms`` [B, J] (each removal pair's term of T; NaN where not asked),
        ``target_changed`` (the recorded probe says this is not the calibrated target: every statistic -inf, no
        removal query) and ``probe_queries`` (the probe's queries, asked in this call: 0 once this black box is known).
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
        scores = scores_of(explainer_or_scores, x, t).float().cpu()  # a method's own queries are not the gate's
        if scores.shape != valid.shape:
            raise InputError(f"scores must be [B, F] = {tuple(valid.shape)}, got {tuple(scores.shape)}")
        p_full = probs.gather(1, t.view(-1, 1)).squeeze(1)
        if callable(thresholds):  # thresholds of the explained classes (see verify)
            thresholds = thresholds(t)
        queries = torch.ones(b, dtype=torch.long)
        passed_early = torch.zeros(b, dtype=torch.bool)
        extra = {}
        with bb.counting() as cp:  # outside the per-input count: asked once per black box
            changed = self.target_changed(bb)
        with bb.counting() as c1:
            if changed:  # not the calibrated target: no removal query can make its threshold meaningful
                stat = torch.full((b,), -math.inf)
                if self.statistic == "contrast":
                    extra["terms"] = torch.full((b, len(self.fractions)), float("nan"))
            elif self.statistic == "contrast":
                if thresholds is not None:
                    raise ConfigError("the sequential check needs statistic='deletion' or 'relative_deletion'")
                stat, q, passed_early, extra["terms"] = self._contrast(bb, masker, x, scores, valid, t, p_full,
                                                                       early and self.two_stage)
                queries += q
            else:
                stat, q = self._deletion(bb, masker, x, scores, valid, t, p_full, thresholds)
                queries += q
        if c0.n + c1.n != int(queries.sum()) or (queries > self.queries_per_input).any():  # the budget is a promise
            raise AssertionError(f"gate spent {c0.n + c1.n} queries for {b} inputs, not {int(queries.sum())}")
        return {"statistic": stat, "p_full": p_full, "target": t, "scores": scores, "valid": valid.cpu(),
                "queries": queries, "early": passed_early, "target_changed": changed, "probe_queries": cp.n, **extra}

    def _contrast(self, bb: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, valid: torch.Tensor,
                  t: torch.Tensor, p_full: torch.Tensor, two_stage: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The contrast statistic; with ``two_stage``, the first removal pair for every input and the other
        pairs only where its term is at most the cut-off. Returns (statistic [B], removal queries [B],
        passed early [B], terms [B, J])."""
        b, j = valid.shape[0], len(self.fractions)
        gen = torch.Generator().manual_seed(self.seed)
        top = removal_masks(scores, valid, self.fractions, "top")
        comp = removal_masks(scores, valid, self.fractions, self.comparator, gen)
        if not two_stage:
            p = _probs_of(bb, masker, x, torch.cat([top, comp], 1), t)  # [B, 2J], one batched call
            stat = gate_statistic(p_full, p[:, :j], p[:, j:])
            terms = (p[:, j:] - p[:, :j]) / p_full.clamp_min(1e-6)[:, None]
            return stat, torch.full((b,), 2 * j, dtype=torch.long), torch.zeros(b, dtype=torch.bool), terms
        e = self.early_index
        p_top, p_comp = torch.full((b, j), float("nan")), torch.full((b, j), float("nan"))
        p = _probs_of(bb, masker, x, torch.stack([top[:, e], comp[:, e]], 1), t)  # [B, 2]
        p_top[:, e], p_comp[:, e] = p[:, 0], p[:, 1]
        first = (p_comp[:, e] - p_top[:, e]) / p_full.clamp_min(1e-6)
        passed = first > self.early_threshold
        queries = torch.full((b,), 2, dtype=torch.long)
        rest = (~passed).nonzero().flatten()
        if rest.numel():
            others = [k for k in range(j) if k != e]
            dev = masker.device_of(x)
            sub = masker.select(x, rest.to(dev))
            p = _probs_of(bb, masker, sub, torch.cat([top[rest][:, others], comp[rest][:, others]], 1), t[rest])
            p_top[rest[:, None], others], p_comp[rest[:, None], others] = p[:, : len(others)], p[:, len(others):]
            queries[rest] += 2 * len(others)
        stat = torch.where(passed, first, gate_statistic(p_full, p_top, p_comp))
        return stat, queries, passed, (p_comp - p_top) / p_full.clamp_min(1e-6)[:, None]

    def _deletion(self, bb: BlackBox, masker: Masker, x: Any, scores: torch.Tensor, valid: torch.Tensor,
                  t: torch.Tensor, p_full: torch.Tensor, thresholds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """T = -deletion_area over the top-removal queries; with ``thresholds``, sequentially (fraction by
        fraction, only the undecided inputs). Returns (statistic [B], removal queries [B])."""
        b, j = valid.shape[0], len(self.fractions)
        top = removal_masks(scores, valid, self.fractions, "top")  # [B, J, F]
        pos = removal_positions(valid.cpu(), self.fractions)  # [B, J]
        # relative_deletion: the area as a share of p(y|x) (a positive constant per input: the bounds scale with it)
        scale = p_full.clamp_min(1e-6) if self.statistic == "relative_deletion" else torch.ones_like(p_full)
        if thresholds is None:  # the full check: every fraction, one batched call
            p_top = _probs_of(bb, masker, x, top, t)
            return -deletion_area(p_full, p_top, pos) / scale, torch.full((b,), j, dtype=torch.long)
        thr = torch.as_tensor(thresholds, dtype=torch.float32).flatten().expand(b)
        p_top = torch.zeros(b, j)
        measured = torch.zeros(b, j, dtype=torch.bool)
        queries = torch.zeros(b, dtype=torch.long)
        dev = masker.device_of(x)
        for k in range(j + 1):
            lo, hi = deletion_area_bounds(p_full, p_top, measured, pos)
            lo, hi = lo / scale, hi / scale
            open_ = (-hi < thr) & (-lo >= thr)  # neither surely passing (-hi >= thr) nor surely failing (-lo < thr)
            if k == j or not open_.any():
                break
            idx = open_.nonzero().flatten()
            xi = masker.select(x, idx.to(dev))
            p_top[idx, k] = _probs_of(bb, masker, xi, top[idx, k:k + 1], t[idx])[:, 0]
            measured[idx, k] = True
            queries[idx] += 1
        # decided: the bound that decided (the statistic itself where every fraction was measured)
        stat = torch.where(-hi >= thr, -hi, -lo)
        return stat, queries

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
        seen: dict = {}  # the per-input thresholds, computed once the explained classes are known

        def per_input(t: torch.Tensor) -> torch.Tensor:
            seen["thr"] = self.thresholds(x, t)
            return seen["thr"]

        out = self.check(explainer_or_scores, x, target, per_input if self.sequential else None)
        thr = seen["thr"] if "thr" in seen else self.thresholds(x, out["target"])
        # a changed target fails even under a threshold of -inf (a stratum too small for its alpha)
        changed = torch.as_tensor(bool(out["target_changed"]))
        passed = (out["early"] | (out["statistic"] >= thr)) & ~changed
        final = out["scores"].clone()
        queries = out["queries"].clone()
        name = getattr(explainer_or_scores, "name", "fex") if not isinstance(explainer_or_scores, torch.Tensor) else "given"
        method = [name] * len(passed)
        failed = (~passed).nonzero().flatten().tolist()
        if failed and self.fallback is not None:
            fb = per_instance(self.fallback, "gate fallback")(bb, masker, **self.fallback_kwargs)
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
                "explainer_scores": out["scores"], "threshold": self.threshold, "thresholds": thr,
                "early": out["early"], "target_changed": out["target_changed"]}

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
        changed = self.target_changed(bb)
        if changed:  # not the calibrated target: every input goes to the check, and fails there
            flagged = torch.ones_like(flagged)
        pred_q = c.n // max(1, b)
        scores, valid = base["scores"].float().cpu().clone(), masker.valid(x).cpu()
        passed = torch.ones(b, dtype=torch.bool)
        statistic = torch.full((b,), float("nan"))
        early = torch.zeros(b, dtype=torch.bool)
        queries = torch.full((b,), pred_q, dtype=torch.long)
        name = "given" if given else getattr(explainer_or_scores, "name", "fex")
        method = [name] * b
        idx = flagged.nonzero().flatten()
        if idx.numel():
            inner = copy.copy(self)
            inner.prescreen = None
            sub = inner.verify(scores[idx], masker.select(x, idx.to(masker.device_of(x))), t[idx])
            scores[idx], passed[idx], statistic[idx] = sub["scores"], sub["passed"], sub["statistic"]
            early[idx] = sub["early"]
            queries[idx] += sub["queries"]
            for j, i in enumerate(idx.tolist()):
                method[i] = name if sub["method"][j] == "given" else sub["method"][j]
        return {"scores": scores, "attributions": masker.expand(scores.to(masker.device_of(x)), x), "target": t,
                "valid": valid, "num_features": valid.sum(1), "passed": passed, "statistic": statistic,
                "queries": queries, "method": method, "explainer_scores": base["scores"].float().cpu(),
                "threshold": self.threshold, "flagged": flagged, "early": early,
                "target_changed": changed}

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
        queries: :attr:`queries_per_input` per input instead of about ``3F`` more).
        With ``abnormal_alpha`` (and ``abnormality=``), Mondrian conformal: the inputs the score flags get
        their own threshold at ``abnormal_alpha``, the others at :meth:`unflagged_alpha`, so the false-alarm
        rate in distribution stays ``alpha`` while flagged (unusual-looking) inputs are checked more strictly.
        ``x_val``: a batch, or an iterable of batches (e.g. a DataLoader yielding (x, y, index)).
        The calibration's queries are counted on the black box and recorded in :attr:`calibration`.
        """
        self.alpha = float(self.alpha if alpha is None else alpha)
        bb, masker = self._parts(explainer)
        ref = None
        if reference is not None:
            ref = per_instance(reference, "gate calibration reference")(bb, masker)
        stats, right, flags, terms, first = [], [], [], [], None
        self.probe, self._probed = None, _ProbeMemory()  # a new calibration: its own target
        given = isinstance(explainer, torch.Tensor)  # precomputed scores: sliced along with the inputs
        if given and not isinstance(x_val, (torch.Tensor, dict)):
            raise InputError("calibrating precomputed scores needs x_val as one batch")
        with bb.counting() as c:
            for start, (xb, tb) in zip(range(0, 1 << 62, batch_size), batches(x_val, target, masker, batch_size)):
                e = explainer[start:start + masker.batch_size(xb)] if given else explainer
                out = self.check(e, xb, tb, early=False)  # the full check: the first stage is calibrated on it
                first = xb if first is None else first
                stats.append(out["statistic"])
                terms.append(out.get("terms"))
                if self.stratified:
                    if self.abnormality is None:
                        raise ConfigError("abnormal_alpha needs abnormality= (a calibrated fex.ood.Prescreen)")
                    flags.append(self.abnormality.flag(xb, out["target"]).cpu().bool())
                if ref is not None:
                    t = out["target"]
                    d_e = M.deletion_auc(bb, masker, xb, out["scores"], t, steps).cpu()
                    d_r = M.deletion_auc(bb, masker, xb, ref.attribute(xb, t), t, steps).cpu()
                    right.append(d_e - d_r <= margin)
        probe_queries = 0
        if self.probes:
            with bb.counting() as cp:
                self.probe = TargetProbe.record(bb, masker, first, self.probes, self.seed, self.probe_tolerance)
            probe_queries = cp.n
            self._probed[bb] = 0.0  # the calibration's own target: the answers were just recorded
        s = torch.cat(stats)
        keep = torch.cat(right) if right else torch.ones_like(s, dtype=torch.bool)
        n = int(keep.sum())
        if conformal_rank(n, self.alpha, self.confidence) < 1:
            raise ConfigError(f"only {n} of {len(s)} validation explanations are right (deletion AUC within {margin} "
                              f"of {reference}'s): too few to calibrate at alpha={self.alpha}"
                              + (f" with confidence {self.confidence}" if self.confidence else "") + "; use more inputs")
        if self.stratified:  # Mondrian: one conformal threshold per stratum of the abnormality score
            flag = torch.cat(flags)
            self.threshold = conformal_threshold(s[keep & ~flag], self.unflagged_alpha(), self.confidence)
            self.abnormal_threshold = conformal_threshold(s[keep & flag], self.abnormal_alpha, self.confidence)
            for name, thr, a, m in (("unflagged", self.threshold, self.unflagged_alpha(), int((keep & ~flag).sum())),
                                    ("flagged", self.abnormal_threshold, self.abnormal_alpha, int((keep & flag).sum()))):
                if thr == -math.inf:  # said, not silent: this stratum's inputs will all pass
                    warnings.warn(f"gate stratum '{name}' has no threshold: {m} right validation explanations are too "
                                  f"few for its false-alarm rate {a:.3g}" + (f" at confidence {self.confidence}"
                                  if self.confidence else "") + ", so every such input passes unchecked; use more "
                                  "inputs, a lower flag rate or a smaller abnormal_alpha", stacklevel=2)
        else:
            self.threshold = conformal_threshold(s[keep], self.alpha, self.confidence)
        if self.early_alpha is not None:
            self._calibrate_early(torch.cat(terms), s < self.threshold)
        k = conformal_rank(n, self.alpha, self.confidence)
        q = torch.quantile(s[keep].double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
        self.calibration = {"n": int(len(s)), "n_right": n, "alpha": self.alpha, "false_alarm_bound": k / (n + 1),
                            "confidence": self.confidence,
                            "reference": reference, "margin": margin if reference else None, "steps": steps,
                            "queries": int(c.n), "statistic_quantiles": dict(zip(["q05", "q25", "q50", "q75", "q95"], q)),
                            "statistic_right_vs_wrong_median": [float(s[keep].median()),
                                                                float(s[~keep].median()) if (~keep).any() else None],
                            "target": bb.fingerprint().get("weights_sha256"), "probe_queries": probe_queries}
        if self.early_alpha is not None:
            self.calibration.update({"early_alpha": self.early_alpha, "early_index": self.early_index,
                                     "early_fraction": self.fractions[self.early_index],
                                     "n_would_fail": int((s < self.threshold).sum()),
                                     "early_pass_share": float((torch.cat(terms)[:, self.early_index]
                                                                > self.early_threshold).float().mean())})
        if self.stratified:
            self.calibration.update({"n_right_flagged": int((keep & flag).sum()), "abnormal_alpha": self.abnormal_alpha,
                                     "unflagged_alpha": self.unflagged_alpha(), "flag_rate": float(self.abnormality.rate)})
        return self.threshold

    def _calibrate_early(self, terms: torch.Tensor, would_fail: torch.Tensor) -> None:
        """The first stage from the validation inputs' pair terms [N, J] and whether the full check fails
        them [N]: per pair, the cut-off is the ``r``-th smallest term among the m failing inputs,
        ``r = ceil((1 - early_alpha)(m + 1))`` (none above it can be bounded: +inf when r > m), so a new
        exchangeable failing input's term exceeds it with probability at most ``early_alpha``; the pair kept
        is the one whose cut-off the most validation inputs clear (ties: the smaller fraction)."""
        failing = terms[would_fail]
        m = failing.shape[0]
        r = math.ceil((1 - self.early_alpha) * (m + 1))
        best = None
        for j in range(terms.shape[1]):
            cut = math.inf if r > m else float(failing[:, j].sort().values[r - 1])
            cleared = int((terms[:, j] > cut).sum())
            if best is None or cleared > best[0]:
                best = (cleared, j, cut)
        _, self.early_index, self.early_threshold = best

    # ------------------------------------------------------------------ sidecar
    def settings(self) -> dict:
        return {"fractions": list(self.fractions), "comparator": self.comparator, "alpha": self.alpha,
                "max_queries": self.max_queries, "fallback": self.fallback, "fallback_kwargs": self.fallback_kwargs,
                "seed": self.seed, "statistic": self.statistic, "abnormal_alpha": self.abnormal_alpha,
                "confidence": self.confidence, "early_alpha": self.early_alpha, "early_index": self.early_index,
                "probes": self.probes, "probe_tolerance": self.probe_tolerance}

    def save(self, checkpoint: str | os.PathLike) -> Path:
        """Write ``<checkpoint>.gate.json`` atomically (threshold, settings, checkpoint sha256)."""
        if self.threshold is None:
            raise ConfigError("nothing to save: the gate is not calibrated")
        ckpt = Path(os.fspath(checkpoint))
        if not ckpt.is_file():
            raise CheckpointError(f"checkpoint not found: {ckpt}")
        return write_json(sidecar_path(ckpt), {
            "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "checkpoint": ckpt.name,
            "checkpoint_sha256": sha256_file(ckpt),
            "threshold": _finite_or_said(self.threshold), "abnormal_threshold": _finite_or_said(self.abnormal_threshold),
            "early_threshold": _finite_or_said(self.early_threshold),
            "probe": None if self.probe is None else self.probe.state(),
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
                                   "seed", "statistic", "abnormal_alpha", "abnormal_threshold", "confidence",
                                   "early_alpha", "early_index", "early_threshold", "probes", "probe_tolerance")
              if k in meta}
        kw.setdefault("statistic", "contrast")  # sidecars written before the deletion statistic existed
        kw.setdefault("probes", 0)  # sidecars written before target probes existed record none
        _check_sidecar_types(side, {"threshold": meta.get("threshold"), **kw})
        kw.update(overrides)
        thr = meta["threshold"]
        if kw.get("abnormal_threshold") == NO_THRESHOLD:
            kw["abnormal_threshold"] = -math.inf
        if kw.get("early_threshold") == NO_EARLY:
            kw["early_threshold"] = math.inf
        if meta.get("probe") is not None and "probe" not in kw:
            kw["probe"] = TargetProbe.from_state(meta["probe"], f"gate calibration {side.name}")
        gate = cls(blackbox=blackbox, masker=masker, threshold=-math.inf if thr == NO_THRESHOLD else thr, **kw)
        gate.calibration = meta.get("calibration", {})
        return gate


class _ProbeMemory(weakref.WeakKeyDictionary):
    """Black box -> its probe distance, held weakly. Shallow copies of a gate share it; a pickled or deep-copied
    gate starts with an empty one (weak references do not pickle, and a copied black box is another object)."""

    def __reduce__(self):
        return (_ProbeMemory, ())

    def __deepcopy__(self, memo: dict) -> "_ProbeMemory":
        return _ProbeMemory()


def _finite_or_said(v: float | None) -> float | str | None:
    return v if v is None or math.isfinite(v) else (NO_EARLY if v > 0 else NO_THRESHOLD)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_sidecar_types(side: Path, meta: dict) -> None:
    """A sidecar is data: each value of the type it must have, or one line naming the field. (``threshold:
    null`` would let every input pass; ``"abc"`` would fail deep inside with a traceback.)"""
    checks = {
        "threshold": (lambda v: _is_number(v) or v == NO_THRESHOLD, f"a finite number (or {NO_THRESHOLD!r})"),
        "fractions": (lambda v: isinstance(v, list) and all(_is_number(f) for f in v), "a list of numbers"),
        "comparator": (lambda v: isinstance(v, str), "a string"),
        "alpha": (_is_number, "a number"),
        "max_queries": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "fallback": (lambda v: v is None or isinstance(v, str), "a method name or null"),
        "fallback_kwargs": (lambda v: v is None or isinstance(v, dict), "an object"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "statistic": (lambda v: v in STATISTICS, f"one of {list(STATISTICS)}"),
        "abnormal_alpha": (lambda v: v is None or _is_number(v), "a number or null"),
        "confidence": (lambda v: v is None or (_is_number(v) and 0 < v < 1), "a number in (0, 1) or null"),
        "abnormal_threshold": (lambda v: v is None or _is_number(v) or v == NO_THRESHOLD,
                               f"a finite number, {NO_THRESHOLD!r} or null"),
        "early_alpha": (lambda v: v is None or (_is_number(v) and 0 < v < 1), "a number in (0, 1) or null"),
        "early_index": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                        "a non-negative integer or null"),
        "early_threshold": (lambda v: v is None or _is_number(v) or v == NO_EARLY, f"a finite number, {NO_EARLY!r} or null"),
        "probes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
        "probe_tolerance": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    }
    for key, value in meta.items():
        ok, want = checks[key]
        if not ok(value):
            raise CheckpointError(f"gate calibration {side.name}: {key} must be {want}, got {json.dumps(value)[:60]}")


def as_gate(verify: Any) -> Gate:
    """``explain(verify=...)``: a :class:`Gate`, or a checkpoint / sidecar path to load one from."""
    if isinstance(verify, Gate):
        return verify
    if isinstance(verify, (str, os.PathLike)):
        return Gate.load(verify)
    raise InputError(f"verify must be a fex.gate.Gate or a checkpoint path, got {type(verify).__name__}")


ExplainerModule.gate_loader = as_gate  # explain(verify="explainer.ckpt") loads its calibrated gate
