"""Job configs -> objects: fex's Hydra config tree, building with one-line errors, the black box and
the data of a job, and a checkpoint's stored configs as a job's defaults."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fex.blackbox import BlackBox
from fex.checkpoint import stored
from fex.errors import ConfigError, FexError, TargetError
from fex.registry import check_stored

log = logging.getLogger("fex")

def conf_dir() -> Path:
    """The Hydra config tree: ``conf/`` beside the package in a checkout, ``fex/conf`` when installed."""
    pkg = Path(__file__).resolve().parent
    for d in (pkg.parent / "conf", pkg / "conf"):
        if (d / "train.yaml").is_file():
            return d
    raise ConfigError(f"fex's config tree was not found next to {pkg} (reinstall fex)")


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """A packaged config composed as Hydra would (no Hydra run: set ``output_dir`` yourself)."""
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


# data-config keys that describe the data for other groups, not constructor arguments
DATA_META_KEYS = ("num_classes", "input_shape", "value_range")


def build(cfg: Any, what: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with one-line errors: an fex error inside is re-raised as is,
    anything else becomes ``ConfigError("cannot build <target>: <first line>")``."""
    try:
        return instantiate(cfg, **kwargs)
    except FexError:
        raise
    except Exception as exc:  # noqa: BLE001
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
            if isinstance(cause, FexError):
                raise cause from None
        name = what or (cfg.get("_target_") if hasattr(cfg, "get") else None) or "object"
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(f"cannot build {name}: {first}") from exc


def to_dict(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_data(data_cfg: DictConfig):
    return build({k: v for k, v in to_dict(data_cfg).items() if k not in DATA_META_KEYS})


def build_blackbox(target_cfg: DictConfig, num_classes: int | None = None) -> BlackBox:
    """cfg.target -> BlackBox. ``model`` is instantiated (nn.Module or callable); ``weights`` optional."""
    tcfg = to_dict(target_cfg)
    model = build(tcfg["model"], what=f"target {tcfg['model'].get('_target_')}")
    weights = tcfg.get("weights")
    if weights:
        if not isinstance(model, torch.nn.Module):
            raise TargetError("target.weights given but the target is not an nn.Module")
        path = os.path.expanduser(weights)
        if not os.path.isfile(path):
            raise TargetError(f"target weights not found: {path}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return BlackBox(model, output=tcfg.get("output", "logits"), max_batch_size=tcfg.get("max_batch_size", 512),
                    num_classes=num_classes, name=str(tcfg["model"].get("_target_")), config=tcfg)


def instantiate_list(cfg: Any) -> list:
    """A logger/callback group: a list or a name->config dict of `_target_` configs."""
    if cfg is None:
        return []
    items = cfg.values() if isinstance(cfg, (dict, DictConfig)) else cfg
    return [build(c) for c in items if c is not None and "_target_" in c]


def _whole_group(key: str, node: Any) -> bool:
    """A command-line group choice (``data=synth``) rather than a tweak (``+data.n=120``)."""
    if key == "target":
        return isinstance(node.get("model"), (dict, DictConfig)) and "_target_" in node.model
    return "_target_" in node


def with_checkpoint_defaults(cfg: DictConfig, ckpt: dict) -> DictConfig:
    """Fill a job config's ``data`` and ``target`` from the checkpoint (:func:`fex.checkpoint.read_checkpoint`).

    A group chosen on the command line (``data=...``, ``target=...``) replaces the stored config;
    keys given without choosing the group (``+target.max_batch_size=64``) are merged over it.
    ``num_classes`` follows the data config, else the checkpoint.
    """
    with open_dict(cfg):
        for key in ("data", "target"):
            given = cfg.get(key)
            if given is not None and _whole_group(key, given):
                continue
            stored_cfg = stored(ckpt, key)
            check_stored(key, stored_cfg, f"checkpoint {ckpt.get('_path', '')}")  # never code from a checkpoint
            base = OmegaConf.create(stored_cfg)
            cfg[key] = base if given is None else OmegaConf.merge(base, given)
        if cfg.data.get("num_classes") is None:
            cfg.data.num_classes = int(stored(ckpt, "num_classes"))
        cfg.num_classes = int(cfg.data.num_classes)
    return cfg
