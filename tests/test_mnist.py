"""On the real MNIST CNN: the trained explainer beats a random attribution on deletion AUC."""
import pytest
import torch

from conftest import compose
from fex.metrics import deletion_auc, insertion_auc


@pytest.mark.slow
def test_deletion_curve_below_random(tmp_path, mnist_target):
    from fex.tasks.train import train

    cfg = compose(overrides=["trainer.max_epochs=2", "logger=none", "trainer.enable_progress_bar=false",
                             "gallery_size=4", "val_auc_examples=16"], output_dir=tmp_path)
    metrics, objects = train(cfg)
    assert metrics["target/test_accuracy"] >= 0.95  # the acceptance bar for the default target
    explainer, bb = objects["explainer"], objects["blackbox"]
    test = objects["datamodule"].dataset("test")
    x = test.x[:200]
    out = explainer.explain(x)
    g = torch.Generator().manual_seed(0)
    random_scores = torch.rand(out["scores"].shape, generator=g)
    d_fex = deletion_auc(bb, explainer.masker, x, out["scores"], out["target"]).mean().item()
    d_rand = deletion_auc(bb, explainer.masker, x, random_scores, out["target"]).mean().item()
    i_fex = insertion_auc(bb, explainer.masker, x, out["scores"], out["target"]).mean().item()
    i_rand = insertion_auc(bb, explainer.masker, x, random_scores, out["target"]).mean().item()
    assert d_fex < d_rand - 0.05, (d_fex, d_rand)
    assert i_fex > i_rand, (i_fex, i_rand)


def test_the_same_seed_trains_the_same_target(tmp_path):
    """The target's weights come from its seed, not from whatever ran before in the process (CI once got
    a different default target on each clean clone, because the weights were drawn before seeding)."""
    from fex.targets.mnist_cnn import pretrained_mnist_cnn

    states = []
    for before, cache in ((123, "a"), (456, "b")):
        torch.manual_seed(before)  # some earlier, unrelated use of the global RNG
        states.append(pretrained_mnist_cnn(cache_dir=str(tmp_path / cache), seed=0, epochs=1).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = pretrained_mnist_cnn(cache_dir=str(tmp_path / "c"), seed=1, epochs=1).state_dict()
    assert not torch.equal(states[0]["net.0.weight"], other["net.0.weight"])
