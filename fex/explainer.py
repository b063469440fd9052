"""A job's explainer: built from a job config, opened from a checkpoint, saved as one.

``build_explainer`` assembles an :class:`~fex.module.ExplainerModule` from a job config (train,
tests); ``open_checkpoint`` is how every job that starts from a checkpoint (evaluate, explain, the
benchmarks, serve) gets its config, black box and explainer; ``save_explainer`` writes the final
explainer, once; ``merge_explainers`` makes one multi-head explainer of several trained ones. What a
checkpoint holds and how it is read: :mod:`fex.checkpoint`; how it becomes a module again:
:func:`fex.module.load_explainer`.
"""
from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fex.blackbox import BlackBox
from fex.checkpoint import (CKPT_KEY, CKPT_VERSION, OBJECTIVE_TARGET, assemble, build_component,  # noqa: F401
                            checkpoint_meta, effective_config, portable, read_checkpoint, stored, upgrade)
from fex.config import build, build_blackbox, to_dict, with_checkpoint_defaults
from fex.errors import CheckpointError, ConfigError
from fex.io import save_torch
from fex.module import ExplainerModule, load_explainer
from fex.policy.heads import merge_head_states
from fex.registry import lookup

__all__ = ["build_explainer", "open_checkpoint", "explainer_for", "save_explainer", "load_explainer",
           "merge_explainers", "read_checkpoint", "class_names"]


# --------------------------------------------------------------------------- building
def class_names(datamodule: Any, num_classes: int) -> list[str]:
    """The data's class names (``label_names`` / ``class_names``, read after ``setup``), else "0".."C-1"."""
    if datamodule is not None and hasattr(datamodule, "label_names") and datamodule.label_names is None:
        datamodule.setup()  # idempotent; text datamodules learn their label names here
    names = getattr(datamodule, "label_names", None) or getattr(datamodule, "class_names", None)
    names = [str(n) for n in names] if names else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def build_explainer(cfg: DictConfig | dict, datamodule: Any = None, blackbox: BlackBox | None = None):
    """Job config (``masker``, ``policy``, ``objective``, ``optimizer``, ``data``, ``target``,
    ``num_classes``) -> :class:`~fex.module.ExplainerModule` whose stored config makes its
    checkpoint self-describing. ``masker.baseline=mean`` takes its fill from ``datamodule``."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    masker_cfg = to_dict(cfg.masker)
    if masker_cfg.get("baseline") == "mean" and masker_cfg.get("fill") is None:
        if datamodule is None or not hasattr(datamodule, "channel_mean"):
            raise ConfigError("masker.baseline=mean needs masker.fill or a datamodule with channel_mean()")
        masker_cfg["fill"] = datamodule.channel_mean()  # resolved value is saved, so loading reproduces it
    objective_cfg = to_dict(cfg.get("objective")) or {}
    objective_cfg = {"_target_": OBJECTIVE_TARGET, **objective_cfg}
    num_classes = int(cfg.num_classes) if cfg.get("num_classes") is not None else int(cfg.policy.num_classes)
    config = {"masker": masker_cfg, "policy": to_dict(cfg.policy), "objective": objective_cfg,
              "data": portable(cfg.get("data")), "target": portable(cfg.get("target")), "num_classes": num_classes,
              "class_names": class_names(datamodule, num_classes)}
    masker, policy, objective = assemble(config)
    optimizer = build(cfg.optimizer) if cfg.get("optimizer") is not None else None
    scheduler = build(cfg.scheduler) if cfg.get("scheduler") else None
    return ExplainerModule(policy=policy, masker=masker, objective=objective, optimizer=optimizer,
                           blackbox=blackbox, config=config, val_auc_examples=cfg.get("val_auc_examples", 64),
                           scheduler=scheduler)


# --------------------------------------------------------------------------- opening a checkpoint
def explainer_for(cfg: DictConfig | dict, ckpt: dict) -> ExplainerModule:
    """The explainer of ``ckpt`` (:func:`~fex.checkpoint.read_checkpoint`) with the black box of the resolved
    job config attached: ``cfg.target`` built for ``cfg.num_classes`` and checked against the saved
    fingerprint unless ``cfg.allow_target_mismatch``."""
    if isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    blackbox = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    return load_explainer(ckpt, target=blackbox, allow_target_mismatch=bool(cfg.get("allow_target_mismatch", False)))


def open_checkpoint(cfg: DictConfig) -> tuple[DictConfig, ExplainerModule]:
    """The one way a job opens ``cfg.checkpoint``: read it once (failing fast, before any target is
    built), fill the job's ``data``/``target`` from the configs it stored
    (:func:`fex.config.with_checkpoint_defaults`), build the black box and load the explainer with it
    attached. Returns (the completed config, the explainer; its black box is ``explainer.blackbox``)."""
    ckpt = read_checkpoint(str(cfg.checkpoint))
    cfg = with_checkpoint_defaults(cfg, ckpt)
    return cfg, explainer_for(cfg, ckpt)


# --------------------------------------------------------------------------- saving
def save_explainer(module: Any, path: str | os.PathLike, train_queries: int | None = None) -> str:
    """Write ``module`` as a (weights-only) fex checkpoint, atomically: the final explainer, without
    Lightning's training state or the reward bank. ``train_queries`` overrides the recorded training
    cost (default: the module's count so far)."""
    meta = checkpoint_meta(module)
    if train_queries is not None:
        meta["train_queries"] = int(train_queries)
    save_torch(path, {"state_dict": module.state_dict(), CKPT_KEY: meta})  # one atomic write
    return os.fspath(path)


# --------------------------------------------------------------------------- merging
#: what may differ between merged explainers: training-only settings, and the head counts being merged
MERGE_FREE = {"objective": {"bank_from", "query_budget", "num_samples", "ppo_epochs"}, "policy": {"heads"},
              "backbone": {"branches", "encoder_lr_scale"}}


def _mergeable(group: str, cfg: dict) -> dict:
    """The part of a stored config that merged explainers must share (defaults filled in)."""
    out = {k: v for k, v in effective_config(group, cfg).items() if k not in MERGE_FREE.get(group, ())}
    if isinstance(out.get("backbone"), dict):
        out["backbone"] = {k: v for k, v in out["backbone"].items() if k not in MERGE_FREE["backbone"]}
    return out


def merge_explainers(paths: list[str | os.PathLike], out: str | os.PathLike | None = None,
                     target: Any = None) -> ExplainerModule:
    """One explainer whose heads are those of the explainers at ``paths`` (e.g. training seeds): the shared
    backbone (a frozen encoder) runs once and each member's adapter and actor/critic run as one head, so
    its scores are the mean of the members' (their logits averaged) at about one member's cost. Members
    must be the same explainer but for their trained heads: same target, masker, objective and policy
    config (defaults filled in; the training-only keys of ``MERGE_FREE`` and ``heads`` aside; the merged
    checkpoint keeps the first member's data config), and a backbone with per-head parameters
    (``branch_params``, e.g. :class:`~fex.policy.text.TextEncoderBackbone`) whose other weights are equal.
    Written to ``out`` (:func:`save_explainer`) when given; ``target`` is attached as in
    :func:`load_explainer`."""
    if len(paths) < 2:
        raise ConfigError(f"merge_explainers needs at least 2 checkpoints, got {len(paths)}")
    ckpts = [read_checkpoint(p) for p in paths]
    metas = [c[CKPT_KEY] for c in ckpts]
    first, where = metas[0], ckpts[0]["_path"]
    for c, meta in zip(ckpts[1:], metas[1:]):
        for key in ("target", "num_classes", "num_features"):
            if meta.get(key) != first.get(key):
                raise CheckpointError(f"cannot merge {c['_path']} with {where}: their {key} differ")
        for key in ("masker", "objective", "policy"):
            mine, theirs = (_mergeable(key, m["config"].get(key) or {"_target_": OBJECTIVE_TARGET})
                            for m in (meta, first))
            if mine != theirs:
                diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise CheckpointError(f"cannot merge {c['_path']} with {where}: their {key} configs differ "
                                      f"({', '.join(diff)})")
    heads = []
    for c, meta in zip(ckpts, metas):
        pcfg = meta["config"]["policy"]
        h, b = int(pcfg.get("heads", 1)), int((pcfg.get("backbone") or {}).get("branches", 1))
        if b != h:
            raise CheckpointError(f"cannot merge {c['_path']}: its {h} heads share one backbone branch")
        heads.append(h)
    prefixes = getattr(lookup("backbone", first["config"]["policy"]["backbone"].get("_target_")), "branch_params", None)
    if not prefixes:
        raise ConfigError(f"cannot merge: the backbone {first['config']['policy']['backbone'].get('_target_')} has "
                          "no per-head parameters (branch_params), so its members cannot share one pass")
    config = dict(first["config"])
    config["policy"] = {**config["policy"], "heads": sum(heads),
                        "backbone": {**config["policy"]["backbone"], "branches": sum(heads)}}
    states = [{k[len("policy."):]: v for k, v in c["state_dict"].items() if k.startswith("policy.")} for c in ckpts]
    state = merge_head_states(states, heads, tuple(prefixes))
    meta = {**first, "config": config, "train_queries": sum(int(m.get("train_queries") or 0) for m in metas)}
    module = load_explainer({"state_dict": {f"policy.{k}": v for k, v in state.items()}, CKPT_KEY: meta,
                             "_path": "merged explainer"}, target=target)
    if out is not None:
        save_explainer(module, out)
    return module
