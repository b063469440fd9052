"""Installed, not only checked out: `pip install .` into a fresh venv, then from a directory outside
the repo the console scripts run the packaged Hydra configs, and a checkpoint is all evaluate and
explain need."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT


def sh(cmd, cwd, env=None, timeout=600):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-1500:]}\n{res.stderr[-2500:]}"
    return res


@pytest.mark.slow
def test_pip_install_then_console_scripts_from_anywhere(tmp_path):
    src, venv, work = tmp_path / "src", tmp_path / "venv", tmp_path / "elsewhere"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:  # a clean copy of the checkout (no build/ or egg-info left in the repo)
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    sh([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path)  # pip, setuptools: the system's
    sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
       tmp_path)
    work.mkdir()
    (work / "pkgs").mkdir()
    (work / "pkgs" / "tests").symlink_to(ROOT / "tests")  # the synthetic data and target of tests/synth.py only
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PYTHONPATH": str(work / "pkgs"), "OMP_NUM_THREADS": "1", "FEX_OUTPUT": str(work / "outputs")})
    bin_ = venv / "bin"

    help_ = sh([str(bin_ / "fex-train"), "--help"], work, env).stdout
    assert "== Configuration groups ==" in help_
    for group in ("data:", "target:", "masker:", "policy:", "objective:", "experiment:"):
        assert group in help_, group
    assert "mnist_cnn" in help_ and "text_rt" in help_

    run = work / "run"
    sh([str(bin_ / "fex-train"), f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear",
        "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false", "gallery_size=2",
        "val_auc_examples=4", "masker.grid=[4,4]", "policy.backbone.width=4", "policy.backbone.depth=1",
        f"hydra.run.dir={run}"], work, env)
    ckpt = run / "explainer.ckpt"
    sources = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    main = next(s.path for s in sources if s.provider == "main")
    assert main.startswith(str(venv)) and main.endswith("fex/conf"), main  # the venv's fex and its packaged configs
    assert ckpt.is_file() and (run / "heatmaps.png").is_file()
    # nothing but the checkpoint: its data and target configs are inside
    synth = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear"]  # not fex's own
    sh([str(bin_ / "fex-evaluate"), *synth, f"checkpoint={ckpt}", "method=[fex,random]", "compare.num_examples=4",
        "attribution.score=false", f"hydra.run.dir={work / 'eval'}"], work, env)
    saved = json.loads((work / "eval" / "metrics.json").read_text())
    assert saved["attribution/rows"] == 40 and {r["method"] for r in saved["methods"]} == {"fex", "random"}
    from PIL import Image

    (work / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(work / "imgs" / "a.png")
    sh([str(bin_ / "fex-explain"), *synth, f"checkpoint={ckpt}", "input=imgs", "output_dir=expl"], work, env)
    assert (work / "expl" / "a.heatmap.png").is_file()
    assert len(json.loads((work / "expl" / "scores.json").read_text())["explained"][0]["scores"]) == 16
