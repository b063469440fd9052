"""The explainer's one builder and one loader. The checkpoint *is* the explainer.

``build_component`` is the only place a stored config (masker, policy, backbone, objective)
becomes an object. ``build_explainer`` assembles an :class:`~fex.module.ExplainerModule`
from a job config (train, tests); ``load_explainer`` rebuilds it from a checkpoint alone.

Checkpoint format 2 (``ckpt["fex"]``), everything a job needs besides the target's weights::

    version      2
    fex_version  the fex that wrote it
    config       masker, policy (with backbone), objective (with _target_): rebuild the explainer
                 data, target: the configs it was trained with (jobs use them as defaults)
                 num_classes, class_names
    target       the target's fingerprint (name, config, sha256 of its weights)
    train_queries black-box queries spent in training so far (restored on resume)

Format 1 (fex 0.1: no objective ``_target_``, optional data/target) still loads; a job
that needs a data or target config it lacks fails with one line saying what to pass.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, ConfigError

CKPT_KEY = "fex"
CKPT_VERSION = 2
OBJECTIVE_TARGET = "fex.objective.FexObjective"


# --------------------------------------------------------------------------- building
def build_component(group: str, cfg: dict, **kwargs: Any) -> Any:
    """A stored config of ``group`` (masker | backbone | policy | objective) -> the object.

    Every explainer component is built here and nowhere else, through the allowlist of
    :mod:`fex.registry` (never ``hydra.utils.instantiate``): a checkpoint is data. Your own
    masker/backbone/policy class needs ``fex.registry.register(MyClass)`` first."""
    from fex.registry import safe_build

    return safe_build(group, cfg, **kwargs)


def assemble(config: dict) -> tuple[Any, Any, Any]:
    """(masker, policy, objective) from the stored ``config`` (plain dicts)."""
    masker = build_component("masker", config["masker"])
    pcfg = dict(config["policy"])
    backbone = build_component("backbone", pcfg.pop("backbone"))
    policy = build_component("policy", pcfg, backbone=backbone)
    objective = build_component("objective", config.get("objective") or {"_target_": OBJECTIVE_TARGET})
    return masker, policy, objective


def portable(node: Any) -> Any:
    """A config node as a plain container, resolved, except machine paths (``${paths.*}``),
    which stay interpolations so another machine fills in its own."""
    if not isinstance(node, DictConfig):
        return node
    raw = OmegaConf.to_container(node, resolve=False)
    res = OmegaConf.to_container(node, resolve=True)

    def walk(r: Any, v: Any) -> Any:
        if isinstance(r, dict):
            return {k: walk(r[k], v[k]) for k in r}
        if isinstance(r, list):
            return [walk(a, b) for a, b in zip(r, v)]
        return r if isinstance(r, str) and "${paths." in r else v

    return walk(raw, res)


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
    from fex.module import ExplainerModule
    from fex.tasks.common import build, to_dict

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


# --------------------------------------------------------------------------- checkpoints
def checkpoint_meta(module: Any) -> dict:
    """``ckpt["fex"]`` for ``module`` (see the module docstring)."""
    from fex import __version__

    bb = module.blackbox
    from fex.module import fixed_num_features

    return {"version": CKPT_VERSION, "fex_version": __version__, "config": module.config,
            "target": bb.fingerprint() if bb is not None else module._saved_fingerprint,
            "num_features": fixed_num_features(module.masker), "num_classes": int(module.policy.num_classes),
            "train_queries": int(module._train_queries)}


def save_explainer(module: Any, path: str | os.PathLike) -> str:
    """Write ``module`` as a (weights-only) fex checkpoint, atomically."""
    from fex.io import save_torch

    save_torch(path, {"state_dict": module.state_dict(), CKPT_KEY: checkpoint_meta(module)})
    return os.fspath(path)


def upgrade(meta: dict, path: str) -> dict:
    """A format-1 ``ckpt["fex"]`` in format-2 shape (missing fields stay missing)."""
    version = meta.get("version")
    if version == CKPT_VERSION:
        return meta
    if version != 1:
        raise CheckpointError(f"checkpoint {path} has format {version!r}; this fex ({CKPT_VERSION}) reads 1 and 2: "
                              "upgrade fex or retrain the explainer")
    config = dict(meta.get("config") or {})
    config["objective"] = {"_target_": OBJECTIVE_TARGET, **(config.get("objective") or {})}
    return {**meta, "version": CKPT_VERSION, "fex_version": None, "config": config, "upgraded_from": 1}


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """torch.load an fex checkpoint once, with one-line errors; ``ckpt["fex"]`` in format 2."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from exc
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an fex explainer checkpoint")
    from fex.registry import check_metadata

    check_metadata(ckpt, path, CKPT_VERSION)  # one-line errors for a malformed or newer "fex" entry
    ckpt[CKPT_KEY] = upgrade(ckpt[CKPT_KEY], path)
    ckpt["_path"] = path
    return ckpt


def stored(ckpt: dict, key: str) -> Any:
    """A config the checkpoint recorded (``data``, ``target``, ``num_classes``, ``class_names``) or a one-line error."""
    value = ckpt[CKPT_KEY]["config"].get(key)
    if value is None:
        raise CheckpointError(f"checkpoint {ckpt.get('_path', '')} (format 1) does not record its {key} config; "
                              f"pass {key}=... on the command line, or retrain it with this fex")
    return value


def load_explainer(source: str | os.PathLike | dict, target: Any = None, allow_target_mismatch: bool = False,
                   map_location: Any = "cpu"):
    """Rebuild an explainer from its checkpoint alone (a path, or the dict of :func:`read_checkpoint`)
    and attach ``target`` (nn.Module, callable or BlackBox), checked against the saved fingerprint:
    a mismatch raises :class:`~fex.errors.TargetMismatchError` unless ``allow_target_mismatch``."""
    from fex.module import ExplainerModule

    ckpt = source if isinstance(source, dict) else read_checkpoint(source, map_location)
    path, meta = ckpt.get("_path", "<checkpoint>"), ckpt[CKPT_KEY]
    cfg = meta["config"]
    try:
        masker, policy, objective = assemble(cfg)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path}: cannot rebuild the explainer from its config ({first})") from exc
    module = ExplainerModule(policy=policy, masker=masker, objective=objective, config=cfg)
    state = {k[len("policy."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: policy weights do not fit its config ({str(exc).splitlines()[0]})") from exc
    from fex.module import check_features

    check_features(meta, masker, path)  # a stored grid that disagrees with what the policy was trained on
    module._saved_fingerprint = meta.get("target")
    module._train_queries = int(meta.get("train_queries") or 0)
    module.eval()
    if target is not None:
        bb = target if isinstance(target, BlackBox) else BlackBox(target)
        module.check_target(bb, allow_target_mismatch)
        module.attach(bb)
    return module
