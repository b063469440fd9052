"""Checkpoint -> explainer with its black box attached, for serving.

:func:`load_served_explainer` is the one place that turns a checkpoint into ready objects; it builds
the black box from the target config stored in the checkpoint (``config["target"]``, written by
``train.py``) or from an explicit override. When a single loader for explainers lands
(``fex.explainer.load_explainer``), it replaces the body of this function and nothing else.
"""
from __future__ import annotations

import os
from typing import Any

import logging

from fex.errors import CheckpointError, ConfigError, FexError
from fex.module import CKPT_KEY, ExplainerModule, load_checkpoint_dict


log = logging.getLogger("fex.serve")
GATE_MODES = ("auto", "on", "off")


def checkpoint_config(path: str | os.PathLike) -> dict:
    """The configs stored in an fex checkpoint (``masker``, ``policy``, ``objective``; ``target``,
    ``data``, ``num_classes`` when written by train). Cheap: no model is built."""
    return dict(load_checkpoint_dict(os.path.expanduser(str(path)))[CKPT_KEY].get("config") or {})


def load_served_explainer(path: str | os.PathLike, target: Any = None, num_classes: int | None = None,
                          allow_target_mismatch: bool = False) -> ExplainerModule:
    """Explainer with its black box attached (checked against the saved fingerprint).

    ``target``: a target config (``model``/``output``/...; as ``conf/target/*.yaml``) overriding the
    checkpoint's own; ``None`` uses the checkpoint's ``config["target"]``.
    """
    from fex.tasks.common import build_blackbox, to_dict

    path = os.path.expanduser(str(path))
    cfg = checkpoint_config(path)
    tcfg = to_dict(target) if target is not None else cfg.get("target")
    if not tcfg:
        raise CheckpointError(f"checkpoint {path} stores no target config (older checkpoint): "
                              "pass one, e.g. fex-serve checkpoint=... +data=mnist +target=mnist_cnn")
    n = num_classes if num_classes is not None else cfg.get("num_classes") or cfg.get("policy", {}).get("num_classes")
    blackbox = build_blackbox(tcfg, num_classes=int(n) if n is not None else None)
    return ExplainerModule.from_checkpoint(path, target=blackbox, allow_target_mismatch=allow_target_mismatch)


def load_gate(path: str | os.PathLike, explainer: ExplainerModule, mode: Any = "auto") -> Any:
    """The trust gate calibrated for this checkpoint (``fex.gate.Gate.load``: ``<checkpoint>.gate.json``).

    ``auto``: the gate when fex has one and a calibration exists, else None; ``on``: required;
    ``off``: None."""
    mode = {False: "off", True: "on", None: "off"}.get(mode, mode) if isinstance(mode, (bool, type(None))) else str(mode)
    if mode not in GATE_MODES:
        raise ConfigError(f"gate must be one of {GATE_MODES}, got {mode!r}")
    if mode == "off":
        return None
    try:
        from fex.gate import Gate
    except ImportError as exc:
        if mode == "on":
            raise ConfigError("gate=on but this fex has no trust gate (fex.gate)") from exc
        return None
    try:
        return Gate.load(os.path.expanduser(str(path)), blackbox=explainer.blackbox, masker=explainer.masker)
    except FexError as exc:
        if mode == "on":
            raise
        log.info("no trust gate: %s", exc)
        return None
