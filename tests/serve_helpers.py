"""Tiny explainer checkpoints and a server process for the serving tests (tests/test_serve*.py)."""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

IMAGE_TARGET = {"model": {"_target_": "tests.synth.LinearPatchTarget"}, "output": "logits", "max_batch_size": 1024}
IMAGE_DATA = {"_target_": "fex.data.mnist.MNISTDataModule", "batch_size": 64, "val_size": 500, "test_size": 1000,
              "seed": 0, "num_workers": 0, "limit": None, "num_classes": 2, "input_shape": [1, 28, 28]}
TEXT_TARGET = {"model": {"_target_": "fex.targets.text.TextCallable",
                         "fn": {"_target_": "hydra.utils.get_method", "path": "tests.text_helpers.planted_great"}},
               "output": "probs", "max_batch_size": 256}


def image_checkpoint(path, seed: int = 0) -> str:
    """An untrained 7x7-patch explainer of a linear 2-class target on MNIST-shaped images."""
    from hydra.utils import instantiate

    from fex.module import CKPT_KEY, CKPT_VERSION, ExplainerModule
    from fex.tasks.common import build_blackbox

    torch.manual_seed(seed)
    bb = build_blackbox(IMAGE_TARGET, num_classes=2)
    config = {
        "masker": {"_target_": "fex.maskers.image.PatchMasker", "grid": [7, 7], "input_shape": [1, 28, 28]},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16,
                   "backbone": {"_target_": "fex.policy.ConvBackbone", "in_channels": 1, "width": 8, "depth": 2,
                                "out_dim": 16, "global_pool": 4}},  # the default's shape: 4x4 pooling of a 7x7 map
        "objective": {}, "target": IMAGE_TARGET, "data": IMAGE_DATA, "num_classes": 2,
    }
    policy = instantiate({k: v for k, v in config["policy"].items() if k != "backbone"},
                         backbone=instantiate(config["policy"]["backbone"]))
    module = ExplainerModule(policy=policy, masker=instantiate(config["masker"]), blackbox=bb, config=config)
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 0,
                CKPT_KEY: {"version": CKPT_VERSION, "config": config, "target": bb.fingerprint()}}, path)
    return str(path)


def text_checkpoint(path, seed: int = 0) -> str:
    """An untrained word explainer (tiny embedding policy) of a planted-word 2-class text target."""
    from hydra.utils import instantiate

    from fex.module import CKPT_KEY, CKPT_VERSION, ExplainerModule
    from fex.tasks.common import build_blackbox

    torch.manual_seed(seed)
    bb = build_blackbox(TEXT_TARGET, num_classes=2)
    config = {
        "masker": {"_target_": "fex.maskers.text.WordMasker", "tokenizer": None, "mode": "mask_token",
                   "max_length": 32, "too_long": "truncate"},
        "policy": {"_target_": "fex.policy.Policy", "num_classes": 2, "hidden": 16,
                   "backbone": {"_target_": "fex.policy.text.WordEmbeddingBackbone", "dim": 16}},
        "objective": {}, "target": TEXT_TARGET, "num_classes": 2,
    }
    policy = instantiate({k: v for k, v in config["policy"].items() if k != "backbone"},
                         backbone=instantiate(config["policy"]["backbone"]))
    module = ExplainerModule(policy=policy, masker=instantiate(config["masker"]), blackbox=bb, config=config)
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 0,
                CKPT_KEY: {"version": CKPT_VERSION, "config": config, "target": bb.fingerprint()}}, path)
    return str(path)


def Server(checkpoint: str, *overrides: str, log: Path | None = None, ready_s: float = 300):
    """The server on 127.0.0.1 at a free port (one torch thread per worker)."""
    from fex.serve.process import ServerProcess

    return ServerProcess(checkpoint, "threads=1", *overrides, log=log, ready_s=ready_s,
                         env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
