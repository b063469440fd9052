"""The evaluate job: batch attribution (resumable, DDP), baselines comparison, outputs, one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fex.errors import CheckpointError, DataError, TargetMismatchError
from fex.config import build_blackbox
from fex.writer import read_shards, shard_files
from tests.conftest import ROOT, compose
from tests.synth import make_checkpoint

SYNTH = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = compose("evaluate", SYNTH + ["checkpoint=x"], output_dir="x")
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "explainer.ckpt", build_blackbox(cfg.target, 2))


def run_eval(ckpt, out, extra=()):
    from fex.tasks.evaluate import evaluate

    cfg = compose("evaluate", SYNTH + [f"checkpoint={ckpt}", *extra], output_dir=out)
    return evaluate(cfg)


def shell(args, timeout=300, **kw):
    return subprocess.run([sys.executable, "evaluate.py", *SYNTH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_every_config_option_composes():
    cfg = compose("evaluate", ["checkpoint=x"], output_dir="x")
    assert set(cfg.method) == {"fex", "kernel_shap", "lime", "feature_ablation", "shapley_sampling",
                               "integrated_gradients", "rise", "random"}
    cfg = compose("evaluate", ["checkpoint=x", "method=[rise]", "method.rise.n_masks=10"], output_dir="x")
    assert list(cfg.method) == ["rise"] and cfg.method.rise.n_masks == 10


def test_full_run_outputs(ckpt, tmp_path, capsys):
    metrics, objects = run_eval(ckpt, tmp_path, ["method=[fex,feature_ablation,kernel_shap,integrated_gradients,random]",
                                                 "method.kernel_shap.n_samples=30", "compare.num_examples=4",
                                                 "compare.batch_size=2"])
    for f in ("metrics.json", "table.md", "curves.png", "quality_vs_time.png", "gallery.png", "attributions.npz"):
        assert (tmp_path / f).is_file(), f
    assert not list(tmp_path.glob(".*tmp*"))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["attribution/rows"] == 40
    rows = {r["method"]: r for r in saved["methods"]}
    assert set(rows) == {"fex", "feature_ablation", "kernel_shap", "integrated_gradients", "random"}
    assert all("error" not in r for r in rows.values())
    assert rows["kernel_shap"]["queries_per_expl"] == 30 and rows["feature_ablation"]["queries_per_expl"] == 50
    assert rows["fex"]["queries_per_expl"] == 0 and rows["kernel_shap"]["speedup_vs_ref"] == 1
    # the linear target is explained exactly by occlusion; random is not
    assert rows["feature_ablation"]["deletion_auc"] < rows["random"]["deletion_auc"]
    assert rows["feature_ablation"]["faithfulness_corr"] > 0.9
    out = capsys.readouterr().out
    assert "| method |" in out and "fex-evaluate:" in out
    npz = np.load(tmp_path / "attributions.npz")
    assert npz["index"].tolist() == list(range(40)) and npz["scores"].shape == (40, 49)
    assert 0 <= saved["eval/deletion_auc"] <= 1


def test_resume_predicts_only_missing_rows(ckpt, tmp_path):
    m, _ = run_eval(ckpt, tmp_path, ["method=[]"])
    assert m["attribution/predicted"] == 40
    first = read_shards(tmp_path / "attributions")
    files = shard_files(tmp_path / "attributions")
    for f in files[1:3]:  # an interruption lost two batches and left a half-written file
        os.remove(f)
    (tmp_path / "attributions" / ".shard-000000016.npz.99.tmp").write_bytes(b"partial")
    m, _ = run_eval(ckpt, tmp_path, ["method=[]"])
    assert m["attribution/predicted"] == 16
    again = read_shards(tmp_path / "attributions")
    assert again["index"].tolist() == list(range(40))
    np.testing.assert_allclose(again["scores"], first["scores"], atol=1e-6)
    m, _ = run_eval(ckpt, tmp_path, ["method=[]"])
    assert m["attribution/predicted"] == 0


@pytest.mark.slow
def test_kill_mid_run_then_resume(ckpt, tmp_path):
    args = [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "method=[]", "data.n=120", "data.batch_size=4",
            "attribution.score=false"]
    proc = subprocess.Popen([sys.executable, "evaluate.py", *SYNTH, *args, "+target.model.delay=0.15"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "attributions"
    deadline = time.time() + 240
    while time.time() < deadline and len(shard_files(shards)) < 3 and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(shard_files(shards))
    assert 3 <= n_before < 30, "the run was not interrupted mid-way"
    res = shell(args)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_shards(shards)  # raises on duplicates
    assert rows["index"].tolist() == list(range(120))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["attribution/predicted"] == 120 - 4 * n_before


@pytest.mark.slow
def test_ddp_two_processes_gives_the_same_rows(ckpt, tmp_path):
    common = [f"checkpoint={ckpt}", "method=[]", "data.n=42", "attribution.score=false"]
    one = shell(common + [f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = shell(common + [f"hydra.run.dir={tmp_path / 'two'}", "trainer.devices=2", "trainer.strategy=ddp",
                          "trainer.accelerator=cpu"])
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = read_shards(tmp_path / "one" / "attributions"), read_shards(tmp_path / "two" / "attributions")
    assert a["index"].tolist() == b["index"].tolist() == list(range(42))
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)


def test_missing_checkpoint_is_one_line_error(tmp_path):
    res = shell([f"checkpoint={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == f"error: checkpoint not found: {tmp_path / 'nope.ckpt'}"
    assert not list(tmp_path.glob("*.json"))


def test_target_mismatch(ckpt, tmp_path):
    with pytest.raises(TargetMismatchError, match="allow_target_mismatch"):
        run_eval(ckpt, tmp_path, ["target.model.scale=0.5"])
    m, _ = run_eval(ckpt, tmp_path, ["target.model.scale=0.5", "allow_target_mismatch=true", "method=[]"])
    assert m["attribution/rows"] == 40


def test_dataset_the_masker_cannot_handle(ckpt, tmp_path):
    with pytest.raises(DataError, match="cannot handle split 'test'.*32x32"):
        run_eval(ckpt, tmp_path, ["+data.size=32"])
    assert not (tmp_path / "attributions").exists() or not shard_files(tmp_path / "attributions")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_eval(bad, tmp_path)
