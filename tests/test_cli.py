"""The entry shims as a user runs them: sweeps, wandb offline, 2-process DDP, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST, ROOT


def run(args, tmp_path, env_extra=None, timeout=1200):
    env = {**os.environ, "FEX_OUTPUT": str(tmp_path), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_multirun_sweep_over_num_samples(tmp_path, mnist_target):  # fixture: target cached first
    res = run(["-m", "objective.num_samples=4,6", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpts = sorted(tmp_path.glob("multirun/*/*/explainer.ckpt"))
    assert len(ckpts) == 2
    import torch

    ks = sorted(torch.load(c, weights_only=True)["fex"]["config"]["objective"]["num_samples"] for c in ckpts)
    assert ks == [4, 6]


@pytest.mark.slow
def test_wandb_logger_offline_without_account(tmp_path, mnist_target):
    pytest.importorskip("wandb")
    res = run(["logger=wandb", *[o for o in FAST if not o.startswith("logger")], "hydra.run.dir=" + str(tmp_path / "run")],
              tmp_path, {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert list((tmp_path / "run").glob("**/offline-run-*")), "no offline wandb run written"
    assert (tmp_path / "run" / "logs").is_dir()  # the CSV logger runs beside it


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, mnist_target):  # both ranks would otherwise train it
    res = run(["trainer=ddp", *FAST, "hydra.run.dir=" + str(tmp_path / "run")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run" / "explainer.ckpt").is_file()
    assert "fex: explainer" in res.stdout and res.stdout.count("fex: explainer") == 1  # rank 0 reports once
    assert "world_size=2" in res.stderr or "distributed_backend=gloo" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["target=callable", "target.model.path=helpers.no_such_function"], "error: cannot build target"),
    (["target=callable", "target.model.path=helpers.wrong_shape_callable", "data.limit=32"],
     "error: target returned shape"),
    (["masker.grid=[40,40]"], "error: cannot build masker fex.maskers.image.PatchMasker: patch grid 40x40 does not fit a 28x28 image"),
])
def test_bad_input_exits_with_one_line_error(tmp_path, mnist_target, args, message):
    res = run([*args, *FAST], tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in res.stderr
    assert not list(Path(tmp_path).glob("**/explainer.ckpt"))  # nothing half-written


@pytest.mark.parametrize("cmd, args, message", [
    ("train.py", ["trainer.max_epochs=abc"], "error: trainer.max_epochs must be an integer, got 'abc'"),
    ("train.py", ["optimizer.lr=fast"], "error: optimizer.lr must be a number, got 'fast'"),
    ("fex-tda", ["foo=1"], "error: Could not override 'foo'."),
])
def test_wrong_value_exits_with_one_line_and_no_run_dir(tmp_path, cmd, args, message):
    """A value of the wrong type for the config's own (issue 21): refused before Hydra makes a run dir,
    not a traceback after it; fex-tda's unknown key gets the same one line as the other commands."""
    run_dir = tmp_path / "run"
    prog = [str(ROOT / "train.py")] if cmd == "train.py" else ["-c", "from fex.cli import tda_main; tda_main()"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    res = subprocess.run([sys.executable, *prog, *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr[-2000:]
    assert not run_dir.exists()
