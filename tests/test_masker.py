"""PatchMasker: masks map exactly onto feature_mask regions; baselines; pooling; errors."""
import pytest
import torch

from fex.errors import InputError
from fex.maskers.image import PatchMasker, gaussian_blur, grid_feature_mask


def test_grid_feature_mask_7x7_on_28x28_is_4x4_blocks():
    fm = grid_feature_mask(28, 28, (7, 7))
    assert fm.shape == (28, 28) and fm.min() == 0 and fm.max() == 48
    for f in range(49):
        r, c = divmod(f, 7)
        block = torch.zeros(28, 28, dtype=torch.bool)
        block[4 * r:4 * r + 4, 4 * c:4 * c + 4] = True
        assert torch.equal(fm == f, block)


def test_uneven_grid_covers_every_pixel_once():
    fm = grid_feature_mask(10, 7, (3, 2))
    counts = torch.bincount(fm.flatten())
    assert counts.numel() == 6 and counts.sum() == 70 and counts.min() >= 9


@pytest.mark.parametrize("baseline", ["zeros", "mean", "blur"])
def test_all_ones_is_input_all_zeros_is_baseline(baseline):
    torch.manual_seed(0)
    m = PatchMasker((7, 7), (3, 28, 28), baseline=baseline, fill=[0.1, 0.2, 0.3])
    x = torch.rand(2, 3, 28, 28)
    out = m.apply(x, torch.ones(2, 3, 49)).view(2, 3, 3, 28, 28)
    assert torch.allclose(out, x.unsqueeze(1).expand_as(out))
    out0 = m.apply(x, torch.zeros(2, 1, 49)).view(2, 3, 28, 28)
    expected = {"zeros": torch.zeros_like(x), "mean": torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand_as(x),
                "blur": gaussian_blur(x, 2.0)}[baseline]
    assert torch.allclose(out0, expected)


def test_single_feature_mask_changes_exactly_its_region():
    m = PatchMasker((7, 7), (1, 28, 28))
    x = torch.ones(1, 1, 28, 28)
    for f in [0, 3, 24, 48]:
        masks = torch.ones(1, 1, 49)
        masks[0, 0, f] = 0
        out = m.apply(x, masks)[0, 0]
        r, c = divmod(f, 7)
        expected = torch.ones(28, 28)
        expected[4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0
        assert torch.equal(out, expected)


def test_blur_of_constant_image_is_constant():
    x = torch.full((1, 2, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(x, 1.5), x, atol=1e-6)


def test_pool_averages_each_patch_and_expand_inverts_it():
    m = PatchMasker((2, 2), (1, 4, 4))
    feats = torch.arange(16.0).view(1, 1, 4, 4)  # D = 1
    pooled = m.pool(feats, feats)[0, :, 0]
    assert torch.allclose(pooled, torch.tensor([2.5, 4.5, 10.5, 12.5]))
    x = torch.zeros(1, 3, 4, 4)
    attr = m.expand(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), x)
    assert attr.shape == x.shape
    assert torch.equal(attr[0, 2], torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]))


def test_feature_mask_is_captum_broadcastable():
    m = PatchMasker((7, 7), (1, 28, 28))
    x = torch.rand(5, 1, 28, 28)
    fm = m.feature_mask(x)
    assert fm.shape == (1, 1, 28, 28) and fm.dtype == torch.long
    assert torch.broadcast_shapes(fm.shape, x.shape) == x.shape


@pytest.mark.parametrize("x, message", [
    (torch.rand(2, 3, 28, 28), "expected 1 channel"),
    (torch.rand(2, 1, 32, 32), "expected images of 28x28"),
    (torch.rand(1, 28, 28), r"expects \[B, C, H, W\]"),
    (torch.full((1, 1, 28, 28), float("nan")), "NaN or Inf"),
    (torch.zeros(1, 1, 28, 28, dtype=torch.long), "floating-point"),
])
def test_validate_rejects_bad_inputs(x, message):
    with pytest.raises(InputError, match=message):
        PatchMasker((7, 7), (1, 28, 28)).validate(x)


def test_bad_configs_are_refused():
    with pytest.raises(InputError, match="baseline must be one of"):
        PatchMasker((7, 7), baseline="noise")
    with pytest.raises(InputError, match="does not fit"):
        PatchMasker((30, 30), (1, 28, 28))
    with pytest.raises(InputError, match="needs the dataset mean"):
        PatchMasker((7, 7), baseline="mean").apply(torch.rand(1, 1, 28, 28), torch.zeros(1, 1, 49))
