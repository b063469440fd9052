"""An additive black box with known per-patch weights: fex's attribution must rank patches like the truth."""
import torch

from fex.blackbox import BlackBox
from fex.maskers.image import grid_feature_mask
from fex.objective import FexObjective
from helpers import fit, small_explainer, synthetic_images

WEIGHTS = torch.linspace(-0.4, 0.5, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(3))]


class AdditivePatches(torch.nn.Module):
    """p(class 1) = 0.5 + sum_f w_f * mean(patch f) / 16 on a 4x4 grid of 16x16 images (exactly additive)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("fmask", grid_feature_mask(16, 16, (4, 4)).flatten())
        self.register_buffer("w", WEIGHTS.clone())

    def patch_means(self, x):
        onehot = torch.nn.functional.one_hot(self.fmask, 16).to(x.dtype)
        return x.flatten(1) @ onehot / onehot.sum(0)

    def forward(self, x):
        p = (0.5 + self.patch_means(x) @ self.w / 16 * 4).clamp(0, 1)
        return torch.stack([1 - p, p], 1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ra, rb = a.argsort(1).argsort(1).float(), b.argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def test_additive_black_box_spearman():
    model = AdditivePatches()
    bb = BlackBox(model, output="probs", num_classes=2, name="tests.AdditivePatches")
    objective = FexObjective(estimator="regression", sampler="antithetic", num_samples=16, temperature=0.05,
                             reward="prob", attribution="logit", kl_weight=0.0, entropy_weight=0.0)
    module = small_explainer(blackbox=bb, objective=objective, lr=3e-3)
    fit(module, synthetic_images(2048, seed=0), steps=300)
    x = synthetic_images(200, seed=1)
    out = module.explain(x, target=1)
    truth = model.patch_means(x) * model.w * 4 / 16  # the exact per-patch contribution to p(class 1)
    rho = spearman(out["scores"], truth)
    assert rho.mean() >= 0.9, f"mean Spearman {rho.mean():.3f}"
    # read-out in reward units: the attribution matches the true contribution, not just its rank
    assert (out["scores"] - truth).abs().mean() < 0.01
