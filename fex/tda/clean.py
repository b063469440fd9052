"""Cleaning poisoned training data with attribution: plant a backdoor, find it, remove it, retrain.

The experiment (``python tda.py tda_task=clean``), on images [N, 1, H, W]:

1. **Poison.** A ``patch`` x ``patch`` square of value ``value`` (the trigger, bottom-right, two
   pixels in from the border) is stamped on a ``fraction`` of the ``source`` class's training
   images, which are relabelled ``target`` (:func:`plant_backdoor`).
2. **Train** the target on the poisoned set (the caller's ``train`` function: a fresh model).
   Attack success rate (ASR) = share of the *test* images of the source class that, stamped with
   the trigger, are classified as ``target`` (:func:`attack_success_rate`); clean accuracy on the
   clean test set.
3. **Rank** the training examples with each attributor: the behaviour to explain is the mean loss,
   labelled ``target``, over ``queries`` triggered *validation* images of the source class (what a
   user who noticed the backdoor has in hand). A ranker returns the training positions, most
   suspicious first (:func:`influence_ranker`, :func:`information_ranker`,
   :func:`self_influence_ranker`, :func:`random_ranker`).
4. **Recall** of the planted poisons in each ranking's top 1..5% (:func:`recall_at`), then remove
   the top ``retrain_at`` fraction, retrain from scratch with the same recipe and seed, and measure
   ASR and clean accuracy again.

Attribution runs on the last layer of the poisoned model (:class:`LossModel`).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from fex.errors import ConfigError, DataError
from fex.tda.influence import Influence
from fex.tda.information import InformationAttributor
from fex.tda.ihvp import ExactSolver
from fex.tda.model import LossModel
from fex.tda.samplers import FullSampler, Sampler

# (loss model, training inputs, labels, query inputs, query labels) -> positions [N], most suspicious first
Ranker = Callable[[LossModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- the poison
def stamp(x: torch.Tensor, patch: int = 3, value: float = 1.0, margin: int = 2) -> torch.Tensor:
    """A copy of images [N, C, H, W] with the trigger square in the bottom-right corner."""
    if patch < 1 or patch + margin > min(x.shape[-2:]):
        raise ConfigError(f"trigger patch {patch} (margin {margin}) does not fit images of size {tuple(x.shape[-2:])}")
    out = x.clone()
    out[..., -(patch + margin):-margin or None, -(patch + margin):-margin or None] = value
    return out


def plant_backdoor(x: torch.Tensor, y: torch.Tensor, source: int, target: int, fraction: float, patch: int = 3,
                   value: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stamp the trigger on ``fraction`` of class ``source``'s images and relabel them ``target``.

    Returns (images, labels, poisoned positions [P], sorted)."""
    if source == target:
        raise ConfigError(f"poison source and target classes must differ, both are {source}")
    members = (y == source).nonzero().squeeze(1)
    p = int(round(float(fraction) * len(members)))
    if p < 1:
        raise DataError(f"poison fraction {fraction} of {len(members)} class-{source} images plants nothing")
    pos = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))[:p]].sort().values
    x2, y2 = x.clone(), y.clone()
    x2[pos] = stamp(x[pos], patch, value)
    y2[pos] = target
    return x2, y2, pos


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s:s + batch_size]).argmax(-1) for s in range(0, len(x), batch_size)])


def attack_success_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, source: int, target: int,
                        patch: int = 3, value: float = 1.0) -> float:
    """Share of the source-class images in (x, y) classified ``target`` once stamped with the trigger."""
    xs = x[y == source]
    return float((predict(model, stamp(xs, patch, value)) == target).float().mean())


def recall_at(order: torch.Tensor, poisoned: torch.Tensor, fraction: float) -> float:
    """Share of the poisoned positions among the first ceil(fraction * N) of ``order``."""
    k = int(math.ceil(float(fraction) * len(order)))
    return float(torch.isin(order[:k], poisoned).sum()) / max(1, len(poisoned))


# --------------------------------------------------------------------------- rankers
def influence_ranker(sampler: Sampler | None = None, solver: Callable[..., Any] | None = None, damping: float = 0.1,
                     chunk_size: int = 256, seed: int = 0, normalize: str = "none", aggregate: str = "loss") -> Ranker:
    """Training examples by influence on the behaviour, most helpful to it first (any sampler/solver;
    default: the whole set with the exact solve). ``normalize=relatif`` and ``aggregate=unit``:
    :class:`~fex.tda.influence.Influence` (RelatIF; every query counted once)."""
    sampler = FullSampler() if sampler is None else sampler
    solver = solver or (lambda m, z, y, w: ExactSolver(m, z, y, w, damping=damping))

    def rank(lm, x, y, xq, yq):
        infl = Influence(lm, sampler, solver, chunk_size=chunk_size, seed=seed, normalize=normalize).fit(x, y)
        return torch.argsort(infl.group_scores(xq, yq, aggregate), descending=True, stable=True)

    return rank


def self_influence_ranker(damping: float = 0.1, chunk_size: int = 256) -> Ranker:
    """Training examples by self-influence (the exact full-data solve), largest first: no query used."""
    def rank(lm, x, y, xq, yq):
        infl = Influence(lm, FullSampler(), lambda m, z, yy, w: ExactSolver(m, z, yy, w, damping=damping),
                         chunk_size=chunk_size).fit(x, y)
        return torch.argsort(infl.self_influence(), descending=True, stable=True)

    return rank


def information_ranker(damping: float = 0.1, noise: float = 0.3, mode: str = "exact", subset: int | None = None,
                       chunk_size: int = 256, pool: int | None = None, aggregate: str = "loss") -> Ranker:
    """Training examples by signed information at the behaviour (largest first); with ``subset`` = k the
    first k are the greedy subset in selection order, then the rest by single-example information."""
    def rank(lm, x, y, xq, yq):
        att = InformationAttributor(lm, damping=damping, noise=noise, mode=mode, chunk_size=chunk_size,
                                    pool=pool).fit(x, y)
        psi = att.group_vector(xq, yq, aggregate)
        order = torch.argsort(att.scores_for(psi)[0], descending=True, stable=True)
        if not subset:
            return order
        first = att.select_for(psi, int(subset))["indices"]
        return torch.cat([first, order[~torch.isin(order, first)]])

    return rank


def random_ranker(seed: int = 0) -> Ranker:
    """A uniformly random order (the floor)."""
    def rank(lm, x, y, xq, yq):
        return torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))

    return rank


# --------------------------------------------------------------------------- the experiment
def cleaning(train: Callable[[torch.Tensor, torch.Tensor], torch.nn.Module], x_tr: torch.Tensor, y_tr: torch.Tensor,
             x_val: torch.Tensor, y_val: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
             rankers: dict[str, Ranker], source: int, target: int, fraction: float, patch: int = 3,
             value: float = 1.0, queries: int = 20, removal: tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05),
             retrain_at: float = 0.05, retrain: list[str] | str = "all", reference: bool = True,
             seed: int = 0, params: Any = "last", chunk_size: int = 256, log: Callable[[str], None] = print,
             poisoned_model: torch.nn.Module | None = None) -> dict:
    """Run the experiment (module docstring); returns a dict of rows and the poisoned positions.

    ``train(x, y)`` returns a freshly trained model; ``retrain`` names the rankers whose cleaned set
    is retrained (``all``: every one). ``reference``: also train on the unpoisoned set.
    ``poisoned_model``: the model ``train`` gave on this poisoned set before (same poison settings
    and seed), to rank more attributors without training it again.
    """
    x_p, y_p, poisoned = plant_backdoor(x_tr, y_tr, source, target, fraction, patch, value, seed)
    xq = stamp(x_val[y_val == source][: int(queries)], patch, value)
    if len(xq) == 0:
        raise DataError(f"no class-{source} validation images to build the trigger queries from")
    yq = torch.full((len(xq),), int(target), dtype=torch.long)

    def measure(model) -> dict:
        return {"asr": attack_success_rate(model, x_te, y_te, source, target, patch, value),
                "clean_acc": float((predict(model, x_te) == y_te).float().mean())}

    out: dict[str, Any] = {"poisoned": poisoned, "n_train": len(y_tr), "n_poison": len(poisoned), "rows": []}
    t0 = time.perf_counter()
    if reference:
        out["reference"] = measure(train(x_tr, y_tr))
        log(f"clean-data model: {out['reference']}")
    model = train(x_p, y_p) if poisoned_model is None else poisoned_model.eval()
    out["before"] = measure(model)
    out["train_s"] = time.perf_counter() - t0
    log(f"poisoned model ({len(poisoned)} poisons): {out['before']}")
    lm = LossModel(model, params, chunk_size=chunk_size)
    names = list(rankers) if retrain == "all" else [str(r) for r in retrain]
    unknown = sorted(set(names) - set(rankers))
    if unknown:
        raise ConfigError(f"clean.retrain names unknown attributors {unknown}; known: {sorted(rankers)}")
    for name, ranker in rankers.items():
        t1 = time.perf_counter()
        order = ranker(lm, x_p, y_p, xq, yq)
        row: dict[str, Any] = {"attributor": name, "rank_s": time.perf_counter() - t1,
                               **{f"recall@{f:g}": recall_at(order, poisoned, f) for f in removal}}
        if name in names:
            k = int(math.ceil(float(retrain_at) * len(y_p)))
            keep = torch.ones(len(y_p), dtype=torch.bool)
            keep[order[:k]] = False
            row.update({f"after_{m}": v for m, v in measure(train(x_p[keep], y_p[keep])).items()})
        log(f"{name}: {row}")
        out["rows"].append(row)
    return out
