"""evaluate(cfg): batch attribution of a dataset split, then the explainer against baselines.

1. Load the explainer (target fingerprint checked) and run ``Trainer.predict`` over
   ``cfg.split`` with :class:`fex.writer.AttributionWriter`: shards keyed by dataset index
   under ``<output_dir>/attributions``; rows already on disk are skipped (resume), ranks get
   disjoint rows (DDP). Rank 0 then checks every row is there once and writes
   ``attributions.npz``.
2. Every configured method explains the same ``compare.num_examples`` inputs on the same
   features; cost and faithfulness go to ``metrics.json``, ``table.md`` (also printed),
   ``curves.png``, ``quality_vs_time.png`` and ``gallery.png``.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.data._utils.collate import default_collate

from fex import compare
from fex import metrics as M
from fex.baselines import Fex
from fex.errors import DataError, FexError
from fex.explainer import load_explainer, read_checkpoint
from fex.io import atomic_write, check_writable, write_json, write_text
from fex.manifest import check_or_write, make_manifest
from fex.module import ExplainerModule
from fex.render import plots
from fex.tasks.common import build_blackbox, build_data, to_dict, with_checkpoint_defaults
from fex.writer import AttributionWriter, RankSplitSampler, clean_tmp, finished_indices, read_shards


def split_dataset(datamodule: Any, split: str) -> tuple[Any, Any]:
    """(dataset, its loader) for ``split``; the loader supplies batch size and collate_fn."""
    loader = getattr(datamodule, f"{split}_dataloader", None)
    if loader is None:
        raise DataError(f"the data module has no {split!r} split")
    loader = loader()
    ds = datamodule.dataset(split) if hasattr(datamodule, "dataset") else loader.dataset
    return ds, loader


def row_indices(ds: Any) -> list[int]:
    """The dataset index (batch[2]) of each position; ``ds.index`` when present, else positions."""
    idx = getattr(ds, "index", None)
    return [int(i) for i in idx] if idx is not None else list(range(len(ds)))


def take(ds: Any, positions: list[int], collate: Any) -> Any:
    return (collate or default_collate)([ds[p] for p in positions])


def check_data(masker: Any, loader: DataLoader, split: str) -> None:
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise DataError(f"split {split!r} is empty") from None
    if not isinstance(batch, (list, tuple)) or len(batch) < 3:
        raise DataError("batches must be (x, y, index) tuples so attributions can be keyed by row")
    try:
        masker.validate(batch[0])
    except FexError as exc:
        raise DataError(f"the explainer's masker cannot handle split {split!r}: {exc}") from exc


def attribute_split(cfg: DictConfig, explainer: ExplainerModule, ds: Any, loader: DataLoader, out: Path) -> dict:
    """Predict the rows not yet on disk; returns {'rank', 'predicted'}."""
    shard_dir = out / "attributions"
    shard_dir.mkdir(parents=True, exist_ok=True)
    clean_tmp(shard_dir)
    done = finished_indices(shard_dir)
    index = row_indices(ds)
    todo = [p for p, i in enumerate(index) if i not in done]
    if not todo:
        return {"rank": 0, "predicted": 0}
    bs = cfg.attribution.batch_size or loader.batch_size or 64
    dl = DataLoader(ds, batch_size=int(bs), sampler=RankSplitSampler(todo), collate_fn=loader.collate_fn)
    writer = AttributionWriter(shard_dir, save_attributions=bool(cfg.attribution.save_attributions))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[writer], use_distributed_sampler=False)
    trainer.predict(explainer, dataloaders=dl, return_predictions=False)
    if trainer.world_size > 1:
        trainer.strategy.barrier()
    return {"rank": trainer.global_rank, "predicted": writer.written}


def collect(ds: Any, out: Path) -> dict[str, np.ndarray]:
    """All shards -> attributions.npz; every row exactly once or a DataError."""
    rows = read_shards(out / "attributions")
    want = sorted(row_indices(ds))
    have = rows.get("index", np.zeros(0, dtype=np.int64))
    if len(have) != len(want) or not np.array_equal(have, np.asarray(want)):
        missing = sorted(set(want) - set(have.tolist()))
        raise DataError(f"attribution shards are incomplete: {len(missing)} rows missing (e.g. {missing[:3]})")
    with atomic_write(out / "attributions.npz") as fh:
        np.savez(fh, **rows)
    return rows


def score_split(cfg: DictConfig, explainer: ExplainerModule, ds: Any, loader: DataLoader, rows: dict) -> dict:
    """Deletion/insertion AUC of the stored attributions over the whole split (eval/*)."""
    bb, masker = explainer.blackbox, M.with_substrate(explainer.masker, cfg.compare.substrate)
    pos = {i: p for p, i in enumerate(row_indices(ds))}
    dels, ins = [], []
    bs = int(cfg.attribution.batch_size or loader.batch_size or 64)
    for s in range(0, len(rows["index"]), bs):
        idx = rows["index"][s:s + bs]
        x = take(ds, [pos[int(i)] for i in idx], loader.collate_fn)[0]
        f = masker.num_features(x)
        scores = torch.as_tensor(rows["scores"][s:s + bs][:, :f])
        target = torch.as_tensor(rows["target"][s:s + bs])
        steps = cfg.attribution.score_steps
        with bb.uncounted():  # scoring is not the explainer's cost
            dels.append(M.deletion_auc(bb, masker, x, scores, target, steps))
            ins.append(M.insertion_auc(bb, masker, x, scores, target, steps))
    return {"eval/deletion_auc": float(torch.cat(dels).mean()), "eval/insertion_auc": float(torch.cat(ins).mean())}


def build_methods(cfg: DictConfig, blackbox: Any, explainer: ExplainerModule) -> dict:
    """name -> zero-argument factory (built lazily: one broken method is reported, not fatal). A method class
    with ``needs_data = True`` gets the job's data module as ``data``."""
    out = {}
    for name, mcfg in (cfg.get("method") or {}).items():
        cls = get_class(mcfg._target_)
        extra = {"explainer": explainer} if issubclass(cls, Fex) else {}
        if getattr(cls, "needs_data", False):  # fitted on the job's data (e.g. kmeans_prototypes' training split)
            extra["data"] = build_data(cfg.data)
        out[name] = lambda mcfg=mcfg, extra=extra: instantiate(mcfg, blackbox=blackbox, masker=explainer.masker, **extra)
    return out


def stored_rows(rows: dict | None, index: list[int]) -> dict | None:
    """The shard rows of dataset indices ``index`` (in that order), or None if any is missing."""
    if not rows or "index" not in rows:
        return None
    pos = np.searchsorted(rows["index"], index)
    if (pos >= len(rows["index"])).any() or not np.array_equal(rows["index"][np.minimum(pos, len(rows["index"]) - 1)], index):
        return None
    return {k: v[pos] for k, v in rows.items()}


def fex_record(rows: dict, sel: dict, width: int, batch_size: int) -> dict:
    """The ``fex`` comparison row from the attribution shards: their scores, and the cost the
    predict pass measured (explanation time per row, peak memory of a first batch)."""
    mem = rows.get("peak_mem_mib")
    mem = float(np.nanmax(mem)) if mem is not None and np.isfinite(mem).any() else None
    return {"scores": torch.as_tensor(sel["scores"][:, :width]).float(),
            "sec_per_expl": statistics.median(sel["seconds"].tolist()), "queries_per_expl": 0.0,
            "peak_mem_mib": mem, "mem_method": "rss-hwm" if mem is not None else "none", "batch_size": batch_size,
            "from": "attribution shards"}


def compare_methods(cfg: DictConfig, explainer: ExplainerModule, ds: Any, loader: DataLoader, out: Path,
                    rows: dict | None = None) -> dict:
    """Every configured method on the first ``compare.num_examples`` rows. With the attribution
    ``rows`` of this job, the explained class is their stored prediction and the ``fex`` row is
    their stored explanation (nothing is queried or explained twice)."""
    c = cfg.compare
    n = min(int(c.num_examples), len(ds))
    if n == 0 or not cfg.get("method"):
        return {"rows": []}
    batch = take(ds, list(range(n)), loader.collate_fn)
    x, bb, masker = batch[0], explainer.blackbox, explainer.masker
    sel = stored_rows(rows, row_indices(ds)[:n])
    precomputed = {}
    if sel is not None:
        target = torch.as_tensor(sel["target"]).long()
        if "fex" in cfg.method and "seconds" in sel:
            bs = int(cfg.attribution.batch_size or loader.batch_size or 64)
            precomputed["fex"] = fex_record(rows, sel, masker.num_features(x), bs)
    else:
        with bb.uncounted():
            target = bb(x).argmax(-1).cpu()  # explained class: the prediction, computed once for everyone
    results = compare.run_methods(
        bb, masker, x, target, build_methods(cfg, bb, explainer), batch_size=int(c.batch_size),
        metric_masker=M.with_substrate(masker, c.substrate), precomputed=precomputed,
        metric_kwargs={"steps": c.steps, "fractions": tuple(c.eraser_fractions), "num_subsets": int(c.faithfulness_subsets),
                       "subset_fraction": float(c.faithfulness_fraction), "seed": int(cfg.seed)})
    compare.add_ratios(results, c.reference)
    files = {}
    if any("error" not in r for r in results):
        files["curves"] = str(plots.curves(results, out / "curves.png"))
        files["quality_vs_time"] = str(plots.quality_vs_time(results, out / "quality_vs_time.png"))
        g = int(c.gallery_size)
        names = explainer.class_names
        captions = [f"y={names[int(y)]} pred={names[int(p)]}" for y, p in zip(batch[1][:g], target[:g])]
        path = masker.renderer().gallery(masker.select(x, torch.arange(min(g, n))), plots.method_rows(results, g),
                                         out / "gallery", captions)
        if path is not None:
            files["gallery"] = str(path)
    return {"rows": results, "files": files}


def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    """Returns (metrics, objects). Non-zero DDP ranks return after writing their shards.

    The checkpoint is read once; its data and target configs are the defaults (command-line
    groups override them)."""
    pl.seed_everything(cfg.seed, workers=True)
    out = check_writable(cfg.output_dir)  # created lazily, by the first file written
    ckpt = read_checkpoint(str(cfg.checkpoint))  # fail fast, before building the target
    cfg = with_checkpoint_defaults(cfg, ckpt)
    blackbox = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    explainer = load_explainer(ckpt, target=blackbox, allow_target_mismatch=bool(cfg.allow_target_mismatch))
    datamodule = build_data(cfg.data)
    ds, loader = split_dataset(datamodule, cfg.split)
    check_data(explainer.masker, loader, cfg.split)
    objects = {"explainer": explainer, "blackbox": blackbox, "datamodule": datamodule, "config": cfg}
    # a rerun into this directory must be the same job (its shards are reused): refuse anything else
    check_or_write(out, make_manifest(os.path.expanduser(str(cfg.checkpoint)), cfg.split, to_dict(cfg.data),
                                      to_dict(cfg.get("method")), blackbox.fingerprint()), out / "attributions")
    metrics: dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "output_dir": str(out)}

    rows = None
    if cfg.attribution.enabled:
        info = attribute_split(cfg, explainer, ds, loader, out)
        if info["rank"] != 0:
            return {}, objects
        rows = collect(ds, out)
        metrics.update({"attribution/rows": int(len(rows["index"])), "attribution/predicted": int(info["predicted"]),
                        "attribution/file": str(out / "attributions.npz")})
        if cfg.attribution.score:
            metrics.update(score_split(cfg, explainer, ds, loader, rows))

    comp = compare_methods(cfg, explainer, ds, loader, out, rows)
    results = comp["rows"]
    metrics["methods"] = compare.json_rows(results)
    metrics["files"] = comp.get("files", {})
    fex_row = next((r for r in results if r["method"] == "fex" and "error" not in r), None)
    if fex_row:
        metrics.update({f"compare/fex_{k}": fex_row[k] for k in compare.QUALITY_KEYS})
    table = compare.markdown_table(results, cfg.compare.reference) if results else ""
    if table:
        write_text(out / "table.md", table + "\n")
    write_json(out / "metrics.json", metrics)
    if table:
        print(table, flush=True)
    summary = [f"fex-evaluate: {out}/metrics.json"]
    if "attribution/rows" in metrics:
        summary.append(f"{metrics['attribution/rows']} rows attributed ({metrics['attribution/file']})")
    if "eval/deletion_auc" in metrics:
        summary.append(f"deletion AUC {metrics['eval/deletion_auc']:.4f}, insertion AUC {metrics['eval/insertion_auc']:.4f}")
    print(" | ".join(summary), flush=True)
    objects.update({"rows": results, "table": table})
    return metrics, objects
