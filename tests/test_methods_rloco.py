"""R-LOCO regions on a piecewise black box, and the null-feature metric for every method."""
import pytest
import torch

from fex import baselines as B
from fex import metrics as M
from fex.blackbox import BlackBox
from fex.maskers.image import PatchMasker
from fex.methods.nullcheck import IgnoreFeatures
from fex.methods.psig import PathSampledIG
from fex.methods.rloco import RegionalLOCO
from tests.synth import LinearPatchTarget


class Piecewise(torch.nn.Module):
    """Three tabular features (a 1x3 'image', one patch each): f = 3 x1 where x0 > 0, else -2 x2;
    logits [0, f], so p(class 1) = sigmoid(f). Removing a feature sets it to 0."""

    def forward(self, x):
        x = x.flatten(1)
        f = torch.where(x[:, 0] > 0, 3 * x[:, 1], -2 * x[:, 2])
        return torch.stack([torch.zeros_like(f), f], 1)


def tabular(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = 0.2 + 0.8 * torch.rand(n, 1, 1, 3, generator=g)  # x1, x2 in [0.2, 1]
    x[:, 0, 0, 0] = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0) * (0.2 + torch.rand(n, generator=g))
    return x


@pytest.mark.parametrize("assign", ["loco", "input"])
def test_in_the_region_x0_positive_x2_gets_zero(assign):
    bb = BlackBox(Piecewise(), output="logits")
    masker = PatchMasker(grid=(1, 3), input_shape=(1, 1, 3))
    ref, new = tabular(40, 0), tabular(20, 1)
    m = RegionalLOCO(bb, masker, n_regions=2, assign=assign, tree_depth=1).fit(ref, 1)
    assert m.fit_queries == 40 * 4  # n + 1 queries per reference input
    pos = ref[:, 0, 0, 0] > 0
    assert set(m.labels[pos].tolist()).isdisjoint(m.labels[~pos].tolist())  # the regions are x0 > 0 / x0 <= 0
    with bb.counting() as c:
        s = m.attribute(new, 1)
    assert c.n == (20 * 4 if assign == "loco" else 0)
    p = new[:, 0, 0, 0] > 0
    assert (s[p, 2] == 0).all() and (s[p, :2].abs() > 0.05).all()  # x2 is exactly 0 where x0 > 0
    assert (s[~p, :2] == 0).all() and (s[~p, 2].abs() > 0.05).all()  # x0 and x1 are exactly 0 elsewhere
    # an input's explanation is its region's: identical within a region
    assert torch.equal(s[p], s[p][:1].expand_as(s[p])) and torch.equal(s[~p], s[~p][:1].expand_as(s[~p]))


def test_unfitted_rloco_uses_the_first_batch_as_reference():
    bb = BlackBox(Piecewise(), output="logits")
    m = RegionalLOCO(bb, PatchMasker(grid=(1, 3), input_shape=(1, 1, 3)), n_regions=2)
    s = m.attribute(tabular(10, 2), 1)
    assert s.shape == (10, 3) and m.centroids.shape == (2, 3)


def test_null_feature_metric_known_values():
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    s = torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    null = torch.tensor([False, True, False, True])
    torch.testing.assert_close(M.null_feature(s, null, valid), torch.tensor([0.25, 0.0]))  # 1/4; all-zero -> 0
    torch.testing.assert_close(M.null_feature(s, null), torch.tensor([0.25, 1.0]))


NULL = [3, 10, 24, 30]


@pytest.fixture(scope="module")
def ignoring():
    """A linear patch target wrapped to ignore patches NULL (which it would otherwise weigh heavily)."""
    w = torch.linspace(0.5, 2, 49)
    masker = PatchMasker(grid=(7, 7), input_shape=(1, 28, 28))
    model = IgnoreFeatures(LinearPatchTarget(weights=w.tolist()), masker, NULL, 49)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    return BlackBox(model, output="logits"), masker, x, model.null_mask()


@pytest.mark.parametrize("name,kw,expect", [
    ("feature_ablation", {}, 0.0), ("shapley_sampling", {"n_samples": 1}, 0.0),
    ("integrated_gradients", {"n_steps": 8}, 0.0), ("psig", {"n_steps": 8}, 0.0), ("rloco", {"n_regions": 2}, 0.0),
    ("random", {}, None)])
def test_null_feature_share_per_method(ignoring, name, kw, expect):
    bb, masker, x, null = ignoring
    cls = {"psig": PathSampledIG, "rloco": RegionalLOCO}.get(name) or B.METHODS[name]
    s = cls(bb, masker, **kw).attribute(x, 1)
    share = M.null_feature(s, null, masker.valid(x))
    if expect is None:  # random scores put about 4/49 of their mass there
        assert 0.02 < float(share.mean()) < 0.2
    else:  # perturbation / gradient methods give ignored patches exactly nothing (float tolerance)
        assert float(share.max()) <= 1e-6, share
    with pytest.raises(Exception, match="constant baseline"):
        IgnoreFeatures(LinearPatchTarget(), PatchMasker(grid=(7, 7), baseline="blur"), NULL, 49)
