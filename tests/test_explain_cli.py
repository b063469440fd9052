"""fex-explain on user files: heatmaps + scores out, unreadable files reported by name and skipped."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fex.cli import explain_main
from fex.config import build_blackbox
from tests.conftest import ROOT, compose
from tests.synth import make_checkpoint

SYNTH = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]", "data=synth", "target=linear"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = compose("explain", SYNTH + ["checkpoint=x", "input=x"])
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "explainer.ckpt", build_blackbox(cfg.target, 2))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(d / "b.jpg")  # resized, greyed
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(d / "c.jpeg")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (d / "notes.txt").write_text("hello")
    return d


def test_folder_of_images(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = explain_main(SYNTH + [f"checkpoint={ckpt}", f"input={folder}", f"output_dir={out}",
                                 "input_size=resize", "channels=convert"])  # b.jpg is 40x30 RGB: asked for
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a.heatmap.png", "b.heatmap.png", "c.heatmap.png"]
    res = json.loads((out / "scores.json").read_text())
    assert [r["file"] for r in res["explained"]] == ["a.png", "b.jpg", "c.jpeg"]
    assert all(len(r["scores"]) == 49 and r["target"] in (0, 1) for r in res["explained"])
    assert sorted(s["file"] for s in res["skipped"]) == ["broken.png", "notes.txt"]
    assert res["notes"] == ["converted 3 channels (RGB) images to 1 channel (channels=convert) (1 input)",
                            "resized 30x40 images to 28x28 (input_size=resize) (1 input)"]
    err = capsys.readouterr().err
    assert "skipped broken.png" in err and "skipped notes.txt" in err
    npz = np.load(out / "scores.npz")
    assert npz["names"].tolist() == ["a.png", "b.jpg", "c.jpeg"] and npz["scores_0"].shape == (49,)
    assert not list(out.glob(".*"))


def test_conversions_are_refused_unless_asked(ckpt, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert explain_main(SYNTH + [f"checkpoint={ckpt}", f"input={folder}", f"output_dir={out}"]) == 0
    res = json.loads((out / "scores.json").read_text())
    assert [r["file"] for r in res["explained"]] == ["a.png", "c.jpeg"] and res["notes"] == []
    why = {s["file"]: s["reason"] for s in res["skipped"]}
    assert "has 3 channels (RGB); the explainer expects 1; set channels=convert" in why["b.jpg"]


def test_text_file_with_an_image_explainer_is_a_clear_error(ckpt, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_text("a great movie\n")
    assert explain_main(SYNTH + [f"checkpoint={ckpt}", f"input={f}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "explains images" in capsys.readouterr().err


def test_missing_inputs_are_one_line_errors(ckpt, tmp_path, capsys):
    assert explain_main(SYNTH + [f"checkpoint={ckpt}", f"input={tmp_path / 'none'}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: input not found: {tmp_path / 'none'}"
    (tmp_path / "img").mkdir()
    assert explain_main(SYNTH + [f"checkpoint={tmp_path / 'x.ckpt'}", f"input={tmp_path / 'img'}"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_console_command_exit_code(tmp_path):
    code = "import sys; from fex.cli import explain_main; sys.argv=['fex-explain','checkpoint=/nope.ckpt','input=/', *sys.argv[1:]] ; explain_main()"
    res = subprocess.run([sys.executable, "-c", code, *SYNTH], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "error: checkpoint not found: /nope.ckpt"
