"""Attribution shards: a Lightning prediction writer that is atomic, resumable and DDP-safe.

Each predicted batch becomes one ``.npz`` shard named by the smallest dataset index it
holds (``shard-000001234.npz``), with arrays ``index`` [B], ``scores`` [B, F], ``target``
[B] (the black box's prediction), ``probability`` [B] (its probability), ``valid`` [B, F],
``seconds`` [B] (explanation time per row), ``peak_mem_mib`` [B] (and optionally ``attributions``). Shards are written to a temporary
file and renamed (``os.replace``), so a killed run leaves either a whole shard or none.

Resuming: :func:`finished_indices` reads the indices already on disk and the evaluate
task predicts only the rest. Multi-process: Lightning hands each rank a disjoint slice of a
predict loader's rows without the padding duplicates that ``DistributedSampler`` adds
(``UnrepeatedDistributedSamplerWrapper``), so the union of all ranks' shards is every row exactly once.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from fex.errors import DataError
from fex.io import atomic_write

SHARD_GLOB = "shard-*.npz"


def shard_path(directory: str | os.PathLike, index: np.ndarray) -> Path:
    return Path(directory) / f"shard-{int(np.min(index)):09d}.npz"


def write_shard(directory: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write one shard atomically (tmp file in the same directory, fsync, rename)."""
    path = shard_path(directory, arrays["index"])
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return path


def shard_files(directory: str | os.PathLike) -> list[str]:
    return sorted(glob.glob(os.path.join(os.fspath(directory), SHARD_GLOB)))


def clean_tmp(directory: str | os.PathLike) -> int:
    """Remove temporary files a killed run left behind; returns how many."""
    files = glob.glob(os.path.join(os.fspath(directory), ".shard-*.tmp"))
    for f in files:
        os.remove(f)
    return len(files)


def finished_indices(directory: str | os.PathLike) -> set[int]:
    done: set[int] = set()
    for f in shard_files(directory):
        with np.load(f) as z:
            done.update(int(i) for i in z["index"])
    return done


def read_shards(directory: str | os.PathLike, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All shards concatenated and sorted by index; raises :class:`DataError` on duplicate rows."""
    parts: list[dict[str, np.ndarray]] = []
    for f in shard_files(directory):
        with np.load(f) as z:
            wanted = set(keys or z.files) | {"index"}
            parts.append({k: z[k] for k in z.files if k in wanted})
    if not parts:
        return {}
    width = max(p["scores"].shape[1] for p in parts) if "scores" in parts[0] else None
    out = {}
    common = set.intersection(*(set(p) for p in parts))  # shards of an older run may lack newer fields
    for k in [k for k in parts[0] if k in common]:
        arrs = [p[k] for p in parts]
        if width is not None and k in ("scores", "valid") and any(a.shape[1] != width for a in arrs):
            arrs = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrs]  # variable-length features
        out[k] = np.concatenate(arrs) if arrs[0].ndim else np.stack(arrs)
    order = np.argsort(out["index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    dup = out["index"][1:][np.diff(out["index"]) == 0]
    if dup.size:
        raise DataError(f"attribution shards in {directory} hold duplicate rows (e.g. index {int(dup[0])})")
    return out


class AttributionWriter(BasePredictionWriter):
    """Writes ``predict_step`` outputs (``fex.module.ExplainerModule``) as shards under ``output_dir``.

    Args:
        output_dir: shard directory (created).
        keys: prediction fields to store besides ``index``.
        save_attributions: also store input-shaped ``attributions`` (large; scores suffice
            to rebuild them with ``masker.expand``).
    """

    def __init__(self, output_dir: str | os.PathLike,
                 keys: Sequence[str] = ("scores", "target", "probability", "valid", "seconds", "peak_mem_mib"),
                 save_attributions: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.keys = list(keys) + (["attributions"] if save_attributions else [])
        self.written = 0

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict, batch_indices: Any, batch: Any,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        if not prediction:
            return
        index = prediction.get("index")
        if index is None:
            raise DataError("the dataset yields no row index (batches must be (x, y, index)); cannot key shards")
        arrays = {"index": torch.as_tensor(index).cpu().numpy().astype(np.int64)}
        for k in self.keys:
            v = prediction.get(k)
            if v is not None:
                arrays[k] = v.detach().cpu().numpy()
        write_shard(self.output_dir, arrays)
        self.written += len(arrays["index"])
