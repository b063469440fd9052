"""Run-directory manifests: a resumable job refuses to mix its rows with another job's.

``evaluate`` keys attribution shards by dataset index, so rerunning into the same
``hydra.run.dir`` resumes. That is only right if the rerun is the *same* job: same
explainer checkpoint (by content hash), same target, same split, same data and methods.
:func:`check_or_write` writes ``manifest.json`` before the first shard and, on a rerun,
refuses with one line naming the first difference.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fex.errors import DataError
from fex.io import write_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# data-config keys that change how rows are loaded, not which rows or their values
DATA_KEYS_IGNORED = ("batch_size", "num_workers", "pin_memory", "persistent_workers")


class RunDirMismatch(DataError):
    """A run directory holds the results of a different job."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_manifest(checkpoint: str | os.PathLike, split: str, data: dict | None = None, methods: dict | None = None,
                  target: dict | None = None, **extra: Any) -> dict:
    """What identifies a run's results. ``target`` is the black box's fingerprint; as when a checkpoint
    is checked against its target, its identity is its name, output kind and weights hash (its other
    config, e.g. a batch size or a test's artificial delay, does not change the rows)."""
    data = {k: v for k, v in (data or {}).items() if k not in DATA_KEYS_IGNORED}
    target = {k: (target or {}).get(k) for k in ("name", "output", "weights_sha256")} if target else {}
    m = {"version": MANIFEST_VERSION, "checkpoint_sha256": file_sha256(checkpoint), "split": str(split),
         "data": data, "methods": methods or {}, "target": target or {}}
    m.update(extra)
    return json.loads(json.dumps(m, default=str))  # plain JSON: compares equal to what is read back


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    if len(s) == 64 and all(c in "0123456789abcdef" for c in s):
        return s[:12] + "…"  # a hash
    return s if len(s) <= 60 else s[:57] + "…"


def first_difference(old: Any, new: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first difference, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            d = first_difference(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    return None if old == new else (where or "manifest", old, new)


def describe(key: str, old: Any, new: Any) -> str:
    if key == "checkpoint_sha256":
        return f"checkpoint {_short(old)}, this run uses {_short(new)}"
    return f"{key}={_short(old)}, this run uses {key}={_short(new)}"


def check_or_write(run_dir: str | os.PathLike, manifest: dict, results: str | os.PathLike | None = None) -> Path:
    """Write ``run_dir/manifest.json``, or check the one there equals ``manifest``.

    ``results``: the directory whose files a rerun would reuse (e.g. the shard folder); results
    there without a manifest come from an unknown job and are refused too.
    """
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirMismatch(f"run dir {run_dir} has an unreadable {MANIFEST} ({type(exc).__name__}); "
                                 "use another hydra.run.dir") from exc
        diff = first_difference(old, manifest)
        if diff:
            raise RunDirMismatch(f"run dir {run_dir} was made with {describe(*diff)}; use another hydra.run.dir "
                                 "(or delete the old one)")
        return path
    if results is not None and Path(results).is_dir() and any(Path(results).iterdir()):
        raise RunDirMismatch(f"run dir {run_dir} holds results ({Path(results).name}/) but no {MANIFEST}, so they "
                             "cannot be matched to this run; use another hydra.run.dir")
    return write_json(path, manifest)
