"""What an fex checkpoint is: its format, how it is read, and how its stored configs rebuild the parts.

The checkpoint *is* the explainer. Checkpoint format 2 (``ckpt["fex"]``), everything a job needs
besides the target's weights::

    version      2
    fex_version  the fex that wrote it
    config       masker, policy (with backbone), objective (with _target_): rebuild the explainer
                 data, target: the configs it was trained with (jobs use them as defaults)
                 num_classes, class_names
    target       the target's fingerprint (name, config, sha256 of its weights)
    num_features the masker's feature count for fixed grids (checked when loading)
    train_queries black-box queries spent in training so far (restored on resume)

Format 1 (fex 0.1: no objective ``_target_``, optional data/target) still loads; a job
that needs a data or target config it lacks fails with one line saying what to pass.
Training checkpoints (``last.ckpt``, resumable) also hold Lightning's state and, with a query
budget, the reward bank (``BANK_KEY``); the final explainer holds neither.

``build_component`` is the only place a stored config (masker, policy, backbone, objective)
becomes an object, through the allowlist of :mod:`fex.registry`.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fex.errors import CheckpointError
from fex.registry import check_metadata, lookup, safe_build
from fex.version import __version__

CKPT_KEY = "fex"
CKPT_VERSION = 2
OBJECTIVE_TARGET = "fex.objective.FexObjective"
BANK_KEY = "fex_reward_bank"  # training checkpoints only (resume); never in the final explainer


# --------------------------------------------------------------------------- stored configs -> parts
def build_component(group: str, cfg: dict, **kwargs: Any) -> Any:
    """A stored config of ``group`` (masker | backbone | policy | objective) -> the object.

    Every explainer component is built here and nowhere else, through the allowlist of
    :mod:`fex.registry` (never ``hydra.utils.instantiate``): a checkpoint is data. Your own
    masker/backbone/policy class needs ``fex.registry.register(MyClass)`` first."""
    return safe_build(group, cfg, **kwargs)


def effective_config(group: str, cfg: dict) -> dict:
    """A stored config of ``group`` with its class's defaults filled in (a checkpoint written by an older
    fex lacks the keys added since), nested ``backbone`` included: two configs that build the same
    object compare equal."""
    params = inspect.signature(lookup(group, cfg.get("_target_"))).parameters
    out = {k: q.default for k, q in params.items() if q.default is not inspect.Parameter.empty}
    out.update(cfg)
    if isinstance(out.get("backbone"), dict):
        out["backbone"] = effective_config("backbone", out["backbone"])
    return out


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


# --------------------------------------------------------------------------- reading and writing
def checkpoint_meta(module: Any) -> dict:
    """``ckpt["fex"]`` for ``module`` (see the module docstring)."""
    bb = module.blackbox
    return {"version": CKPT_VERSION, "fex_version": __version__, "config": module.config,
            "target": bb.fingerprint() if bb is not None else module._saved_fingerprint,
            "num_features": fixed_num_features(module.masker), "num_classes": int(module.policy.num_classes),
            "train_queries": int(module._train_queries)}


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


def fixed_num_features(masker: Any) -> int | None:
    """F for maskers whose feature count does not depend on the input (image grids), else None."""
    try:
        return int(masker.num_features(None))
    except Exception:  # noqa: BLE001 - variable-length maskers (text) need an input
        return None


def check_features(meta: dict, masker: Any, path: Any) -> None:
    """The stored feature count (written at save time) must match the rebuilt masker's."""
    want, have = meta.get("num_features"), fixed_num_features(masker)
    if want is not None and have is not None and int(want) != have:
        raise CheckpointError(f"checkpoint {path}: its masker config gives {have} features but the policy was "
                              f"trained on {want}; the stored config was altered")
