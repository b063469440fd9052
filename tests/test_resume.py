"""Resume training after kill -9: the same command with resume=true continues from last.ckpt,
with the training query count of the checkpoint (a real SIGKILL of a real training process)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from fex.errors import ConfigError
from tests.conftest import ROOT

EPOCHS, N, BATCH, STEPS = 5, 40, 8, 3  # tests/conf/data/synth.yaml: 40 images in batches of 8; 3 batches an epoch
ARGS = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear",
        f"trainer.max_epochs={EPOCHS}", "trainer.limit_val_batches=1", "val_auc_examples=4",
        "logger=none", "trainer.enable_progress_bar=false", "gallery_size=2", "masker.grid=[4,4]",
        "policy.hidden=16", "policy.backbone.width=4", "policy.backbone.depth=1", "policy.backbone.out_dim=8"]


def test_resume_path_finds_the_run_or_its_newest_sibling(tmp_path):
    from fex.tasks.train import resume_path

    runs = tmp_path / "train"
    for name in ("a", "b"):
        (runs / name / "checkpoints").mkdir(parents=True)
        (runs / name / "checkpoints" / "last.ckpt").write_bytes(b"x")
        time.sleep(0.02)
    (runs / "c").mkdir()
    cfg = OmegaConf.create({"resume": True})
    assert resume_path(cfg, runs / "a").endswith("a/checkpoints/last.ckpt")  # its own first
    assert resume_path(cfg, runs / "c").endswith("b/checkpoints/last.ckpt")  # a new run dir: the newest
    assert resume_path(OmegaConf.create({"resume": False}), runs / "c") is None
    with pytest.raises(ConfigError, match="no such checkpoint"):
        resume_path(OmegaConf.create({"resume": str(tmp_path / "none.ckpt")}), runs / "c")
    with pytest.raises(ConfigError, match="resume=true: no last.ckpt"):
        resume_path(cfg, tmp_path / "elsewhere" / "x")


# the training split shuffled by fex's own datamodule plumbing, and only part of it seen each epoch: which
# inputs an epoch sees decides how many new ones the reward bank pays for (issue 21: a resumed epoch that
# replayed the first epoch's order spent fewer queries than an uninterrupted run)
SHUFFLED = ["data._target_=tests.synth.ShuffledImagesData", f"trainer.limit_train_batches={STEPS}"]


@pytest.mark.slow
def test_kill_9_then_resume_continues_with_the_same_query_count(tmp_path):
    """Whatever the objective (fresh masks every step, or a reward bank filled over several epochs),
    killed + resumed spends exactly the queries of one uninterrupted run: the resumed epochs see the
    inputs an uninterrupted run's epochs see."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, "train.py", *ARGS, *SHUFFLED, f"hydra.run.dir={tmp_path / 'ref'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    uninterrupted = torch.load(tmp_path / "ref" / "checkpoints" / "last.ckpt", weights_only=True)
    expected = uninterrupted["fex"]["train_queries"]

    run = tmp_path / "run"
    cmd = [sys.executable, "train.py", *ARGS, *SHUFFLED, "+target.model.delay=0.1", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if last.is_file() and torch.load(last, weights_only=True, map_location="cpu").get("epoch", -1) >= 1:
                break
        except Exception:  # noqa: BLE001 - caught mid-write: look again
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "explainer.ckpt").exists(), "training finished before it could be killed"
    killed = torch.load(last, weights_only=True, map_location="cpu")
    assert 0 < killed["fex"]["train_queries"] < expected and killed["global_step"] < uninterrupted["global_step"]

    res = subprocess.run(cmd + ["resume=true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {last}" in res.stdout
    assert (run / "explainer.ckpt").is_file()  # the best checkpoint, as after any run
    final = torch.load(last, weights_only=True, map_location="cpu")
    assert final["fex"]["train_queries"] == expected  # as if never interrupted
    assert final["global_step"] == uninterrupted["global_step"] == EPOCHS * STEPS
    assert f"{expected} training queries" in res.stdout
    assert "fex_reward_bank" not in torch.load(run / "explainer.ckpt", weights_only=True)  # training state only
