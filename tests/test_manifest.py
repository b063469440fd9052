"""A run directory belongs to one job: resuming with another checkpoint/split/data is refused (issue 11, item 2)."""
from __future__ import annotations

import json

import pytest

from fex.manifest import MANIFEST, RunDirMismatch, check_or_write, first_difference, make_manifest
from fex.config import build_blackbox
from fex.writer import shard_files
from tests.conftest import compose
from tests.synth import make_checkpoint
from tests.test_evaluate import SYNTH, run_eval


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    bb = build_blackbox(compose("evaluate", SYNTH + ["checkpoint=x"], output_dir="x").target, 2)
    return make_checkpoint(d / "a.ckpt", bb, seed=0), make_checkpoint(d / "b.ckpt", bb, seed=1)


def test_manifest_written_before_shards_and_same_job_resumes(ckpts, tmp_path):
    run_eval(ckpts[0], tmp_path, ["method=[]"])
    m = json.loads((tmp_path / MANIFEST).read_text())
    assert m["split"] == "test" and len(m["checkpoint_sha256"]) == 64 and m["data"]["n"] == 40
    assert m["target"]["weights_sha256"]
    metrics, _ = run_eval(ckpts[0], tmp_path, ["method=[]", "data.batch_size=4"])  # loader settings may differ
    assert metrics["attribution/predicted"] == 0


@pytest.mark.parametrize("change,match", [
    ("checkpoint", r"was made with checkpoint [0-9a-f]{12}…, this run uses [0-9a-f]{12}…; use another hydra.run.dir"),
    ("data.n=30", r"was made with data.n=40, this run uses data.n=30"),
    ("method=[random]", r"methods.random=<absent>"),
])
def test_a_different_job_is_refused_and_the_dir_is_untouched(ckpts, tmp_path, change, match):
    run_eval(ckpts[0], tmp_path, ["method=[]"])
    before = {f: open(f, "rb").read() for f in shard_files(tmp_path / "attributions")}
    manifest = (tmp_path / MANIFEST).read_bytes()
    ckpt, extra = (ckpts[1], ["method=[]"]) if change == "checkpoint" else (ckpts[0], ["method=[]", change])
    if change.startswith("method"):
        extra = [change]
    with pytest.raises(RunDirMismatch, match=match) as e:
        run_eval(ckpt, tmp_path, extra)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    assert {f: open(f, "rb").read() for f in shard_files(tmp_path / "attributions")} == before
    assert (tmp_path / MANIFEST).read_bytes() == manifest


def test_results_without_a_manifest_are_refused(tmp_path):
    (tmp_path / "attributions").mkdir()
    (tmp_path / "attributions" / "shard-000000000.npz").write_bytes(b"old")
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(RunDirMismatch, match="no manifest.json"):
        check_or_write(tmp_path, make_manifest(ckpt, "test"), tmp_path / "attributions")


def test_split_difference_is_named(tmp_path):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"x")
    check_or_write(tmp_path, make_manifest(ckpt, "test"))
    with pytest.raises(RunDirMismatch, match="made with split=test, this run uses split=val"):
        check_or_write(tmp_path, make_manifest(ckpt, "val"))
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 1}}) is None
