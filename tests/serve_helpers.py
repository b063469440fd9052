"""Tiny explainer checkpoints and a server process for the serving tests (tests/test_serve*.py)."""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

IMAGE_TARGET = {"model": {"_target_": "tests.synth.LinearPatchTarget"}, "output": "logits", "max_batch_size": 1024}
IMAGE_DATA = {"_target_": "fex.data.mnist.MNISTDataModule", "batch_size": 64, "val_size": 500, "test_size": 1000,
              "seed": 0, "num_workers": 0, "limit": None, "num_classes": 2, "input_shape": [1, 28, 28]}
TEXT_TARGET = {"model": {"_target_": "fex.targets.text.callable_target", "path": "tests.text_helpers.planted_great"},
               "output": "probs", "max_batch_size": 256}


def target_args(target: dict) -> list[str]:
    """A target config as fex-serve command-line overrides: a checkpoint never names test code
    (fex.registry), so the tests' own targets are given on the command line, as a user's would be."""
    out = [f"+target.model.{k}={v}" for k, v in target["model"].items()]
    return out + [f"+target.{k}={v}" for k, v in target.items() if k != "model"]


def _save(path, config: dict, seed: int) -> str:
    from fex.explainer import build_explainer, save_explainer
    from fex.config import build_blackbox, build_data

    torch.manual_seed(seed)
    bb = build_blackbox(config["target"], num_classes=config["num_classes"])
    dm = build_data(config["data"]) if config.get("data") else None  # class names, as train stores them
    return save_explainer(build_explainer(config, datamodule=dm, blackbox=bb), path)


def image_checkpoint(path, seed: int = 0) -> str:
    """An untrained 7x7-patch explainer (the default conv policy's shape, smaller) of a linear 2-class
    target on MNIST-shaped images; its data is MNIST (the gallery's test split)."""
    return _save(path, {
        "masker": {"_target_": "fex.maskers.image.PatchMasker", "grid": [7, 7], "input_shape": [1, 28, 28]},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16,
                   "backbone": {"_target_": "fex.policy.ConvBackbone", "in_channels": 1, "width": 8, "depth": 2,
                                "out_dim": 16, "global_pool": 4}},  # like the default: 4x4 pooling of a 7x7 map
        "objective": {}, "target": IMAGE_TARGET, "data": IMAGE_DATA, "num_classes": 2}, seed)


def text_checkpoint(path, seed: int = 0, data_csv: str | None = None) -> str:
    """An untrained word explainer (tiny embedding policy) of a planted-word 2-class text target;
    with ``data_csv`` (text,label rows) its test split is that file's."""
    data = None
    if data_csv:
        data = {"_target_": "fex.data.text.TextDataModule", "source": str(data_csv), "max_length": 32,
                "val_size": 2, "test_size": 6, "seed": 0, "num_workers": 0, "label_names": ["negative", "positive"],
                "num_classes": 2}
    return _save(path, {
        "masker": {"_target_": "fex.maskers.text.WordMasker", "tokenizer": None, "mode": "mask_token",
                   "max_length": 32, "too_long": "truncate"},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16,
                   "backbone": {"_target_": "fex.policy.text.WordEmbeddingBackbone", "dim": 16}},
        "objective": {}, "target": TEXT_TARGET, "data": data, "num_classes": 2}, seed)


def Server(checkpoint: str, *overrides: str, log: Path | None = None, ready_s: float = 900):
    """The server on 127.0.0.1 at a free port (one torch thread per worker)."""
    from fex.serve.process import ServerProcess

    return ServerProcess(checkpoint, "threads=1", *overrides, log=log, ready_s=ready_s,
                         env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
