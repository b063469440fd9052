"""A checkpoint is data: the classes it may name, and the only way fex builds them.

An explainer checkpoint stores the configs that rebuild its masker, policy (and backbone) and
objective. Those configs come from a file someone handed you, so they are never passed to
``hydra.utils.instantiate`` (which imports and calls whatever ``_target_`` says: a crafted
checkpoint could name ``pathlib.Path.write_text``). :func:`safe_build` instead looks the
``_target_`` up in an allowlist of fex's own classes, refuses anything else with a one-line
:class:`~fex.errors.CheckpointError`, and checks that every argument is plain JSON-like data
(no nested ``_target_``/``_partial_``/``_args_``: nothing inside an argument is built).

Your own masker/backbone/policy/objective class becomes loadable once you say so::

    import fex.registry
    fex.registry.register(MyMasker)            # group inferred: masker/policy/objective/backbone
    fex.registry.register(make_net, group="target")

Only classes are looked up, by the exact ``_target_`` string fex writes (its import path);
registering imports nothing, and a built-in is imported only when a checkpoint names it.

Groups: ``masker``, ``policy``, ``backbone``, ``objective`` (what a checkpoint rebuilds), and
``data``, ``target`` (fex's own data modules and target factories, for jobs that rebuild them
from a stored config; a user's model is named on the command line, never taken from a file).
"""
from __future__ import annotations

import importlib
import math
import re
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from torch import nn

from fex.errors import CheckpointError

GROUPS = ("masker", "policy", "backbone", "objective", "data", "target")

# _target_ string -> "module:attribute" of fex's own classes, per group. Both the short path fex
# writes in its configs (fex.policy.Policy) and the defining module's path are accepted.
_BUILTIN: dict[str, dict[str, str]] = {
    "masker": {
        "fex.maskers.image.PatchMasker": "fex.maskers.image:PatchMasker",
        "fex.maskers.text.WordMasker": "fex.maskers.text:WordMasker",
    },
    "policy": {
        "fex.policy.Policy": "fex.policy.heads:Policy",
        "fex.policy.heads.Policy": "fex.policy.heads:Policy",
    },
    "backbone": {
        "fex.policy.ConvBackbone": "fex.policy.image:ConvBackbone",
        "fex.policy.image.ConvBackbone": "fex.policy.image:ConvBackbone",
        "fex.policy.text.TextEncoderBackbone": "fex.policy.text:TextEncoderBackbone",
        "fex.policy.text.WordEmbeddingBackbone": "fex.policy.text:WordEmbeddingBackbone",
    },
    "objective": {
        "fex.objective.FexObjective": "fex.objective:FexObjective",
    },
    "data": {
        "fex.data.mnist.MNISTDataModule": "fex.data.mnist:MNISTDataModule",
        "fex.data.text.TextDataModule": "fex.data.text:TextDataModule",
    },
    "target": {
        "fex.targets.mnist_cnn.pretrained_mnist_cnn": "fex.targets.mnist_cnn:pretrained_mnist_cnn",
        "fex.targets.proxy.mnist_proxy": "fex.targets.proxy:mnist_proxy",
        "fex.targets.text.minilm_sentiment": "fex.targets.text:minilm_sentiment",
        "fex.targets.text.hf_classifier": "fex.targets.text:hf_classifier",
        "fex.targets.text_proxy.minilm_proxy": "fex.targets.text_proxy:minilm_proxy",
        "fex.targets.vision.torchvision_model": "fex.targets.vision:torchvision_model",
    },
}
# a stored config without `_target_` means the group's default class
DEFAULTS = {"objective": "fex.objective.FexObjective"}
# config keys that hold another component's config (built through the registry too)
NESTED = {"policy": {"backbone": "backbone"}}
# Hydra's special keys: never accepted in stored content (they would build or call things)
_HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")

# the one interpolation a stored config may hold: a machine path (``${paths.cache_dir}``), which
# fex.checkpoint.portable leaves unresolved so another machine fills in its own
_PATH_REF = re.compile(r"\$\{paths\.[A-Za-z_][A-Za-z0-9_]*\}")

_USER: dict[str, dict[str, Callable]] = {g: {} for g in GROUPS}


def _name(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _infer_group(obj: Any) -> str:
    """A class's group: its ``registry_group`` (set by fex's base classes :class:`~fex.maskers.base.Masker`,
    :class:`~fex.policy.heads.Policy`, :class:`~fex.objective.FexObjective` and inherited by yours), else
    ``backbone`` for any other ``nn.Module``."""
    if isinstance(obj, type):
        group = getattr(obj, "registry_group", None)
        if group in GROUPS:
            return group
        if issubclass(obj, nn.Module):
            return "backbone"
    raise CheckpointError(f"cannot tell which group {_name(obj)} belongs to; pass group= one of {GROUPS}")


def register(obj: Callable | None = None, *, group: str | None = None, name: str | None = None):
    """Allow checkpoints (and stored configs) to build ``obj`` by its ``_target_`` (default: its import
    path ``module.QualName``; give ``name`` for another spelling). Usable as a decorator."""
    def _register(o: Callable) -> Callable:
        g = group or _infer_group(o)
        if g not in GROUPS:
            raise CheckpointError(f"unknown registry group {g!r}; one of {GROUPS}")
        _USER[g][name or _name(o)] = o
        return o

    return _register if obj is None else _register(obj)


def unregister(name_or_obj: Any, group: str | None = None) -> None:
    """Remove a user registration (by ``_target_`` string or the object itself)."""
    key = name_or_obj if isinstance(name_or_obj, str) else _name(name_or_obj)
    for g in ([group] if group else GROUPS):
        _USER[g].pop(key, None)


def registered(group: str) -> list[str]:
    """The ``_target_`` strings a stored config may use in ``group``."""
    return sorted({*_BUILTIN.get(group, {}), *_USER[group]})


def lookup(group: str, target: Any) -> Callable:
    """The allowlisted class/factory for ``target`` in ``group``, or a one-line CheckpointError."""
    if group not in GROUPS:
        raise CheckpointError(f"unknown registry group {group!r}; one of {GROUPS}")
    if not isinstance(target, str):
        raise CheckpointError(f"{group} config: _target_ must be a string, got {type(target).__name__}")
    if target in _USER[group]:
        return _USER[group][target]
    spec = _BUILTIN.get(group, {}).get(target)
    if spec is None:
        hint = "" if group in ("data", "target") else f"; call fex.registry.register({target.rsplit('.', 1)[-1]}) to allow your own class"
        raise CheckpointError(f"{group} _target_ {target!r} is not a registered fex {group} class "
                              f"(refusing to import or call it){hint}")
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def check_string(value: str, where: str) -> None:
    """A stored string is data: no OmegaConf interpolation or resolver (``${oc.decode:...}``,
    ``${oc.create:...}``, ``${oc.env:...}``, ``${other.key}``) except a whole ``${paths.NAME}``.
    Resolving one would build or read whatever the file's author wrote."""
    if "${" in _PATH_REF.sub("", value):
        raise CheckpointError(f"{where}: stored configs may not hold interpolations ({value[:60]!r}); "
                              "a checkpoint is data, nothing in it is resolved")


def check_strings(value: Any, where: str) -> None:
    """Every string and key at any depth of ``value`` passes :func:`check_string` (types are checked
    where each part is used)."""
    if isinstance(value, str):
        check_string(value, where)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                check_string(k, f"{where} key")
            check_strings(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_strings(v, f"{where}[{i}]")


def check_plain(value: Any, where: str) -> None:
    """Refuse anything but JSON-like data (None, bool, int, float, str, lists and str-keyed dicts of them),
    any Hydra special key at any depth, and any interpolation but a whole ``${paths.NAME}``."""
    if isinstance(value, str):
        check_string(value, where)
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise CheckpointError(f"{where}: non-finite number {value}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: non-string key {k!r}")
            check_string(k, f"{where} key")
            if k in _HYDRA_KEYS:
                raise CheckpointError(f"{where}.{k}: stored configs may not nest {k} (nothing inside an argument is built)")
            check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data (only numbers, strings, lists, dicts)")


def safe_build(group: str, cfg: Any, **kwargs: Any) -> Any:
    """Build one component of ``group`` from a stored config, without Hydra and without importing
    anything outside the allowlist. ``kwargs`` are runtime objects supplied by fex (trusted) and
    override config keys. Errors are one-line :class:`CheckpointError` s."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{group} config must be a mapping, got {type(cfg).__name__}")
    target = cfg.get("_target_", DEFAULTS.get(group))
    if target is None:
        raise CheckpointError(f"{group} config has no _target_")
    factory = lookup(group, target)
    args: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "_target_" or key in kwargs:
            continue
        if key in _HYDRA_KEYS:
            raise CheckpointError(f"{group} config: {key} is not allowed in a stored config")
        sub = NESTED.get(group, {}).get(key)
        if sub is not None and isinstance(value, dict):
            args[key] = safe_build(sub, value)
            continue
        check_plain(value, f"{group}.{key}")
        args[key] = value
    args.update(kwargs)
    try:
        return factory(**args)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad argument: one line naming the class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot build {group} {target}: {first}") from exc


def check_metadata(ckpt: dict, path: Any, max_version: int) -> dict:
    """``ckpt["fex"]`` (version, configs, fingerprint) checked for shape and version; returns it.
    Every problem is a one-line CheckpointError, never a KeyError/TypeError."""
    meta = ckpt.get("fex")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its 'fex' entry is {type(meta).__name__}, not the explainer's "
                              "metadata (not an fex checkpoint, or a damaged one)")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path}: missing or malformed format version ({version!r})")
    if version > max_version:
        raise CheckpointError(f"checkpoint {path} has format {version}; this fex reads formats up to {max_version}: "
                              "upgrade fex or retrain the explainer")
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path}: its explainer config is missing or not a mapping")
    check_strings(cfg, f"checkpoint {path}: config")  # no stored interpolation ever reaches OmegaConf
    for key in ("masker", "policy"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"checkpoint {path}: its config has no {key} section")
    if cfg.get("objective") is not None and not isinstance(cfg["objective"], dict):
        raise CheckpointError(f"checkpoint {path}: its objective config is not a mapping")
    fp = meta.get("target")
    if fp is not None and not isinstance(fp, dict):
        raise CheckpointError(f"checkpoint {path}: its target fingerprint is malformed ({type(fp).__name__})")
    for key in ("num_features", "num_classes"):
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise CheckpointError(f"checkpoint {path}: malformed {key} ({v!r})")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path}: its state_dict is missing or malformed")
    return meta


def check_stored(group: str, cfg: Any, where: str) -> None:
    """A ``data`` or ``target`` config a checkpoint recorded may be used as a job's default only if it
    names a registered fex class/factory with plain arguments: a checkpoint never makes a job import
    your code. (Name your own target or data on the command line, where running it is your choice.)"""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{where}: its stored {group} config is not a mapping")
    node = cfg.get("model") if group == "target" else cfg
    if not isinstance(node, dict):
        raise CheckpointError(f"{where}: its stored {group} config has no model")
    name = node.get("_target_")
    try:
        lookup(group, name)
    except CheckpointError:
        raise CheckpointError(f"{where} was trained with {group} {name!r}, which is not one of fex's own; a checkpoint "
                              f"never runs code, so name it on the command line ({group}=...)") from None
    for key, value in cfg.items():
        if key == "model" and group == "target":
            for k, v in value.items():
                if k != "_target_":
                    check_key(k, f"{where}: {group}.model")
                    check_plain(v, f"{where}: {group}.model.{k}")
        elif key != "_target_":
            check_key(key, f"{where}: {group}")
            check_plain(value, f"{where}: {group}.{key}")


def check_key(key: Any, where: str) -> None:
    """A stored config's own key beside its ``_target_``: a string, not one of Hydra's special keys
    (``_args_``, ``_partial_``, ...: they would change what gets called)."""
    if not isinstance(key, str):
        raise CheckpointError(f"{where}: non-string key {key!r}")
    check_string(key, f"{where} key")
    if key in _HYDRA_KEYS:
        raise CheckpointError(f"{where}.{key}: Hydra's special keys are not allowed in a stored config")
