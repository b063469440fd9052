"""train(cfg): target -> FEX explainer checkpoint, a gallery of explanations and a summary line.

Resuming: every run keeps ``<output_dir>/checkpoints/last.ckpt``, rewritten after every epoch.
``resume=true`` continues from the run's own last checkpoint or, for a new run directory,
from the newest ``last.ckpt`` of the sibling runs (the same command rerun after a kill);
``resume=<path>`` from that file. Weights, optimizer, epoch/step and the training query
count all continue where they stopped.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from fex.callbacks import health_summary
from fex.errors import ConfigError
from fex.explainer import build_explainer, load_explainer
from fex.io import atomic_checkpoints, check_writable, save_torch, write_json
from fex.module import BANK_KEY, ExplainerModule
from fex.tasks.common import build, build_blackbox, build_data, instantiate_list

LAST = "last.ckpt"


def checkpoint_callbacks(callbacks: list, out: Path) -> list:
    """Add the callback that keeps ``<out>/checkpoints/last.ckpt`` (what ``resume`` reads), rewritten at
    the end of every epoch. (Lightning's ``save_last`` only writes when a top-k checkpoint improves.)"""
    last = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename=Path(LAST).stem, monitor=None, save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    return [*callbacks, last]


def resume_path(cfg: DictConfig, out: Path) -> str | None:
    """``cfg.resume`` -> the checkpoint Lightning continues from (None: a fresh start)."""
    resume = cfg.get("resume")
    if resume in (None, False, "false", ""):
        return None
    if resume not in (True, "true", "last"):
        path = Path(str(resume)).expanduser()
        if not path.is_file():
            raise ConfigError(f"resume={resume}: no such checkpoint")
        return str(path)
    own = out / "checkpoints" / LAST
    if own.is_file():
        return str(own)
    siblings = sorted((p for p in out.parent.glob(f"*/checkpoints/{LAST}") if p.is_file()),
                      key=lambda p: p.stat().st_mtime)
    if not siblings:
        raise ConfigError(f"resume=true: no {LAST} in {own.parent} or in the other runs under {out.parent}")
    return str(siblings[-1])


def write_explainer_checkpoint(trainer: pl.Trainer, module: ExplainerModule, best: str | None, path: Path) -> None:
    """The explainer: the kept (best) checkpoint without the reward bank (training state for resume, not
    the explainer), in one atomic write: on a full disk there is no explainer checkpoint, never one that
    still holds the bank."""
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        state.pop(BANK_KEY, None)
        save_torch(path, state)
        return
    bank, module._bank = module._bank, None  # on_save_checkpoint stores the bank only when there is one
    try:
        trainer.save_checkpoint(path)  # atomic through fex.io.AtomicCheckpointIO
    finally:
        module._bank = bank


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train an explainer as configured. Returns (metrics, objects)."""
    t0 = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    out = check_writable(cfg.output_dir)  # before any work; created lazily by the first file
    datamodule = build_data(cfg.data)
    blackbox = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    module = build_explainer(cfg, datamodule, blackbox)
    ckpt_from = resume_path(cfg, out)
    trainer: pl.Trainer = build(cfg.trainer, logger=instantiate_list(cfg.get("logger")) or False,
                                callbacks=checkpoint_callbacks(instantiate_list(cfg.get("callbacks")), out))
    atomic_checkpoints(trainer)  # Lightning's own checkpoints (last.ckpt, best) too: whole or not at all
    if ckpt_from and trainer.is_global_zero:
        print(f"fex: resuming from {ckpt_from}", flush=True)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_from)

    ckpt_path = out / cfg.ckpt_name
    cb = trainer.checkpoint_callback
    best = getattr(cb, "best_model_path", "") if cb else ""
    if trainer.is_global_zero:
        write_explainer_checkpoint(trainer, module, best, ckpt_path)
    if trainer.world_size > 1:
        trainer.strategy.barrier()
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if best and cb.best_model_score is not None:  # the kept checkpoint's score (the other val/* are the last epoch's)
        metrics[f"best/{cb.monitor}"] = float(cb.best_model_score)
    metrics.update({"checkpoint": str(ckpt_path), "output_dir": str(out), "train/queries": module._train_queries,
                    "train/seconds": time.perf_counter() - t0})
    metrics.update(health_summary(trainer))
    if trainer.is_global_zero:
        write_json(out / "train_metrics.json", metrics)

    objects = {"module": module, "trainer": trainer, "datamodule": datamodule, "blackbox": blackbox}
    if trainer.is_global_zero:
        explainer = load_explainer(ckpt_path, target=blackbox)
        objects["explainer"] = explainer
        metrics.update(report(cfg, explainer, datamodule, out))
        print(summary_line(metrics), flush=True)
    return metrics, objects


def report(cfg: DictConfig, explainer: ExplainerModule, datamodule: Any, out: Path) -> dict:
    """The target's test accuracy (one query per test input, not training cost) and a gallery of
    the explainer on the first ``gallery_size`` test inputs, drawn by the masker's renderer."""
    bb, masker = explainer.blackbox, explainer.masker
    n_gallery = int(cfg.get("gallery_size", 12))
    correct = seen = 0
    first = None
    with bb.uncounted():
        for x, y, *_ in datamodule.test_dataloader():
            pred = bb(x).argmax(-1).cpu()
            correct += int((pred == y.cpu()).sum())
            seen += len(y)
            if first is None:
                first = (x, y, pred)
    res: dict[str, Any] = {}
    if seen:
        res["target/test_accuracy"] = correct / seen
    if first is not None and n_gallery > 0:
        x, y, pred = first
        n = min(n_gallery, len(y))
        xs = masker.select(x, torch.arange(n))
        exp = explainer.explain(xs, target=pred[:n])
        names = explainer.class_names
        captions = [f"y={names[int(a)]} pred={names[int(b)]}" for a, b in zip(y[:n], pred[:n])]
        path = masker.renderer().gallery(xs, [("FEX", exp["scores"])], out / "heatmaps", captions)
        if path is not None:
            res["gallery"] = str(path)
    return res


def summary_line(m: dict) -> str:
    parts = [f"fex: explainer {m['checkpoint']}"]
    if "gallery" in m:
        parts.append(f"heatmaps {m['gallery']}")
    best = [k for k in m if k.startswith("best/")]
    if best:
        parts.append(f"kept checkpoint {best[0][5:]} {m[best[0]]:.4f}")
    if "val/deletion_auc" in m:
        parts.append(f"last val deletion AUC {m['val/deletion_auc']:.4f}, insertion {m.get('val/insertion_auc', float('nan')):.4f}")
    if "target/test_accuracy" in m:
        parts.append(f"target test accuracy {m['target/test_accuracy']:.4f}")
    if "policy_health" in m:
        parts.append(f"policy {m['policy_health']}")
    parts.append(f"{int(m['train/queries'])} training queries in {m['train/seconds']:.0f}s")
    return " | ".join(parts)
