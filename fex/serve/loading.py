"""Checkpoint -> explainer with its black box attached, for serving.

:func:`load_served_explainer` is the one place that turns a checkpoint into ready objects; it builds
the black box from the target config stored in the checkpoint (``config["target"]``, written by
``train.py``) or from an explicit override. When a single loader for explainers lands
(``fex.explainer.load_explainer``), it replaces the body of this function and nothing else.
"""
from __future__ import annotations

import os
from typing import Any

from fex.errors import CheckpointError
from fex.module import CKPT_KEY, ExplainerModule, load_checkpoint_dict


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
