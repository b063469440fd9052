"""The demanding user's table (issue 11): each bad input, crafted file or broken disk ends in a one-line
error (or an explicit, logged conversion), never a silent wrong result, a half-written file or a side effect.

One row per case; the dedicated tests (test_registry, test_manifest, test_output_kinds, test_disk,
test_inputs) go deeper."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fex.blackbox import BlackBox
from fex.errors import CheckpointError, InputError, OutputError, TargetError, TargetMismatchError
from fex.explainer import CKPT_VERSION
from fex.module import ExplainerModule
from tests.conftest import ROOT
from tests.helpers import planted_blackbox, small_explainer
from tests.test_registry import good_ckpt


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def load_crafted(tmp_path, edit, **kw):
    ckpt = copy.deepcopy(good_ckpt())
    edit(ckpt)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return ExplainerModule.from_checkpoint(path, **kw)


def crafted_masker(masker_of_victim):
    def case(tmp_path):
        victim = tmp_path / "victim"
        with pytest.raises(CheckpointError) as e:
            load_crafted(tmp_path, lambda c: c["fex"]["config"].update(masker=masker_of_victim(victim)),
                         target=planted_blackbox())
        one_line(e)
        assert not victim.exists(), "loading a checkpoint wrote a file"
    return case


def bad_metadata(edit, exc, match):
    def case(tmp_path):
        with pytest.raises(exc, match=match) as e:
            load_crafted(tmp_path, edit, target=planted_blackbox())
        one_line(e)
    return case


def manifest_mismatch(old, new, match):
    def case(tmp_path):
        from fex.manifest import RunDirMismatch, check_or_write, make_manifest

        a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
        a.write_bytes(b"explainer a")
        b.write_bytes(b"explainer b")
        paths = {"a": a, "b": b}
        check_or_write(tmp_path, make_manifest(paths[old[0]], old[1]))
        with pytest.raises(RunDirMismatch, match=match) as e:
            check_or_write(tmp_path, make_manifest(paths[new[0]], new[1]))
        one_line(e)
    return case


def wrong_kind(declared, returns, match):
    def case(tmp_path):
        with pytest.raises(TargetError, match=match) as e:
            BlackBox(lambda x: returns(torch.randn(x.shape[0], 3)), output=declared)(torch.zeros(4, 2))
        one_line(e)
    return case


def five_class_target(tmp_path):
    path = tmp_path / "two.ckpt"
    torch.save(good_ckpt(), path)
    with pytest.raises(TargetError, match="5 classes") as e:
        ex = ExplainerModule.from_checkpoint(path, target=lambda x: torch.zeros(x.shape[0], 5), allow_target_mismatch=True)
        ex.explain(torch.rand(2, 1, 16, 16))
    one_line(e)


def image_case(make, shape, match=None, check=None, **settings):
    def case(tmp_path):
        from fex.inputs import load_image

        path = tmp_path / "img.png"
        make().save(path)
        if match:
            with pytest.raises(InputError, match=match) as e:
                load_image(path, shape, **settings)
            one_line(e)
        else:
            check(load_image(path, shape, **settings))
    return case


def explain_case(x, match=None, target=None):
    def case(tmp_path):
        ex = small_explainer(blackbox=planted_blackbox())
        ex.masker.value_range = (0.0, 1.0)
        if match:
            with pytest.raises(InputError, match=match) as e:
                ex.explain(x(), target=target)
            one_line(e)
        else:
            x64 = x()
            torch.testing.assert_close(ex.feature_scores(x64), ex.feature_scores(x64.float()))
    return case


def text_lines(tmp_path):
    from fex.inputs import read_text_lines

    (tmp_path / "t.txt").write_text("one\n\ntwo\n")
    assert read_text_lines(tmp_path / "t.txt") == [(1, "one"), (3, "two")]


def readonly_output(tmp_path):
    from fex.io import check_writable
    from tests.test_disk import tmpfs

    with tmpfs(tmp_path, "64k", readonly=True) as ro:
        with pytest.raises(OutputError, match="not writable") as e:
            check_writable(ro / "out")
        one_line(e)


def full_disk(tmp_path):
    from fex.io import AtomicCheckpointIO
    from tests.test_disk import leftovers, tmpfs

    with tmpfs(tmp_path, "16k") as mnt:
        with pytest.raises(OSError):
            AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(20_000)}, mnt / "best.ckpt")
        assert leftovers(mnt) == []


def shim(script, args, match):
    def case(tmp_path):
        r = subprocess.run([sys.executable, script, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("Seed set")]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
        assert match in lines[0]
        assert not (tmp_path / "run").exists()
    return case


def corrupt_target_cache(tmp_path):
    from fex.targets.mnist_cnn import cache_path, pretrained_mnist_cnn

    bad = cache_path(str(tmp_path), 0, 1, 2e-3, 500, 1000)
    bad.write_bytes(b"truncated")
    with pytest.raises(TargetError, match="delete it") as e:
        pretrained_mnist_cnn(cache_dir=str(tmp_path), epochs=1)
    assert str(bad) in one_line(e)


def cache_name_has_settings(tmp_path):
    from fex.targets.mnist_cnn import cache_path

    names = {cache_path("/c", 0, e, lr, 500, 1000).name for e in (1, 12) for lr in (1e-3, 2e-3)}
    assert len(names) == 4  # a 1-epoch retrain has its own file


CASES = {
    # 1. a checkpoint is data
    "ckpt masker _target_ pathlib.Path.write_text": crafted_masker(
        lambda v: {"_target_": "pathlib.Path.write_text", "self": str(v), "data": "x"}),
    "ckpt masker _target_ builtins.open (write mode)": crafted_masker(
        lambda v: {"_target_": "builtins.open", "file": str(v), "mode": "w"}),
    "ckpt masker _target_ torch.save": crafted_masker(lambda v: {"_target_": "torch.save", "obj": 1, "f": str(v)}),
    "ckpt masker foreign class": crafted_masker(lambda v: {"_target_": "argparse.ArgumentParser"}),
    "ckpt nested _target_ inside an argument": crafted_masker(
        lambda v: {"_target_": "fex.maskers.image.PatchMasker", "grid": [4, 4],
                   "fill": {"_target_": "pathlib.Path.write_text", "self": str(v), "data": "x"}}),
    # 2. run directories carry a manifest
    "resume with another checkpoint": manifest_mismatch(("a", "test"), ("b", "test"), "made with checkpoint"),
    "resume with split=val into a test-split dir": manifest_mismatch(("a", "test"), ("a", "val"), "split=test"),
    # 3. output kinds and class count
    "probs declared, logits returned": wrong_kind("probs", lambda z: z * 3, "not probabilities"),
    "log_probs declared, logits returned": wrong_kind("log_probs", lambda z: z * 3, "not log-probabilities"),
    "log_probs declared, probs returned": wrong_kind("log_probs", lambda z: z.softmax(-1), "not log-probabilities"),
    "5-class target, 10-class explainer, allow_target_mismatch": five_class_target,
    # 4. disks
    "read-only output dir": readonly_output,
    "disk fills during a Lightning checkpoint": full_disk,
    # 5. input conversions
    "16-bit PNG": image_case(lambda: Image.fromarray(np.full((4, 4), 30000, np.uint16)), (1, 4, 4),
                             check=lambda x: np.testing.assert_allclose(x.numpy(), 30000 / 65535, atol=1e-6)),
    "RGB image for a grey explainer": image_case(lambda: Image.new("RGB", (4, 4)), (1, 4, 4), "channels=convert"),
    "other-sized image": image_case(lambda: Image.new("L", (8, 8)), (1, 4, 4), "input_size=resize"),
    "pixels scaled 0-255": explain_case(lambda: torch.rand(2, 1, 16, 16) * 255, "look 0-255"),
    "float64 tensor": explain_case(lambda: torch.rand(2, 1, 16, 16, dtype=torch.float64)),
    "target=2.7": explain_case(lambda: torch.rand(2, 1, 16, 16), "whole class indices", target=2.7),
    "text file with blank lines": text_lines,
    # 6. checkpoint metadata
    "newer checkpoint format": bad_metadata(lambda c: c["fex"].update(version=CKPT_VERSION + 1), CheckpointError,
                                            "upgrade fex"),
    "missing fingerprint": bad_metadata(lambda c: c["fex"].update(target=None), TargetMismatchError,
                                        "no target fingerprint"),
    "missing fex entry": bad_metadata(lambda c: c.pop("fex"), CheckpointError, "not an fex explainer checkpoint"),
    "malformed fex entry": bad_metadata(lambda c: c.update(fex="v1"), CheckpointError, "'fex' entry is str"),
    "stored grid disagrees with the policy": bad_metadata(
        lambda c: c["fex"]["config"]["masker"].update(grid=[7, 7]), CheckpointError, "49 features but the policy was trained on 16"),
    # 7. exit codes and messages
    "unknown override foo=1": shim("train.py", ["foo=1"], "Could not override 'foo'"),
    "evaluate without checkpoint": shim("evaluate.py", [], "missing mandatory value: checkpoint"),
    "evaluate with a missing checkpoint file": shim("evaluate.py", ["checkpoint=/nonexistent/x.ckpt"],
                                                    "checkpoint not found: /nonexistent/x.ckpt"),
    "corrupt target cache": corrupt_target_cache,
    "target cache named by its settings": cache_name_has_settings,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path):
    CASES[case](tmp_path)
