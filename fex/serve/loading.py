"""Checkpoint -> explainer with its black box attached, for serving.

The checkpoint is the explainer (:mod:`fex.checkpoint`): it records its data and target configs.
:func:`serving_configs` fills the serve config's ``data``/``target`` from it in the HTTP process
(once, with ``conf/paths`` resolving machine paths), and :func:`load_served_explainer` builds the
black box from the resolved target config and loads the explainer in each model worker.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

from fex.checkpoint import CKPT_KEY, read_checkpoint, stored
from fex.config import to_dict, with_checkpoint_defaults
from fex.errors import ConfigError, FexError
from fex.explainer import explainer_for
from fex.gate import Gate

log = logging.getLogger("fex.serve")
GATE_MODES = ("auto", "on", "off")


def checkpoint_config(path: str | os.PathLike) -> dict:
    """The configs stored in an fex checkpoint (``masker``, ``policy``, ``objective``, ``data``, ``target``,
    ``num_classes``, ``class_names``). Cheap: no model is built."""
    return dict(read_checkpoint(path)[CKPT_KEY].get("config") or {})


def serving_configs(cfg: DictConfig, ckpt: dict) -> dict:
    """Resolved ``target``, ``data`` (None when neither the checkpoint nor the command line has one:
    then there is no gallery) and ``num_classes`` for the workers."""
    stored = ckpt[CKPT_KEY]["config"]
    n = stored.get("num_classes") or (stored.get("policy") or {}).get("num_classes")
    no_data = stored.get("data") is None and cfg.get("data") is None
    if no_data:  # serving needs no data; only the gallery does
        ckpt = {**ckpt, CKPT_KEY: {**ckpt[CKPT_KEY], "config": {**stored, "data": {"num_classes": n}}}}
    cfg = with_checkpoint_defaults(cfg, ckpt)
    return {"target": to_dict(cfg.target), "data": None if no_data else to_dict(cfg.data),
            "num_classes": int(cfg.num_classes)}


def load_served_explainer(path: str | os.PathLike | dict, target: dict, num_classes: int | None = None,
                          allow_target_mismatch: bool = False) -> Any:
    """The explainer of a checkpoint (a path, or the dict of :func:`~fex.checkpoint.read_checkpoint`) with the
    black box of the (resolved) ``target`` config attached and checked against the checkpoint's fingerprint
    (:func:`fex.explainer.explainer_for`, as every job opens one)."""
    ckpt = path if isinstance(path, dict) else read_checkpoint(os.path.expanduser(str(path)))
    n = num_classes if num_classes is not None else stored(ckpt, "num_classes")
    return explainer_for({"target": target, "num_classes": n, "allow_target_mismatch": allow_target_mismatch}, ckpt)


def load_gate(path: str | os.PathLike, explainer: Any, mode: Any = "auto") -> Any:
    """The trust gate calibrated for this checkpoint (``fex.gate.Gate.load``: ``<checkpoint>.gate.json``).

    ``auto``: the gate when fex has one and a calibration exists, else None; ``on``: required;
    ``off``: None."""
    if isinstance(mode, bool) or mode is None:
        mode = "on" if mode else "off"
    mode = str(mode)
    if mode not in GATE_MODES:
        raise ConfigError(f"gate must be one of {GATE_MODES}, got {mode!r}")
    if mode == "off":
        return None
    try:
        gate = Gate.load(os.path.expanduser(str(path)), blackbox=explainer.blackbox, masker=explainer.masker)
        if gate.stratified:  # its per-input thresholds need the abnormality score, which no sidecar holds
            raise ConfigError("the gate calibration of this checkpoint has abnormality strata (abnormal_alpha), "
                              "which need the calibrated abnormality score: the server cannot apply it; "
                              "calibrate a gate without abnormality= for serving")
        return gate
    except FexError as exc:
        if mode == "on":
            raise
        log.info("no trust gate: %s", exc)
        return None
