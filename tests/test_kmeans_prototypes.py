"""k-means self-explanation (fex.methods.kmeans_prototypes) on a planted CNN with known prototypes and maps.

The planted CNN averages each 4x4 quadrant of an 8x8 image (its spatial block, [B, 1, 2, 2]) and its
linear head reads the four quadrant means, so the embedding is the quadrant means. Class 0 lights the
top-left quadrant at 0.5 or 1.0, class 1 the bottom-right one at 0.5 or 1.0: two modes per class, so
k=2 recovers the modes exactly, k=1 their mean, and the concept maps are hand-computable.
"""
import pytest
import torch
from torch import nn

from fex.blackbox import BlackBox
from fex.errors import ConfigError, TargetError
from fex.maskers.image import PatchMasker
from fex.methods.kmeans_prototypes import KMeansPrototypes, class_distances, concept_margin, fit_prototypes
from tests.conftest import compose


class QuadrantCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.AvgPool2d(4)  # [B, 1, 8, 8] -> [B, 1, 2, 2]
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def planted(n_per_mode: int = 5):
    xs, ys = [], []
    for cls, (r, c) in enumerate([(0, 0), (4, 4)]):
        for v in (0.5, 1.0):
            x = torch.zeros(n_per_mode, 1, 8, 8)
            x[:, :, r:r + 4, c:c + 4] = v
            xs.append(x)
            ys += [cls] * n_per_mode
    return torch.cat(xs), torch.tensor(ys)


def method(k=2, **kw):
    bb = BlackBox(QuadrantCNN(), output="logits", num_classes=2)
    return KMeansPrototypes(bb, PatchMasker(grid=(2, 2), input_shape=(1, 8, 8)), k=k, n_init=2, **kw)


def test_fit_prototypes_known_centroids():
    z = torch.tensor([[0.0, 0], [0, 1], [10, 10], [10, 11], [5, 5]])
    y = torch.tensor([0, 0, 0, 0, 1])
    centers, labels, assign = fit_prototypes(z, y, k=2, num_classes=3)
    assert labels.tolist() == [0, 0, 1]  # class 2 has no inputs: no prototype; class 1 one input: one
    got = sorted(centers[:2].tolist())
    assert torch.allclose(torch.tensor(got), torch.tensor([[0.0, 0.5], [10.0, 10.5]]), atol=1e-6)
    assert centers[2].tolist() == pytest.approx([5.0, 5.0])
    assert assign[0] == assign[1] != assign[2] == assign[3] and assign[4] == 2
    dist, idx = class_distances(torch.tensor([[3.0, 1.0, 2.0]]), labels, 3)
    assert dist[0, :2].tolist() == [1.0, 2.0] and dist[0, 2] == float("inf")
    assert idx[0].tolist() == [1, 2, -1]


def test_concept_margin_sums_to_the_margin():
    g = torch.Generator().manual_seed(0)
    a, p, q = (torch.randn(3, 4, 2, 5, generator=g) for _ in range(3))
    m = concept_margin(a, p, q)
    assert m.shape == (3, 2, 5)
    want = ((a - q) ** 2).flatten(1).sum(1) - ((a - p) ** 2).flatten(1).sum(1)
    assert torch.allclose(m.flatten(1).sum(1), want, atol=1e-4)


def test_planted_prototypes_classification_and_concept_maps():
    x, y = planted()
    km = method(k=2).fit(x, y)
    assert km.fit_info["spatial_layer"] == "features" and km.fit_info["dim"] == 4
    assert km.proto_class.tolist() == [0, 0, 1, 1]
    want = {(0, 0.5): [0.5, 0, 0, 0], (0, 1.0): [1.0, 0, 0, 0], (1, 0.5): [0, 0, 0, 0.5], (1, 1.0): [0, 0, 0, 1.0]}
    got = sorted(km.centers.tolist())
    assert torch.allclose(torch.tensor(got), torch.tensor(sorted(want.values())), atol=1e-6)
    # each prototype's exemplar is a training image of its mode
    for c, ex in zip(km.centers, km.exemplars):
        assert torch.allclose(torch.nn.functional.avg_pool2d(ex, 4).flatten(), c, atol=1e-6)
    acc = km.accuracy(x, y)
    assert acc["kmeans_accuracy"] == 1.0 and acc["agreement"] == 1.0
    # a bright top-left digit: its prototype is (1,0,0,0), the rival the nearest class-1 one, (0,0,0,0.5);
    # margin terms per quadrant: TL (1-0)^2-(1-1)^2 = 1, BR (0-0.5)^2-0 = 0.25, the others 0
    xq = x[5:6]
    before = km.blackbox.queries
    out = km.explain(xq)
    assert km.blackbox.queries - before == 1  # one target forward pass per explanation
    assert out["prediction"].tolist() == [0] and out["target"].tolist() == [0]
    assert km.centers[out["prototype"][0]].tolist() == pytest.approx([1.0, 0, 0, 0])
    assert km.centers[out["rival"][0]].tolist() == pytest.approx([0, 0, 0, 0.5])
    assert torch.allclose(out["concept_map"][0], torch.tensor([[1.0, 0.0], [0.0, 0.25]]), atol=1e-6)
    assert out["scores"][0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.25], abs=1e-6)  # 2x2 patches = quadrants
    # explaining the other class flips the margin: own (0,0,0,0.5), rival (1,0,0,0)
    assert km.attribute(xq, 1)[0].tolist() == pytest.approx([-1.0, 0.0, 0.0, -0.25], abs=1e-6)


def test_batching_and_blocks_do_not_change_answers():
    x, y = planted()
    a = method(k=2, batch_size=512).fit(x, y).attribute(x, y)
    b = method(k=2, batch_size=3).fit(x, y).attribute(x, y)
    assert torch.allclose(a, b, atol=1e-6)
    two = method(k=1, layers=["features", "head"]).fit(x, y)  # two blocks, each scaled by its RMS norm
    assert two.fit_info["dim"] == 8 and set(two.scale) == {"features", "head"}
    assert two.centers[0, :4].tolist() == pytest.approx([0.75 / two.scale["features"], 0, 0, 0], abs=1e-6)
    assert two.accuracy(x, y)["kmeans_accuracy"] == 1.0


def test_fits_from_a_data_module_and_refuses_misuse():
    x, y = planted()

    class Data:
        def setup(self, stage=None):
            pass

        def dataset(self, split):
            assert split == "train"
            return torch.utils.data.TensorDataset(x, y, torch.arange(len(y)))

    km = method(k=2, data=Data())
    assert km.attribute(x[:2], 0).shape == (2, 4) and km.fit_info["n"] == len(y)
    with pytest.raises(ConfigError, match="no prototypes"):
        method().attribute(x[:1], 0)
    with pytest.raises(ConfigError, match="no module"):
        method(layers=["nope"]).fit(x, y)
    with pytest.raises(TargetError, match="white-box"):
        KMeansPrototypes(BlackBox(lambda t: torch.zeros(len(t), 2), output="logits"),
                         PatchMasker(grid=(2, 2), input_shape=(1, 8, 8)))


def test_config_composes_and_evaluate_passes_the_jobs_data(tmp_path):
    from fex.tasks.evaluate import build_methods

    cfg = compose("evaluate", ["checkpoint=x.ckpt", "method=[kmeans_prototypes]", "data=mnist", "data.limit=100",
                               "method.kmeans_prototypes.k=2"], output_dir=tmp_path)
    net = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 10))  # a CNN-shaped MNIST target
    bb = BlackBox(net, output="logits", num_classes=10)

    class Explainer:
        masker = PatchMasker(grid=(7, 7), input_shape=(1, 28, 28))

    m = build_methods(cfg, bb, Explainer())["kmeans_prototypes"]()  # fitted on the job's train split
    assert type(m).__name__ == "KMeansPrototypes" and m.labels == "true" and m.split == "train"
    assert type(m.data).__name__ == "MNISTDataModule" and m.fit_info["n"] == 100 and m.fit_info["dim"] == 49
    assert len(m.proto_class) == 20 and m.attribute(torch.rand(2, 1, 28, 28), 3).shape == (2, 49)


@pytest.mark.slow
def test_mnist_kmeans_within_one_point_of_the_cnn(mnist_target):
    """The issue's target on the real MNIST CNN (measured: 0.980 vs 0.983)."""
    from fex.data.mnist import MNISTDataModule

    dm = MNISTDataModule()
    km = KMeansPrototypes(mnist_target, PatchMasker(grid=(7, 7), input_shape=(1, 28, 28)), data=dm, k=10)
    test = dm.dataset("test")  # set up by the fit on the train split
    acc = km.accuracy(test.x, test.y)
    assert acc["kmeans_accuracy"] >= acc["cnn_accuracy"] - 0.01, acc


def test_renderer_draws_prototypes_and_concept_maps(tmp_path):
    x, y = planted()
    km = method(k=2).fit(x, y)
    out = km.explain(x[[0, 5, 10, 15]])
    path = km.masker.renderer().prototypes(x[[0, 5, 10, 15]], out, km.exemplars, km.proto_class, tmp_path / "protos",
                                           ["a", "b", "c", "d"])
    assert path.name == "protos.png" and path.stat().st_size > 1000
