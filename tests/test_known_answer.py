"""A black box that only looks at two known patches: the trained explainer must rank them on top."""
import torch

from fex.objective import FexObjective
from helpers import PLANTED, fit, planted_blackbox, small_explainer, synthetic_images


def test_explainer_ranks_planted_patches_on_top():
    bb = planted_blackbox()
    # leave-one-out baseline: converges in fewer steps than the critic on this bandit (both reach it)
    module = small_explainer(blackbox=bb, objective=FexObjective(baseline="loo"))
    fit(module, synthetic_images(2048, seed=0), steps=200)
    x_test = synthetic_images(400, seed=1)
    out = module.explain(x_test)
    assert (out["target"] == 1).float().mean() > 0.9  # the planted patches are bright enough: class 1
    top = out["scores"].topk(len(PLANTED), dim=1).indices.sort(1).values
    hit = (top == torch.tensor(PLANTED)).all(1).float().mean().item()
    assert hit >= 0.95, f"planted patches ranked on top for only {hit:.1%} of test inputs"
    # and they stand clearly apart: the mean score of planted patches beats every other patch's
    mean = out["scores"].mean(0)
    others = torch.ones(16, dtype=torch.bool)
    others[list(PLANTED)] = False
    assert mean[list(PLANTED)].min() > mean[others].max() + 0.3
    assert bb.queries > 0 and module._train_queries == 200 * 64 * (1 + 5)
