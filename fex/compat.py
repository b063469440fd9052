"""Make a CUDA-only torchvision wheel importable on a CPU-only torch.

torchvision's Python package registers fake (meta) kernels for its C++ ops at import;
when its compiled library cannot load (CPU torch + CUDA wheel), ``import torchvision``
fails with "operator torchvision::nms does not exist" -- and since torchmetrics imports
torchvision when installed, so does ``import pytorch_lightning``. Defining the two op
schemas first lets the pure-Python parts (models, transforms) import. NMS itself is
then unavailable, which fex never uses.
"""
from __future__ import annotations

import importlib.util

import torch

from fex.errors import FexError

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIB = None


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def patch_torchvision_ops() -> bool:
    """Define missing torchvision op schemas (no-op if torchvision is absent or its ops load).

    Returns True if schemas were defined. Must run before anything imports torchvision.
    """
    global _LIB
    if _LIB is not None or importlib.util.find_spec("torchvision") is None:
        return False
    missing = [n for n in _SCHEMAS if not _has_op(n)]
    if not missing:
        return False
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIB.define(_SCHEMAS[name])
    return True


def import_torchvision():
    """Import torchvision lazily, with a clear error when the `vision` extra is missing."""
    if importlib.util.find_spec("torchvision") is None:
        raise FexError("this needs torchvision: pip install 'fex[vision]' (with your torch)")
    patch_torchvision_ops()
    import torchvision

    return torchvision
