"""The checkpoint is the explainer: one builder, one loader, jobs that need nothing else, format 1 still read."""
import json

import pytest
import torch

from fex.errors import CheckpointError
from fex.explainer import CKPT_KEY, build_explainer, load_explainer, read_checkpoint
from fex.config import build_blackbox
from tests.conftest import ROOT, compose
from tests.synth import LinearPatchTarget, make_checkpoint

SYNTH = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear"]


@pytest.fixture(scope="module")
def synth_bb():
    return build_blackbox(compose("evaluate", SYNTH + ["checkpoint=x"], output_dir="x").target, 2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, synth_bb):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "explainer.ckpt", synth_bb)


def test_checkpoint_describes_itself(ckpt):
    meta = read_checkpoint(ckpt)[CKPT_KEY]
    import fex

    assert meta["version"] == 2 and meta["fex_version"] == fex.__version__
    cfg = meta["config"]
    assert cfg["objective"]["_target_"] == "fex.objective.FexObjective"
    assert cfg["data"]["_target_"] == "tests.synth.RandomImagesData"
    assert cfg["target"]["model"]["_target_"] == "tests.synth.LinearPatchTarget"
    assert cfg["num_classes"] == 2 and cfg["class_names"] == ["0", "1"]
    assert meta["target"]["weights_sha256"] and meta["train_queries"] == 0


def test_build_and_load_agree(ckpt, synth_bb):
    x = torch.rand(3, 1, 28, 28)
    loaded = load_explainer(ckpt, target=synth_bb)
    again = load_explainer(read_checkpoint(ckpt))  # the dict a job already read: no second torch.load
    torch.testing.assert_close(loaded.feature_scores(x, 1), again.feature_scores(x, 1))
    rebuilt = build_explainer(read_checkpoint(ckpt)[CKPT_KEY]["config"])  # same config -> same architecture
    rebuilt.policy.load_state_dict(loaded.policy.state_dict())
    torch.testing.assert_close(rebuilt.feature_scores(x, 1), loaded.feature_scores(x, 1))


def test_evaluate_needs_only_the_checkpoint_and_reads_each_thing_once(ckpt, tmp_path):
    """No data=/target= given: the checkpoint's configs are used. The black box is queried once per
    input (the prediction, stored in the shards); the fex comparison row reuses the shards."""
    from fex.tasks.evaluate import evaluate

    # test-only data/target (tests.synth) are not fex's own: the allowlist wants them named on the command line
    cfg = compose("evaluate", SYNTH + [f"checkpoint={ckpt}", "method=[fex,random]", "compare.num_examples=8",
                                       "attribution.score=false"], output_dir=tmp_path)
    metrics, objects = evaluate(cfg)
    assert metrics["attribution/rows"] == 40 and objects["config"].data._target_ == "tests.synth.RandomImagesData"
    assert objects["blackbox"].queries == 40  # one per input; metric queries are uncounted
    rows = {r["method"]: r for r in json.loads((tmp_path / "metrics.json").read_text())["methods"]}
    assert rows["fex"]["from"] == "attribution shards" and rows["fex"]["queries_per_expl"] == 0
    shards = __import__("numpy").load(tmp_path / "attributions.npz")
    probs = objects["blackbox"](torch.stack([objects["datamodule"].ds[i][0] for i in range(40)]))
    assert shards["target"].tolist() == probs.argmax(-1).tolist()
    torch.testing.assert_close(torch.as_tensor(shards["probability"]), probs.max(-1).values)


def test_command_line_groups_override_the_checkpoint(ckpt, tmp_path):
    from fex.errors import TargetMismatchError
    from fex.tasks.evaluate import evaluate

    # a tweak without choosing the group is merged over the stored target: a different target
    cfg = compose("evaluate", SYNTH + [f"checkpoint={ckpt}", "method=[]", "target.model.scale=0.5"], output_dir=tmp_path)
    with pytest.raises(TargetMismatchError):
        evaluate(cfg)
    cfg = compose("evaluate", SYNTH + [f"checkpoint={ckpt}", "method=[]", "data.n=12"], output_dir=tmp_path / "b")
    assert evaluate(cfg)[0]["attribution/rows"] == 12


def _as_format_1(path, out, keep=("masker", "policy", "objective")):
    ckpt = torch.load(path, weights_only=True)
    cfg = ckpt[CKPT_KEY]["config"]
    objective = {k: v for k, v in cfg["objective"].items() if k != "_target_"}
    ckpt[CKPT_KEY] = {"version": 1, "config": {**{k: cfg[k] for k in keep}, "objective": objective},
                      "target": ckpt[CKPT_KEY]["target"]}
    torch.save(ckpt, out)
    return out


def test_format_1_loads_and_jobs_say_what_is_missing(ckpt, synth_bb, tmp_path):
    from fex.tasks.evaluate import evaluate

    old = _as_format_1(ckpt, tmp_path / "v1.ckpt")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(load_explainer(old, target=synth_bb).feature_scores(x),
                               load_explainer(ckpt, target=synth_bb).feature_scores(x))
    cfg = compose("evaluate", [f"checkpoint={old}", "method=[]"], output_dir=tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"\(format 1\) does not record its data config; pass data=\.\.\.") as e:
        evaluate(cfg)
    assert "\n" not in str(e.value)
    cfg = compose("evaluate", SYNTH + [f"checkpoint={old}", "method=[]"], output_dir=tmp_path / "b")
    assert evaluate(cfg)[0]["attribution/rows"] == 40


def test_unknown_format_is_one_line(ckpt, tmp_path):
    c = torch.load(ckpt, weights_only=True)
    c[CKPT_KEY]["version"] = 7
    torch.save(c, tmp_path / "v7.ckpt")
    with pytest.raises(CheckpointError, match="has format 7; .*upgrade fex or retrain"):
        read_checkpoint(tmp_path / "v7.ckpt")


def test_no_modality_branches_in_tasks_and_cli():
    """Modality lives in the maskers and their renderers."""
    import re

    tasks = [ROOT / "fex" / "tasks" / f"{t}.py" for t in ("common", "train", "evaluate", "explain")]
    for f in [*tasks, ROOT / "fex" / "cli.py", ROOT / "fex" / "bench.py", ROOT / "fex" / "render" / "plots.py"]:
        src = f.read_text()
        for pat in (r"hasattr\([^)]*encode", r"isinstance\([^)]*torch\.Tensor\)", r"\.texts\b", r"words\" in",
                    r"bb\.queries\s*=", r"\.queries\s*=\s*q0"):
            assert not re.search(pat, src), f"{f.name}: {pat}"


def test_weights_of_another_linear_target_are_refused(ckpt):
    from fex.errors import TargetMismatchError

    with pytest.raises(TargetMismatchError):
        load_explainer(ckpt, target=LinearPatchTarget(scale=2.0))
