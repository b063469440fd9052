"""torchvision classification models as black boxes (needs the `vision` extra; imported lazily)."""
from __future__ import annotations

import os

import torch
from torch import nn

from fex.compat import import_torchvision
from fex.errors import TargetError


def torchvision_model(name: str = "resnet18", num_classes: int = 1000, weights_path: str | None = None,
                      **kwargs) -> nn.Module:
    """``torchvision.models.<name>(num_classes=...)`` with weights from a local state_dict file.

    Hub weights are never downloaded: save ``model.state_dict()`` where you trained it and
    point ``weights_path`` at the file.
    """
    tv = import_torchvision()
    try:
        builder = tv.models.get_model_builder(name)
    except ValueError as exc:
        raise TargetError(f"unknown torchvision model {name!r}") from exc
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    if weights_path:
        path = os.path.expanduser(weights_path)
        if not os.path.isfile(path):
            raise TargetError(f"torchvision weights not found: {path}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
