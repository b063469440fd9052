"""SPEX / ProxySPEX through fex's masker and counted black box, on games with planted terms."""
import numpy as np
import pytest
import torch

pytest.importorskip("shapiq")

from fex.blackbox import BlackBox  # noqa: E402
from fex.maskers.image import PatchMasker  # noqa: E402
from fex.methods.spex import ProxySpexInteractions, SpexInteractions, shapley_from_moebius  # noqa: E402

# v(S) = p(class 1 | only the patches in S kept): an exact sum of planted Möbius terms
BASE = 0.4
TERMS = {(1, 3): 0.3, (0, 5): -0.25, (2, 7, 9): 0.2, (4,): 0.05}


class PlantedPatches(torch.nn.Module):
    """Patch presence (mean of a patch of ones, 0 when removed) -> [1 - v, v] with v the planted sum."""

    def __init__(self, grid=(4, 4), size=(8, 8)):
        super().__init__()
        from fex.maskers.image import grid_feature_mask

        fm = grid_feature_mask(size[0], size[1], grid).flatten()
        self.register_buffer("onehot", torch.nn.functional.one_hot(fm).float())

    def forward(self, x):
        z = (x.flatten(1) @ self.onehot / self.onehot.sum(0)).round()  # [N, F] presence
        v = torch.full((x.shape[0],), BASE)
        for t, c in TERMS.items():
            v = v + c * z[:, list(t)].prod(1)
        return torch.stack([1 - v, v], 1)


def planted_shapley(n):
    return shapley_from_moebius({(): BASE, **TERMS}, n)


@pytest.fixture
def planted():
    bb = BlackBox(PlantedPatches(), output="probs")
    return bb, PatchMasker(grid=(4, 4), input_shape=(1, 8, 8)), torch.ones(1, 1, 8, 8)


def test_shapley_from_moebius_is_efficient_and_symmetric():
    phi = planted_shapley(16)
    assert phi.sum() == pytest.approx(sum(TERMS.values()), abs=1e-12)
    assert phi[1] == phi[3] == pytest.approx(0.15) and phi[2] == pytest.approx(0.2 / 3) and phi[4] == 0.05


@pytest.mark.slow  # ~1 min on 2 cores: galois/numba JIT-compile the BCH decoder once per process
def test_spex_recovers_planted_pairs_and_triple(planted):
    bb, masker, x = planted
    m = SpexInteractions(bb, masker, budget=1500, max_order=3, index="FSII", top_k=5)
    bb.reset_queries()
    out = m.explain(x, 1)
    q = out["queries"][0]
    assert out["solver"] == ["spex"] and 0 < q <= 1500 and bb.queries == q  # every query counted, within budget
    # tolerance 1e-4 absolute: the decoder is exact up to the float32 probabilities of the black box
    mo = {k: v for k, v in out["moebius"][0].items() if abs(v) > 1e-4}
    assert set(mo) == {(), *TERMS}  # exactly the planted support
    inter = {k: v for k, v in out["interactions"][0].items() if abs(v) > 1e-4}
    assert set(inter) == {t for t in TERMS if len(t) > 1}
    for t, c in TERMS.items():
        assert mo[t] == pytest.approx(c, abs=1e-4), t
        if len(t) > 1:  # FSII of order 3 on a degree-3 game = the Möbius transform
            assert inter[t] == pytest.approx(c, abs=1e-4), t
    torch.testing.assert_close(out["scores"][0], torch.tensor(planted_shapley(16), dtype=torch.float32),
                               atol=1e-4, rtol=0)


def test_proxyspex_recovers_planted_pairs(planted):
    bb, masker, x = planted
    m = ProxySpexInteractions(bb, masker, budget=1000, max_order=2, index="FSII", seed=0)
    bb.reset_queries()
    out = m.explain(x, 1)
    assert out["solver"] == ["proxyspex"] and out["queries"] == [1000] and bb.queries == 1000
    inter = out["interactions"][0]
    top2 = sorted(inter, key=lambda t: -abs(inter[t]))[:2]
    assert set(top2) == {(1, 3), (0, 5)}
    for t in ((1, 3), (0, 5)):  # stated tolerance: 0.03 absolute (planted 0.3 and -0.25)
        assert inter[t] == pytest.approx(TERMS[t], abs=0.03), (t, inter[t])


def test_small_inputs_are_enumerated_exactly():
    """2**n <= budget: every coalition is queried once and the answer is exact (here n = 6 words)."""
    def f(texts):
        out = []
        for t in texts:
            w = t.split()
            v = 0.5 + 0.3 * ("not" in w and "good" in w) - 0.2 * ("good" in w) + 0.1 * ("film" in w)
            out.append([1 - v, v])
        return torch.tensor(out)

    from fex.maskers.text import WordMasker

    masker = WordMasker()
    x = masker.encode(["a not very good film", "not good at all , really"])
    bb = BlackBox(f, output="probs")
    m = SpexInteractions(bb, masker, budget=100, max_order=2)
    out = m.explain(x, 1)
    assert out["solver"] == ["exact", "exact"] and out["queries"] == [32, 64] and bb.queries == 96
    assert out["interactions"][0][(1, 3)] == pytest.approx(0.3, abs=1e-6)  # "not" x "good" (float32 black box)
    assert max(out["interactions"][1].items(), key=lambda kv: abs(kv[1]))[0] == (0, 1)
    phi = out["scores"][0]
    torch.testing.assert_close(phi[:5], torch.tensor([0.0, 0.15, 0.0, -0.05, 0.1]), atol=1e-6, rtol=0)
    assert (out["scores"][0, 5:] == 0).all()  # padding feature of the shorter text


@pytest.mark.slow  # builds the BCH decoder (JIT, shared with the test above in one session)
def test_too_small_a_budget_is_a_one_line_error(planted):
    from fex.errors import InputError

    bb, masker, x = planted
    with pytest.raises(InputError, match="too small for 16 features"):
        SpexInteractions(bb, masker, budget=100, max_order=2).attribute(x, 1)
