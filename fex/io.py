"""Files fex writes appear whole or not at all: write to a temporary file beside the target,
fsync, then rename over it. A failure (full disk, kill) leaves the old file (or nothing) and no
temporary behind, and a disk error names the file it was writing."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from fex.errors import OutputError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """``with atomic_write(p) as fh: fh.write(...)``: ``p`` is replaced only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):  # name the file, not its temporary
            exc.filename = str(path)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=float))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` whole or not at all: serialised in memory first (torch's zip writer turns a full disk
    into a RuntimeError that names no file), then one atomic write."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getbuffer())


def write_npz(path: str | os.PathLike, **arrays: Any) -> Path:

    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, chunk: int = 1 << 20) -> Path:
    """Copy ``src`` to ``dst`` atomically (``dst`` appears whole or not at all)."""
    with open(src, "rb") as fin, atomic_write(dst, "wb") as fout:
        while block := fin.read(chunk):
            fout.write(block)
    return Path(dst)


MIN_FREE_BYTES = 1 << 20


def check_writable(directory: str | os.PathLike, what: str = "output directory", min_free: int | None = None) -> Path:
    """Fail now, with one line, if ``directory`` could not be created or written (read-only, no
    permission, full disk, a dangling symlink on the way), instead of after an hour of work. Creates nothing that stays: the
    probe goes into the nearest existing ancestor (or the directory itself) and is removed."""
    directory = Path(os.path.expanduser(os.fspath(directory))).absolute()
    probe_dir = directory
    while not probe_dir.exists():
        if probe_dir.is_symlink():  # mkdir would fail on it later, after the work
            raise OutputError(f"{what} {directory}: {probe_dir} is a symlink to {os.readlink(probe_dir)}, "
                              "which does not exist")
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{what} {directory}: {probe_dir} is a file, not a directory")
    probe = probe_dir / f".fex-write-test.{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"{what} {directory} is not writable ({exc.strerror or exc} at {probe_dir})") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    st = os.statvfs(probe_dir)
    free = st.f_bavail * st.f_frsize
    if free < (MIN_FREE_BYTES if min_free is None else min_free):
        raise OutputError(f"{what} {directory}: no space left on its disk ({free} bytes free at {probe_dir})")
    return directory


def remove_empty_dirs(directory: str | os.PathLike, bookkeeping: tuple[str, ...] = ()) -> bool:
    """Remove ``directory`` if it holds no files except top-level ``bookkeeping`` entries (glob
    patterns, e.g. Hydra's ``.hydra`` folder and job log) and empty folders: what a run that failed
    before writing anything leaves. Returns whether it was removed. A directory with any other file
    is never touched."""
    import fnmatch
    import shutil

    directory = Path(directory)
    if not directory.is_dir():
        return False

    def kept(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pat) for pat in bookkeeping)

    for root, dirs, files in os.walk(directory):
        if Path(root) == directory:
            dirs[:] = [d for d in dirs if not kept(d)]
            if any(not kept(f) for f in files):
                return False
        elif files:
            return False
    shutil.rmtree(directory, ignore_errors=True)
    return not directory.exists()


def output_error_from(exc: OSError, what: str = "cannot write", where: str | os.PathLike | None = None) -> OutputError:
    """A disk error (full, read-only, no permission) as one line naming the file (or, when the error
    names none, ``where``: the directory being written)."""
    name = exc.filename or (f"in {where}" if where else "")
    return OutputError(f"{what}{' ' + str(name) if name else ''}: {exc.strerror or exc}")


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written like every other fex file: serialised in memory, then
    tmp + fsync + rename in the same directory; on failure (full disk, kill) the old checkpoint
    (or none) stays and the temporary is removed."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        save_torch(path, checkpoint)


def atomic_checkpoints(trainer: Any) -> Any:
    """Make ``trainer`` write its checkpoints (ModelCheckpoint, ``save_checkpoint``) atomically,
    unless the user configured their own CheckpointIO."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer
