"""Every attribution method fex compares, on the same features, black box and metrics.

Each is a :class:`~fex.methods.baselines.Method` (``attribute(x, target) -> scores [B, F]``) and a
Hydra ``method=`` option (``conf/method/<name>.yaml``); :data:`METHODS` is the one registry of them,
by option name, that evaluate, the benchmarks, the trust gate and screen, and serve share:

* :mod:`fex.methods.baselines` - per-instance methods (Captum's KernelShap, Lime, FeatureAblation,
  ShapleyValueSampling, Integrated Gradients; RISE, Banzhaf, random) and :class:`Fex`, the amortized
  explainer as a method.
* :mod:`fex.methods.text_ig` - Integrated Gradients on a text target's word embeddings.
* :mod:`fex.methods.spex` - SPEX / ProxySPEX interactions (via ``shapiq``, the optional
  ``interactions`` extra, imported when one runs) with Shapley values derived from the Möbius transform.
* :mod:`fex.methods.psig` - path-sampled integrated gradients (white box).
* :mod:`fex.methods.rloco` - regional leave-one-covariate-out explanations (R-LOCO).
* :mod:`fex.methods.kmeans_prototypes` - k-means self-explanation of a CNN target (KMEx): nearest-prototype
  classifier on its encoder output, prototypes and concept maps (white box, scikit-learn).
* :mod:`fex.methods.nullcheck` - a target that provably ignores chosen features (a test of methods).

Cost accounting (queries, forward/backward passes, memory) is :mod:`fex.cost`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from fex.config import build_data
from fex.errors import ConfigError, InputError
from fex.methods.baselines import (Banzhaf, FeatureAblation, Fex, IntegratedGradients, KernelShap, Lime, Method,
                                   RandomAttribution, Rise, ShapleyValueSampling)
from fex.methods.kmeans_prototypes import KMeansPrototypes
from fex.methods.psig import PathSampledIG
from fex.methods.rloco import RegionalLOCO
from fex.methods.spex import ProxySpexInteractions, SpexInteractions
from fex.methods.text_ig import WordIntegratedGradients

#: method option name (``conf/method/<name>.yaml``) -> its class
METHODS: dict[str, type[Method]] = {
    "fex": Fex,
    "kernel_shap": KernelShap,
    "lime": Lime,
    "feature_ablation": FeatureAblation,
    "shapley_sampling": ShapleyValueSampling,
    "integrated_gradients": IntegratedGradients,
    "integrated_gradients_words": WordIntegratedGradients,
    "rise": Rise,
    "banzhaf": Banzhaf,
    "random": RandomAttribution,
    "psig": PathSampledIG,
    "rloco": RegionalLOCO,
    "spex": SpexInteractions,
    "proxyspex": ProxySpexInteractions,
    "kmeans_prototypes": KMeansPrototypes,
}


def per_instance(name: str, what: str) -> type[Method]:
    """The class of a per-instance method (any of :data:`METHODS` but ``fex``), or a one-line error
    naming ``what`` needs it (a gate fallback, a screen reference, ...)."""
    if name not in METHODS or name == "fex":
        raise ConfigError(f"{what} must be a per-instance method in {sorted(set(METHODS) - {'fex'})}, got {name!r}")
    return METHODS[name]


def scores_of(explainer: Any, x: Any, target: torch.Tensor) -> torch.Tensor:
    """Feature scores [B, F] from an explainer (``.explain``), a :class:`Method` (``.attribute``) or the
    scores themselves."""
    if isinstance(explainer, torch.Tensor):
        return explainer
    if hasattr(explainer, "explain"):
        return explainer.explain(x, target)["scores"]
    if hasattr(explainer, "attribute"):  # a Method
        return explainer.attribute(x, target)
    raise InputError(f"cannot get feature scores from {type(explainer).__name__}: pass an explainer or scores [B, F]")


def build_methods(cfg: DictConfig, blackbox: Any, explainer: Any) -> dict[str, Callable[[], Method]]:
    """A job's ``method`` group -> name -> zero-argument factory, each bound to ``blackbox`` and the
    explainer's masker (``fex`` to the explainer itself; a method class with ``needs_data = True`` gets the
    job's data module as ``data``). Built lazily: one broken method is reported, not fatal."""
    out = {}
    for name, mcfg in (cfg.get("method") or {}).items():
        cls = get_class(mcfg._target_)
        extra = {"explainer": explainer} if issubclass(cls, Fex) else {}
        if getattr(cls, "needs_data", False):  # fitted on the job's data (e.g. kmeans_prototypes' training split)
            extra["data"] = build_data(cfg.data)
        out[name] = lambda mcfg=mcfg, extra=extra: instantiate(mcfg, blackbox=blackbox, masker=explainer.masker, **extra)
    return out
