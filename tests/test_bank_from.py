"""objective.bank_from: a run starts from an earlier run's reward bank and does not pay its queries again
(a known answer: with query_budget = num_samples the bank fills in epoch 1, so a run started from it
trains exactly like the run that queried it, and the target answers exactly train/queries fewer rows)."""
import pytest
import torch

from fex.bank import RewardBank, data_identity
from fex.checkpoint import BANK_KEY
from fex.config import build
from fex.errors import CheckpointError, ConfigError, TargetMismatchError
from tests import synth
from tests.conftest import ROOT, compose

N = 40  # tests/conf/data/synth.yaml: 40 images, batches of 8
ARGS = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear", "trainer.max_epochs=2",
        "trainer.limit_val_batches=1", "val_auc_examples=4", "logger=none", "trainer.enable_progress_bar=false",
        "gallery_size=0", "masker.grid=[4,4]", "policy.hidden=16", "policy.backbone.width=4",
        "policy.backbone.depth=1", "policy.backbone.out_dim=8", "objective.num_samples=8"]


@pytest.fixture
def rows(monkeypatch):
    """Counts every row the linear target really answers (training, validation and the report alike)."""
    seen = {"n": 0}
    forward = synth.LinearPatchTarget.forward

    def counted(self, x):
        seen["n"] += len(x)
        return forward(self, x)

    monkeypatch.setattr(synth.LinearPatchTarget, "forward", counted)
    return seen


def run(tmp_path, name, *extra):
    from fex.tasks.train import train

    return train(compose("train", ARGS + list(extra), output_dir=tmp_path / name))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A run whose bank (query_budget=8 = num_samples) is full after epoch 1; its best.ckpt holds it."""
    tmp = tmp_path_factory.mktemp("first")
    metrics, objects = run(tmp, "first", "objective.query_budget=8")
    best = tmp / "first" / "checkpoints" / "best.ckpt"
    assert best.is_file()
    return best, metrics, objects


def policy_state(objects):
    return {k: v.clone() for k, v in objects["module"].policy.state_dict().items()}


@pytest.mark.slow
def test_a_run_from_the_bank_pays_no_query_and_trains_like_a_fresh_one(tmp_path, first, one_thread, rows):
    best, first_metrics, _ = first
    assert first_metrics["train/queries"] == N * (1 + 8)  # each input's prediction and its 8 masks, once

    rows["n"] = 0
    fresh, fresh_objects = run(tmp_path, "fresh", "objective.query_budget=8")
    fresh_rows = rows["n"]
    rows["n"] = 0
    banked, banked_objects = run(tmp_path, "banked", "objective.query_budget=8", f"objective.bank_from={best}")
    assert banked["train/queries"] == 0 and fresh["train/queries"] == N * (1 + 8)
    # the target really answered exactly the fresh run's training queries fewer rows (validation alike)
    assert fresh_rows - rows["n"] == fresh["train/queries"]
    # the same global random stream and the same banked rewards: the same policy, to float rounding
    a, b = policy_state(fresh_objects), policy_state(banked_objects)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert banked["val/faithfulness"] == pytest.approx(fresh["val/faithfulness"], abs=1e-6)


@pytest.mark.slow
def test_other_budgets_keep_the_stored_masks_and_query_only_the_rest(tmp_path, first, one_thread, rows):
    best, _, _ = first
    stored = torch.load(best, weights_only=True)[BANK_KEY]
    # a larger budget: the 8 stored masks are kept, 8 more per input queried (no prediction queried again)
    bigger, objects = run(tmp_path, "big", "objective.query_budget=16", f"objective.bank_from={best}")
    assert bigger["train/queries"] == N * 8
    bank = objects["module"]._bank
    assert bank.budget == 16 and all(len(r) == 16 for r in bank.rewards.values())
    assert all(torch.equal(bank.masks[k][:8], stored["masks"][k]) for k in stored["masks"])
    # a smaller budget: each input keeps its first 4 masks (2 whole pairs), no query
    smaller, objects = run(tmp_path, "small", "objective.query_budget=4", "objective.num_samples=4",
                           f"objective.bank_from={best}")
    assert smaller["train/queries"] == 0
    bank = objects["module"]._bank
    assert all(torch.equal(bank.rewards[k], stored["rewards"][k][:4]) for k in stored["rewards"])


@pytest.mark.slow
@pytest.mark.parametrize("change, error, match", [
    (["target.model.scale=0.5"], TargetMismatchError, "another target: target weights differ"),
    (["data.seed=1"], CheckpointError, r"other data \(data.seed: 0 there, 1 here\)"),
    (["data.n=32"], CheckpointError, "other data"),
    (["masker.grid=[2,2]"], CheckpointError, "another masker"),
    (["objective.reward=logprob"], CheckpointError, "objective.reward='prob', this run's is 'logprob'"),
    (["objective.sampler=uniform"], CheckpointError, "objective.sampler='paired_uniform'"),
])
def test_a_bank_that_cannot_be_this_runs_is_refused_in_one_line(tmp_path, first, one_thread, change, error, match):
    best, _, _ = first
    with pytest.raises(error, match=match) as e:
        run(tmp_path, "other", "objective.query_budget=8", f"objective.bank_from={best}", *change)
    assert "\n" not in str(e.value) and "bank_from" in str(e.value)


@pytest.mark.slow
def test_a_file_without_a_bank_or_a_crafted_bank_is_refused(tmp_path, first, one_thread):
    best, metrics, _ = first
    with pytest.raises(CheckpointError, match="holds no reward bank"):  # the final explainer: no bank
        run(tmp_path, "a", "objective.query_budget=8", f"objective.bank_from={metrics['checkpoint']}")
    ckpt = torch.load(best, weights_only=True)
    ckpt[BANK_KEY]["masks"] = {k: v.float() for k, v in ckpt[BANK_KEY]["masks"].items()}
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="reward bank is malformed"):
        run(tmp_path, "b", "objective.query_budget=8", f"objective.bank_from={tmp_path / 'bad.ckpt'}")


class Payload:
    def __reduce__(self):
        return (open, ("/tmp/fex-bank-from-pwned", "w"))


def test_bank_from_never_unpickles_code(tmp_path, one_thread):
    """The file is read with weights_only=True: a pickle that would run code is refused, nothing runs."""
    import pathlib

    marker = pathlib.Path("/tmp/fex-bank-from-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"fex": {"version": 2}, "state_dict": {}, BANK_KEY: Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        run(tmp_path, "evil", "objective.query_budget=8", f"objective.bank_from={tmp_path / 'evil.ckpt'}")
    assert not marker.exists()


def test_bank_from_needs_a_budget():
    with pytest.raises(ConfigError, match="bank_from .* needs query_budget > 0"):
        build(compose("train", ["objective.query_budget=0", "objective.bank_from=x.ckpt"]).objective)


def test_resize_keeps_the_first_masks_and_state_round_trips():
    bank = RewardBank(6, paired=True)
    masks = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.float32)
    bank.add([3], masks[None], torch.arange(6.0)[None], torch.tensor([2]))
    bank.remember([3], p_full=torch.tensor([[0.2, 0.8]]))
    again = RewardBank.from_state(bank.state(), "test").resize(4)
    assert again.paired and again.budget == 4 and again.rewards[3].tolist() == [0, 1, 2, 3]
    assert again.masks[3].tolist() == (masks[:4] > 0.5).tolist() and again.room([3]) == 0
    assert RewardBank.from_state(bank.state(), "test").resize(10).room([3]) == 4
    with pytest.raises(CheckpointError, match="test: its reward bank is malformed"):
        RewardBank.from_state({**bank.state(), "rewards": {3: torch.zeros(5)}}, "test")


def test_data_identity_ignores_masked_copy_settings_only_without_copies():
    old = {"source": "rotten_tomatoes", "seed": 0, "batch_size": 32}  # written before masked copies existed
    now = {"source": "rotten_tomatoes", "seed": 0, "batch_size": 64, "num_workers": 2, "masked_copies": 0,
           "masked_share": 0.2, "mask_mode": "mask_token", "mask_token": None}
    assert data_identity(old) == data_identity(now) == {"source": "rotten_tomatoes", "seed": 0}
    copies = {**now, "masked_copies": 1}
    assert data_identity(copies) != data_identity(old)  # the copies add inputs: another keying
    assert data_identity({**copies, "masked_share": 0.3}) != data_identity(copies)
    assert data_identity(None) == {}
