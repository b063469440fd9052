"""Small synthetic worlds with known answers, shared by tests."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fex.blackbox import BlackBox
from fex.data.mnist import IndexedTensorDataset
from fex.explainer import build_explainer
from fex.module import ExplainerModule
from fex.objective import FexObjective

PLANTED = (5, 10)  # the only patches (of a 4x4 grid on 16x16 images) the black box looks at


class PlantedPatches(torch.nn.Module):
    """Two classes; p(class 1) = sigmoid(20 * (mean of planted patches - 0.35)). No weights."""

    def __init__(self, grid=(4, 4), size=16, planted=PLANTED):
        super().__init__()
        from fex.maskers.image import grid_feature_mask

        fm = grid_feature_mask(size, size, grid)
        self.register_buffer("region", torch.isin(fm, torch.tensor(planted)).float())

    def forward(self, x):
        s = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        logit = 20 * (s - 0.35)
        return torch.stack([-logit / 2, logit / 2], dim=1)


def synthetic_images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def small_explainer(num_classes: int = 2, grid=(4, 4), size: int = 16, objective: FexObjective | None = None,
                    blackbox=None, lr: float = 3e-3, seed: int | None = None, heads: int = 1) -> ExplainerModule:
    """A small conv explainer over a grid of patches, built the one way explainers are built.
    Its initial weights come from ``seed`` (None: the global RNG), not from whichever tests ran before."""
    if seed is not None:
        torch.manual_seed(seed)
    backbone = {"_target_": "fex.policy.ConvBackbone", "in_channels": 1, "width": 8, "depth": 1, "out_dim": 16,
                "coords": True}
    cfg = {"masker": {"_target_": "fex.maskers.image.PatchMasker", "grid": list(grid), "input_shape": [1, size, size],
                      "baseline": "zeros", "fill": None, "blur_sigma": 2.0},
           "policy": {"_target_": "fex.policy.Policy", "num_classes": num_classes, "hidden": 32, "init_bias": 0.0,
                      "backbone": backbone, **({"heads": heads} if heads != 1 else {})},
           "objective": (objective or FexObjective()).as_dict(),
           "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": lr},
           "num_classes": num_classes, "val_auc_examples": 0}
    return build_explainer(cfg, blackbox=blackbox)


def fit(module: ExplainerModule, x: torch.Tensor, steps: int, batch_size: int = 64, seed: int = 0,
        default_root_dir=None) -> pl.Trainer:
    pl.seed_everything(seed, workers=True)
    loader = DataLoader(IndexedTensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=batch_size,
                        shuffle=True)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=default_root_dir)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def planted_blackbox() -> BlackBox:
    return BlackBox(PlantedPatches(), output="logits", num_classes=2, name="tests.PlantedPatches")


def planted_callable(x: torch.Tensor) -> torch.Tensor:
    """The planted-patches black box as a plain function (for target=callable)."""
    return PlantedPatches()(x)


def wrong_shape_callable(x: torch.Tensor) -> torch.Tensor:
    """A broken target: one score per input instead of [N, C]."""
    return x.flatten(1).mean(1)
