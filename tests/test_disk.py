"""Full and read-only disks (issue 11, item 4): every file appears whole or not at all, Lightning
checkpoints included; unwritable outputs fail before any work; failed runs leave no empty dirs.

Uses tiny tmpfs mounts (root only); skipped with the reason where mounting is not permitted."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid

import pytest
import torch

import fex.io as fio
from fex.errors import OutputError


@contextlib.contextmanager
def tmpfs(base, size: str, readonly: bool = False):
    path = base / f"tmpfs-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path, "64k") as mnt:
        fio.write_json(mnt / "metrics.json", {"old": 1})
        with pytest.raises(OSError) as e:
            fio.write_bytes(mnt / "metrics.json", b"x" * 200_000)  # fills the disk mid-write
        assert e.value.errno == errno.ENOSPC
        assert (mnt / "metrics.json").read_text() == '{\n  "old": 1\n}'
        assert leftovers(mnt) == ["metrics.json"]  # no temporary behind
        with pytest.raises(OSError):
            fio.write_npz(mnt / "shard.npz", a=torch.zeros(100_000).numpy())
        assert leftovers(mnt) == ["metrics.json"]


def _fit_with_checkpoints(dirpath, epochs=1):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from tests.helpers import fit, planted_blackbox, small_explainer, synthetic_images  # noqa: F401

    module = small_explainer(blackbox=planted_blackbox())
    from torch.utils.data import DataLoader

    from fex.data.mnist import IndexedTensorDataset

    x = synthetic_images(32, 0)
    loader = DataLoader(IndexedTensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=16)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[ModelCheckpoint(dirpath=dirpath, filename="best", save_top_k=1, every_n_epochs=1)])
    fio.atomic_checkpoints(trainer)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_lightning_checkpoint_on_a_full_disk_is_whole_or_absent(tmp_path):
    with tmpfs(tmp_path, "24k") as mnt:  # a checkpoint of the small explainer is ~100 kB
        with pytest.raises(OSError) as e:
            _fit_with_checkpoints(mnt / "checkpoints")
        assert e.value.errno == errno.ENOSPC
        assert leftovers(mnt) == []  # no truncated best.ckpt, no .tmp


def test_lightning_checkpoint_overwrite_on_a_full_disk_keeps_the_old_one(tmp_path):
    from fex.module import ExplainerModule

    with tmpfs(tmp_path, "1m") as mnt:
        _fit_with_checkpoints(mnt / "checkpoints")
        best = mnt / "checkpoints" / "best.ckpt"
        before = best.read_bytes()
        # leave less room than one more checkpoint: the next save must fail and keep the old file whole
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        (mnt / "filler").write_bytes(b"\0" * max(0, free - len(before) // 2))
        trainer = _fit_with_checkpoints(tmp_path / "elsewhere")
        with pytest.raises(OSError):
            trainer.save_checkpoint(best)
        assert best.read_bytes() == before
        assert sorted(leftovers(mnt)) == ["checkpoints/best.ckpt", "filler"]
        ExplainerModule.from_checkpoint(best)  # still loads


def test_unwritable_output_is_refused_before_any_work(tmp_path):
    with tmpfs(tmp_path, "64k", readonly=True) as ro:
        with pytest.raises(OutputError, match="not writable .*Read-only file system") as e:
            fio.check_writable(ro / "run" / "deep")
        assert "\n" not in str(e.value)
    with tmpfs(tmp_path, "64k") as small:  # < 1 MiB free: a run would die on its first checkpoint
        with pytest.raises(OutputError, match="no space left"):
            fio.check_writable(small / "run")
        assert leftovers(small) == [] and not (small / "run").exists()


@pytest.mark.parametrize("task", ["train", "evaluate", "explain"])
def test_tasks_check_the_output_dir_first(tmp_path, task):
    from tests.conftest import compose

    with tmpfs(tmp_path, "64k", readonly=True) as ro:
        extra = {"train": [], "evaluate": ["checkpoint=/nonexistent.ckpt"],
                 "explain": ["checkpoint=/nonexistent.ckpt", f"input={tmp_path}"]}[task]
        cfg = compose(task, extra, output_dir=ro / "out")
        mod = __import__(f"fex.tasks.{task}", fromlist=[task])
        with pytest.raises(OutputError, match="not writable"):  # not CheckpointError: nothing else ran first
            getattr(mod, task)(cfg)


def test_training_that_fills_the_disk_ends_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys,
                                                                           mnist_target):
    from fex.launch import run
    from fex.tasks.train import train
    from tests.conftest import FAST, compose

    monkeypatch.setattr(fio, "MIN_FREE_BYTES", 4096)  # let the run start on a nearly full disk
    with tmpfs(tmp_path, "48k") as mnt:
        cfg = compose("train", FAST + ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"],
                      output_dir=mnt / "run")
        with pytest.raises(SystemExit) as e:
            run(train, cfg)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "No space left on device" in err[0], err
        assert leftovers(mnt) == [] and not (mnt / "run").exists()  # no half-written file, no empty dir


def test_remove_empty_dirs_keeps_anything_with_a_file(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("a: 1")
    (run / "train.log").write_text("")
    (run / "checkpoints").mkdir()
    keep = tmp_path / "keep"
    (keep / "attributions").mkdir(parents=True)
    (keep / "attributions" / "shard-000000000.npz").write_bytes(b"x")
    assert not fio.remove_empty_dirs(keep, (".hydra", "*.log")) and keep.exists()
    assert fio.remove_empty_dirs(run, (".hydra", "*.log")) and not run.exists()


def test_failed_run_removes_only_the_dir_it_created(tmp_path, capsys):
    from fex.errors import DataError
    from fex.launch import run

    def failing(cfg):
        out = tmp_path / cfg["name"]
        (out / ".hydra").mkdir(parents=True, exist_ok=True)  # what Hydra writes before the task
        (out / ".hydra" / "config.yaml").write_text("x: 1")
        (out / "attributions").mkdir()
        raise DataError("bad data")

    for name, existed in (("new", False), ("mine", True)):
        if existed:
            (tmp_path / name).mkdir()
        with pytest.raises(SystemExit) as e:
            run(failing, {"output_dir": str(tmp_path / name), "name": name})
        assert e.value.code == 2 and capsys.readouterr().err == "error: bad data\n"
        assert (tmp_path / name).exists() == existed  # a directory the user made is left alone


@pytest.mark.parametrize("room", [1.0, 2.0])
def test_full_disk_while_writing_the_explainer_is_whole_or_nothing(tmp_path, monkeypatch, capsys, mnist_target, room):
    """The disk fills at the very end of training, while the explainer checkpoint is written (issue 21).
    The disk holds ``room`` times last.ckpt (the training checkpoint, with its reward bank) in last.ckpt
    and the run's top-level checkpoint files: 1.0 leaves no room for the explainer; 2.0 for one more copy
    of last.ckpt, not for a copy and a stripped rewrite. Either the run ends with one line naming the file and no explainer checkpoint, or
    with an explainer checkpoint without the bank; never one holding the bank."""
    from fex.launch import run
    from fex.module import BANK_KEY
    from fex.tasks.train import train
    from tests.conftest import FAST, compose

    out = tmp_path / "run"
    real_fsync = os.fsync

    def fsync(fd):  # ENOSPC once the checkpoint files would exceed the room (a full disk reports it here too)
        name = os.readlink(f"/proc/self/fd/{fd}")
        last = out / "checkpoints" / "last.ckpt"
        if name.startswith(str(out)) and ".ckpt" in name and last.is_file():
            used = last.stat().st_size + sum(p.stat().st_size for p in out.glob("*.ckpt*"))  # with the temporary
            if used > room * last.stat().st_size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = compose("train", FAST + ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"], output_dir=out)
    try:
        run(train, cfg)
        failed = False
    except SystemExit as e:
        assert e.code == 2
        failed = True
    assert BANK_KEY in torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # the case in question
    explainer = out / "explainer.ckpt"
    if failed:
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: cannot write {explainer}: No space left on device"], err
        assert not explainer.exists()
    else:
        assert BANK_KEY not in torch.load(explainer, weights_only=True)
    assert [p.name for p in out.rglob(".*.tmp")] == []
    assert failed == (room == 1.0)


@pytest.mark.parametrize("task", ["train", "evaluate", "explain"])
def test_dangling_symlink_as_output_dir_is_refused_first(tmp_path, task):
    """``output_dir`` (or a folder above it) is a symlink to nothing: the directory cannot be made, so the
    job is refused before any work, not after explaining every input (issue 21)."""
    from tests.conftest import compose

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    for out in (link, link / "run"):
        with pytest.raises(OutputError, match=f"{link} is a symlink to .*gone, which does not exist"):
            fio.check_writable(out)
    extra = {"train": [], "evaluate": ["checkpoint=/nonexistent.ckpt"],
             "explain": ["checkpoint=/nonexistent.ckpt", f"input={tmp_path}"]}[task]
    mod = __import__(f"fex.tasks.{task}", fromlist=[task])
    with pytest.raises(OutputError, match="which does not exist"):  # not CheckpointError: nothing else ran first
        getattr(mod, task)(compose(task, extra, output_dir=link))
