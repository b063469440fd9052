"""Exact cost accounting: queries, target forward/backward passes, policy calls (fex.compare records)."""
import pytest
import torch

from fex import baselines as B
from fex import compare
from fex.blackbox import BlackBox
from fex.maskers.image import PatchMasker
from fex.methods.cost import PassCounter
from fex.methods.psig import PathSampledIG
from fex.methods.rloco import RegionalLOCO
from tests.synth import LinearPatchTarget, make_checkpoint

N, BATCH = 4, 2  # explanations, per batch


@pytest.fixture
def setup():
    bb = BlackBox(LinearPatchTarget(grid=3, size=6), output="logits")
    masker = PatchMasker(grid=(3, 3), input_shape=(1, 6, 6))
    x = torch.rand(N, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    return bb, masker, x, torch.ones(N, dtype=torch.long)


@pytest.mark.parametrize("make,queries,fwd,bwd", [
    (lambda bb, mk: B.IntegratedGradients(bb, mk, n_steps=7, internal_batch_size=3), 7, 7, 7),  # m steps -> m gradients
    (lambda bb, mk: PathSampledIG(bb, mk, n_steps=5, internal_batch_size=2), 5, 5, 5),
    (lambda bb, mk: B.KernelShap(bb, mk, n_samples=30), 30, 30, 0),  # KernelShap(N) -> N queries
    (lambda bb, mk: B.FeatureAblation(bb, mk), 10, 10, 0),  # F + 1
    (lambda bb, mk: B.Rise(bb, mk, n_masks=20, batch=8), 20, 20, 0),
    (lambda bb, mk: RegionalLOCO(bb, mk, n_regions=2).fit(torch.rand(4, 1, 6, 6), 1), 10, 10, 0),
    (lambda bb, mk: B.RandomAttribution(bb, mk), 0, 0, 0),
])
def test_exact_counts_per_explanation(setup, make, queries, fwd, bwd):
    bb, masker, x, t = setup
    rec = compare.explain_all(make(bb, masker), masker, x, t, batch_size=BATCH)
    assert (rec["queries_per_expl"], rec["forward_passes"], rec["backward_passes"]) == (queries, fwd, bwd)
    assert rec["policy_calls"] is None


def test_fex_is_one_policy_forward_plus_one_query_for_the_prediction(tmp_path):
    bb = BlackBox(LinearPatchTarget(), output="logits")
    m = B.Fex(bb, checkpoint=make_checkpoint(tmp_path / "e.ckpt", bb))
    x = torch.rand(N, 1, 28, 28)
    with bb.counting() as c, PassCounter(m.explainer.policy) as pol, PassCounter(bb.model) as tgt:
        m.explainer.explain(x)  # explains the prediction: the black box is asked once per input
    assert (pol.calls, pol.forward, c.n, tgt.forward, tgt.backward) == (1, N, N, N, 0)
    rec = compare.explain_all(m, m.masker, x, torch.ones(N, dtype=torch.long), batch_size=BATCH)
    # explained class given (as in every comparison): no queries at all, one policy call per batch
    assert (rec["queries_per_expl"], rec["forward_passes"], rec["policy_calls"]) == (0, 0, 1 / BATCH)


def test_nested_and_wrapped_calls_count_once():
    inner = torch.nn.Linear(3, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner

        def forward(self, x):
            return self.model(x)

    w = Wrapper()
    with PassCounter(w) as pc:
        w(torch.rand(5, 3))  # outer call: 5 rows, not 10
        out = inner(torch.rand(4, 3, requires_grad=True))  # the wrapped model called directly
        out.sum().backward()
    assert (pc.calls, pc.forward, pc.backward) == (2, 9, 4)


def test_score_all_concatenates_batches_of_different_curve_lengths():
    """One curve step per word: batches whose longest snippet differs give curves of different widths.
    They are concatenated, each padded with its last point; the per-example AUCs and AOPC do not
    depend on the batching (each is taken over the snippet's own points)."""
    from fex.maskers.text import WordMasker
    from tests.text_helpers import planted_word_blackbox

    masker = WordMasker(max_length=32)
    bb = BlackBox(planted_word_blackbox("great"), output="probs", num_classes=2)
    x = masker.encode(["a great film", "great", "the plot is great and the cast is fine too", "dull"])
    n = masker.valid(x).sum(1)
    scores = torch.randn(4, int(n.max()))
    target = torch.ones(4, dtype=torch.long)
    one = compare.score_all(bb, masker, x, scores, target, batch_size=4)
    two = compare.score_all(bb, masker, x, scores, target, batch_size=2)  # batches of 3 and 11 words
    curves = [k for k, v in two.items() if v.dim() == 2]
    assert curves
    for k in curves:
        assert two[k].shape[0] == 4 and two[k].shape[1] == one[k].shape[1]
        w = int(n[:2].max()) + 1  # the first batch's own width
        assert torch.allclose(two[k][:2, w - 1:], two[k][:2, w - 1:w].expand(-1, two[k].shape[1] - w + 1))
    for k in ("deletion_auc", "insertion_auc", "aopc"):
        torch.testing.assert_close(two[k], one[k])


def test_cat_ragged_known_values():
    a, b = torch.tensor([[1.0, 0.5, 0.25]]), torch.tensor([[1.0, 0.5]])
    assert compare._cat_ragged([a, b]).tolist() == [[1.0, 0.5, 0.25], [1.0, 0.5, 0.5]]
    assert compare._cat_ragged([torch.ones(2), torch.zeros(1)]).tolist() == [1.0, 1.0, 0.0]
