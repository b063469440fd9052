"""Shared fixtures. Tests use real configs, shrunk; the MNIST target is trained once per cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import fex  # noqa: F401  (applies the torchvision compat shim before pytorch_lightning is imported)
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the same cache the app uses: targets and datasets are trained/fetched once per machine, not per clone
os.environ.setdefault("FEX_CACHE", os.path.expanduser(os.path.join("~", ".cache", "fex")))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def compose(config_name: str = "train", overrides: list[str] | None = None, output_dir: str | Path | None = None):
    """Compose a repo config as Hydra would (output_dir set explicitly: no Hydra runtime here)."""
    from hydra import compose as _compose, initialize_config_dir

    overrides = list(overrides or [])
    if output_dir is not None:
        overrides.append(f"output_dir={output_dir}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return _compose(config_name=config_name, overrides=overrides)


FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
        "data.limit=128", "logger=none", "trainer.enable_progress_bar=false", "gallery_size=4", "val_auc_examples=8"]


@pytest.fixture(scope="session")
def mnist_target():
    """The cached MNIST CNN black box (trained on first use, ~1 min on 2 cores)."""
    from fex.blackbox import BlackBox
    from fex.targets.mnist_cnn import pretrained_mnist_cnn

    return BlackBox(pretrained_mnist_cnn(cache_dir=os.environ["FEX_CACHE"]), output="logits", num_classes=10,
                    name="fex.targets.mnist_cnn.pretrained_mnist_cnn")


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster than two fighting over a busy CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
