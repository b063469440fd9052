"""A checkpoint is data: crafted configs are refused with one line and have no side effect."""
from __future__ import annotations

import copy

import pytest
import torch

import fex.registry as R
from fex.errors import CheckpointError, TargetError, TargetMismatchError
from fex.maskers.image import PatchMasker
from fex.explainer import CKPT_VERSION
from fex.module import ExplainerModule
from tests.helpers import planted_blackbox, small_explainer


def good_ckpt() -> dict:
    module = small_explainer(blackbox=planted_blackbox())
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    return ckpt


def save(tmp_path, ckpt, name="crafted.ckpt"):
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def with_masker(ckpt: dict, masker: dict) -> dict:
    ckpt = copy.deepcopy(ckpt)
    ckpt["fex"]["config"]["masker"] = masker
    return ckpt


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_good_checkpoint_loads_through_the_registry(tmp_path):
    path = save(tmp_path, good_ckpt(), "good.ckpt")
    ex = ExplainerModule.from_checkpoint(path, target=planted_blackbox())
    assert isinstance(ex.masker, PatchMasker) and ex.masker.grid == (4, 4)
    assert ex.feature_scores(torch.rand(2, 1, 16, 16)).shape == (2, 16)


ATTACKS = {
    "path_write_text": lambda victim: {"_target_": "pathlib.Path.write_text", "self": str(victim), "data": "pwned"},
    "builtins_open_write": lambda victim: {"_target_": "builtins.open", "file": str(victim), "mode": "w"},
    "torch_save": lambda victim: {"_target_": "torch.save", "obj": [1], "f": str(victim)},
    "foreign_class": lambda victim: {"_target_": "collections.OrderedDict"},
    "fex_class_wrong_group": lambda victim: {"_target_": "fex.policy.Policy", "num_classes": 2},
    "nested_target_in_argument": lambda victim: {
        "_target_": "fex.maskers.image.PatchMasker", "grid": [4, 4], "input_shape": [1, 16, 16],
        "fill": {"_target_": "pathlib.Path.write_text", "self": str(victim), "data": "pwned"}},
    "partial_key": lambda victim: {"_target_": "fex.maskers.image.PatchMasker", "_partial_": True},
    "args_key_nested": lambda victim: {"_target_": "fex.maskers.image.PatchMasker",
                                       "grid": [{"_args_": [str(victim)]}, 4]},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_masker_config_is_refused_without_side_effect(tmp_path, attack):
    victim = tmp_path / "victim.txt"
    path = save(tmp_path, with_masker(good_ckpt(), ATTACKS[attack](victim)))
    with pytest.raises(CheckpointError) as e:
        ExplainerModule.from_checkpoint(path, target=planted_blackbox())
    one_line_error(e)
    assert not victim.exists()


def test_crafted_backbone_and_objective_are_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    ckpt = good_ckpt()
    ckpt["fex"]["config"]["policy"]["backbone"] = {"_target_": "pathlib.Path.write_text", "self": str(victim), "data": "x"}
    with pytest.raises(CheckpointError, match="not a registered fex backbone"):
        ExplainerModule.from_checkpoint(save(tmp_path, ckpt))
    ckpt = good_ckpt()
    ckpt["fex"]["config"]["objective"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    with pytest.raises(CheckpointError, match="not a registered fex objective"):
        ExplainerModule.from_checkpoint(save(tmp_path, ckpt))
    assert not victim.exists()


def test_user_class_loads_only_after_register(tmp_path):
    class MyMasker(PatchMasker):
        pass

    name = f"{MyMasker.__module__}.{MyMasker.__qualname__}"
    masker = {"_target_": name, "grid": [4, 4], "input_shape": [1, 16, 16]}
    path = save(tmp_path, with_masker(good_ckpt(), masker))
    with pytest.raises(CheckpointError, match="fex.registry.register"):
        ExplainerModule.from_checkpoint(path)
    R.register(MyMasker)
    try:
        assert R.registered("masker").count(name) == 1
        assert type(ExplainerModule.from_checkpoint(path).masker) is MyMasker
    finally:
        R.unregister(MyMasker)


def test_safe_build_refuses_non_plain_values():
    with pytest.raises(CheckpointError, match="not plain data"):
        R.safe_build("masker", {"_target_": "fex.maskers.image.PatchMasker", "grid": object()})
    with pytest.raises(CheckpointError, match="non-finite"):
        R.safe_build("masker", {"_target_": "fex.maskers.image.PatchMasker", "blur_sigma": float("nan")})
    # a constructor's own complaint becomes one line naming the class
    with pytest.raises(CheckpointError, match="cannot build masker fex.maskers.image.PatchMasker"):
        R.safe_build("masker", {"_target_": "fex.maskers.image.PatchMasker", "grid": [4, 4], "no_such_arg": 1})


# ------------------------------------------------------------------ metadata (issue 11, item 6)
def mutate(fn):
    def make():
        ckpt = good_ckpt()
        fn(ckpt)
        return ckpt
    return make


METADATA = {
    "newer_version": (mutate(lambda c: c["fex"].update(version=CKPT_VERSION + 1)), "upgrade fex"),
    "no_version": (mutate(lambda c: c["fex"].pop("version")), "format version"),
    "fex_entry_is_a_list": (mutate(lambda c: c.update(fex=[1, 2])), "'fex' entry is list"),
    "fex_entry_is_none": (mutate(lambda c: c.update(fex=None)), "'fex' entry is NoneType"),
    "no_config": (mutate(lambda c: c["fex"].pop("config")), "config is missing"),
    "no_masker": (mutate(lambda c: c["fex"]["config"].pop("masker")), "no masker section"),
    "policy_is_a_string": (mutate(lambda c: c["fex"]["config"].update(policy="fex.policy.Policy")), "no policy section"),
    "fingerprint_is_a_string": (mutate(lambda c: c["fex"].update(target="abc")), "fingerprint is malformed"),
    "grid_disagrees_with_policy": (mutate(lambda c: c["fex"]["config"]["masker"].update(grid=[2, 2])),
                                   "gives 4 features but the policy was trained on 16"),
}


@pytest.mark.parametrize("case", sorted(METADATA))
def test_bad_metadata_is_one_line(tmp_path, case):
    make, match = METADATA[case]
    with pytest.raises(CheckpointError, match=match) as e:
        ExplainerModule.from_checkpoint(save(tmp_path, make()), target=planted_blackbox())
    one_line_error(e)


def test_missing_fingerprint_is_an_error_unless_allowed(tmp_path):
    ckpt = good_ckpt()
    ckpt["fex"]["target"] = None
    path = save(tmp_path, ckpt)
    with pytest.raises(TargetMismatchError, match="no target fingerprint"):
        ExplainerModule.from_checkpoint(path, target=planted_blackbox())
    ex = ExplainerModule.from_checkpoint(path, target=planted_blackbox(), allow_target_mismatch=True)
    assert ex.blackbox is not None
    assert ExplainerModule.from_checkpoint(path).blackbox is None  # no target: nothing to compare


def test_class_count_is_checked_even_when_mismatch_is_allowed(tmp_path):
    path = save(tmp_path, good_ckpt())  # a 2-class explainer

    def five_classes(x):
        return torch.zeros(x.shape[0], 5)

    with pytest.raises(TargetError, match="5 classes") as e:
        ex = ExplainerModule.from_checkpoint(path, target=five_classes, allow_target_mismatch=True)
        ex.explain(torch.rand(3, 1, 16, 16))  # an undeclared count is checked on the first query
    one_line_error(e)
    from fex.blackbox import BlackBox

    declared = BlackBox(five_classes, num_classes=5)
    with pytest.raises(TargetError, match="target has 5 classes but the explainer explains 2"):
        ExplainerModule.from_checkpoint(path, target=declared, allow_target_mismatch=True)


# --------------------------------------------------------------------------- stored data/target configs
# Issue 21: the allowlist read raw strings, but the job then resolved OmegaConf interpolations, so a
# stored value could build anything through a resolver. Each crafted value below must be refused when
# the checkpoint is read (one line), before any job resolves or builds it, and write nothing.
def stored_attacks(victim) -> dict:
    spec = "{_target_: builtins.open, file: " + str(victim) + ", mode: w}"
    return {
        "data oc.decode": lambda c: c["data"].update(cache_dir="${oc.decode:'" + spec + "'}"),
        "data oc.create": lambda c: c["data"].update(seed="${oc.create:'" + spec + "'}"),
        "target.model oc.decode": lambda c: c["target"]["model"].update(cache_dir="${oc.decode:'" + spec + "'}"),
        "target oc.env": lambda c: c["target"].update(output="${oc.env:HOME}"),
        "masker interpolation": lambda c: c["masker"].update(baseline="${oc.decode:'" + spec + "'}"),
        "paths ref wrapping a resolver": lambda c: c["data"].update(cache_dir="${oc.decode:${paths.cache_dir}}"),
        "interpolated key": lambda c: c["data"].update({"${oc.decode:'" + spec + "'}": 1}),
    }


def with_stored_data_target(ckpt: dict) -> dict:
    ckpt = copy.deepcopy(ckpt)
    ckpt["fex"]["config"]["data"] = {"_target_": "fex.data.mnist.MNISTDataModule", "cache_dir": "${paths.cache_dir}",
                                     "seed": 0, "num_classes": 2}
    ckpt["fex"]["config"]["target"] = {"model": {"_target_": "fex.targets.mnist_cnn.pretrained_mnist_cnn",
                                                 "cache_dir": "${paths.cache_dir}"}, "output": "logits"}
    return ckpt


@pytest.mark.parametrize("attack", list(stored_attacks("v")))
def test_stored_interpolations_are_refused_when_read(tmp_path, attack):
    from fex.explainer import read_checkpoint

    victim = tmp_path / "victim"
    ckpt = with_stored_data_target(good_ckpt())
    stored_attacks(victim)[attack](ckpt["fex"]["config"])
    path = save(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match="interpolation") as e:
        read_checkpoint(path)
    one_line_error(e)
    assert not victim.exists()


def test_machine_path_interpolations_still_load(tmp_path):
    """``${paths.cache_dir}`` is what fex itself stores (fex.explainer.portable): still accepted."""
    from fex.explainer import read_checkpoint

    ckpt = read_checkpoint(save(tmp_path, with_stored_data_target(good_ckpt())))
    assert ckpt["fex"]["config"]["data"]["cache_dir"] == "${paths.cache_dir}"


@pytest.mark.parametrize("where", ["target.model", "data"])
@pytest.mark.parametrize("key", ["_args_", "_partial_", "_recursive_", "_convert_"])
def test_stored_special_keys_are_refused(where, key):
    cfg = with_stored_data_target(good_ckpt())["fex"]["config"]
    node = cfg["target"]["model"] if where == "target.model" else cfg["data"]
    node[key] = ["/tmp/x"] if key == "_args_" else True
    group = where.split(".")[0]
    with pytest.raises(CheckpointError, match=key) as e:
        R.check_stored(group, cfg[group], "checkpoint c.ckpt")
    one_line_error(e)


def test_crafted_data_config_never_reaches_a_job(tmp_path):
    """End to end: the evaluate job on a checkpoint whose stored data config would open (truncate) a
    file through ``oc.decode`` fails with one line, and the file is never created."""
    from fex.errors import FexError
    from fex.tasks.evaluate import evaluate
    from tests.conftest import compose

    victim = tmp_path / "victim"
    ckpt = with_stored_data_target(good_ckpt())
    stored_attacks(victim)["data oc.decode"](ckpt["fex"]["config"])
    path = save(tmp_path, ckpt)
    cfg = compose("evaluate", [f"checkpoint={path}", "allow_target_mismatch=true"], output_dir=str(tmp_path / "run"))
    with pytest.raises(FexError) as e:
        evaluate(cfg)
    one_line_error(e)
    assert not victim.exists()
