"""Explainer module: checkpoints reproduce attributions, batch size is irrelevant, the black box stays out."""
import pytest
import torch

from fex import ExplainerModule
from fex.blackbox import BlackBox
from fex.errors import CheckpointError, InputError, TargetMismatchError
from helpers import PlantedPatches, fit, planted_blackbox, small_explainer, synthetic_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    bb = planted_blackbox()
    module = small_explainer(blackbox=bb)
    trainer = fit(module, synthetic_images(256, seed=0), steps=8, default_root_dir=tmp)
    path = tmp / "explainer.ckpt"
    trainer.save_checkpoint(path)
    return module, path


def test_black_box_never_in_state_dict_or_checkpoint(trained):
    module, path = trained
    assert all(k.startswith("policy.") for k in module.state_dict())
    ckpt = torch.load(path, weights_only=True)
    assert all(k.startswith("policy.") for k in ckpt["state_dict"])
    assert "region" not in str(ckpt.get("hyper_parameters", {}))
    assert ckpt["fex"]["target"]["name"] == "tests.PlantedPatches"
    assert set(ckpt["fex"]["config"]) >= {"masker", "policy", "objective"}


def test_reloaded_checkpoint_reproduces_attributions_exactly(trained):
    module, path = trained
    x = synthetic_images(10, seed=3)
    loaded = ExplainerModule.from_checkpoint(path, target=planted_blackbox())
    a, b = module.explain(x), loaded.explain(x)
    assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["attributions"], b["attributions"])
    assert a["attributions"].shape == x.shape


def test_batch_size_does_not_change_attributions(trained):
    module, _ = trained
    x = synthetic_images(12, seed=4)
    full = module.feature_scores(x)
    parts = torch.cat([module.feature_scores(x[i:i + 5]) for i in range(0, 12, 5)])
    assert torch.allclose(full, parts, atol=1e-6)


def test_explicit_target_and_class_head_fallback(trained):
    module, path = trained
    x = synthetic_images(4, seed=5)
    s0 = module.feature_scores(x, target=0)
    s1 = module.feature_scores(x, target=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(s0, s1)
    no_bb = ExplainerModule.from_checkpoint(path)  # no target: explains the policy's class-head guess
    assert no_bb.explain(x)["target"].shape == (4,)
    with pytest.raises(InputError, match="out of range"):
        module.attribute(x, target=7)
    with pytest.raises(InputError, match="4 entries for a batch of 2"):
        module.attribute(x[:2], target=[0, 1, 0, 1])


def test_target_mismatch_refused_unless_overridden(trained):
    _, path = trained
    other = PlantedPatches(planted=(1, 2))
    with pytest.raises(TargetMismatchError, match="different target.*allow_target_mismatch"):
        ExplainerModule.from_checkpoint(path, target=BlackBox(other))
    loaded = ExplainerModule.from_checkpoint(path, target=BlackBox(other), allow_target_mismatch=True)
    assert loaded.blackbox.model is other


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ExplainerModule.from_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        ExplainerModule.from_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an fex explainer"):
        ExplainerModule.from_checkpoint(foreign)


@pytest.mark.parametrize("x, message", [
    (torch.rand(2, 3, 16, 16), "expected 1 channel"),
    (torch.rand(2, 1, 20, 16), "expected images of 16x16"),
    (torch.full((2, 1, 16, 16), float("inf")), "NaN or Inf"),
])
def test_bad_inputs_get_one_line_errors(trained, x, message):
    module, _ = trained
    with pytest.raises(InputError, match=message) as err:
        module.attribute(x)
    assert "\n" not in str(err.value)
