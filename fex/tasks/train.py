"""train(cfg): target -> FEX explainer checkpoint, heatmap gallery and a summary line."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from fex.callbacks import health_summary
from fex.module import ExplainerModule
from fex.plotting import heatmap_grid
from fex.tasks.common import build, build_blackbox, build_data, instantiate_list, to_dict


def build_explainer(cfg: DictConfig, datamodule: Any, blackbox) -> ExplainerModule:
    """Masker, policy, objective and optimizer from config; the configs travel in the checkpoint."""
    masker_cfg = to_dict(cfg.masker)
    if masker_cfg.get("baseline") == "mean" and masker_cfg.get("fill") is None:
        masker_cfg["fill"] = datamodule.channel_mean()  # resolved value is saved, so loading reproduces it
    masker = build(masker_cfg)
    policy_cfg = to_dict(cfg.policy)
    policy = build(policy_cfg)
    objective_cfg = {k: v for k, v in to_dict(cfg.objective).items() if k != "_target_"}
    objective = build(cfg.objective)
    config = {"masker": masker_cfg, "policy": policy_cfg, "objective": objective_cfg,
              "data": to_dict(cfg.data), "target": to_dict(cfg.target), "num_classes": int(cfg.num_classes)}
    return ExplainerModule(policy=policy, masker=masker, objective=objective, optimizer=build(cfg.optimizer),
                           blackbox=blackbox, config=config, val_auc_examples=cfg.get("val_auc_examples", 64))


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train an explainer as configured. Returns (metrics, objects)."""
    t0 = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.output_dir)
    datamodule = build_data(cfg.data)
    blackbox = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    module = build_explainer(cfg, datamodule, blackbox)
    trainer: pl.Trainer = build(cfg.trainer, logger=instantiate_list(cfg.get("logger")) or False,
                                      callbacks=instantiate_list(cfg.get("callbacks")))
    trainer.fit(module, datamodule=datamodule)

    ckpt_path = out / cfg.ckpt_name
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_name(f".{ckpt_path.name}.tmp")
        if best and os.path.isfile(best):
            shutil.copyfile(best, tmp)
        else:
            trainer.save_checkpoint(tmp)
        os.replace(tmp, ckpt_path)  # atomic: never a half-written explainer
    if trainer.world_size > 1:
        trainer.strategy.barrier()
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if best and trainer.checkpoint_callback.best_model_score is not None:
        metrics["val/reward"] = float(trainer.checkpoint_callback.best_model_score)
    metrics.update({"checkpoint": str(ckpt_path), "output_dir": str(out), "train/queries": module._train_queries,
                    "train/seconds": time.perf_counter() - t0})
    metrics.update(health_summary(trainer))

    objects = {"module": module, "trainer": trainer, "datamodule": datamodule, "blackbox": blackbox}
    if trainer.is_global_zero:
        explainer = ExplainerModule.from_checkpoint(ckpt_path, target=blackbox)
        objects["explainer"] = explainer
        metrics.update(report(cfg, explainer, datamodule, out))
        print(summary_line(metrics), flush=True)
    return metrics, objects


def report(cfg: DictConfig, explainer: ExplainerModule, datamodule: Any, out: Path) -> dict:
    """Target test accuracy and a heatmap gallery over held-out test inputs (image data)."""
    test = datamodule.dataset("test")
    res: dict[str, Any] = {}
    if isinstance(getattr(test, "x", None), torch.Tensor):
        bb = explainer.blackbox
        q0 = bb.queries
        pred = bb(test.x).argmax(-1)
        res["target/test_accuracy"] = float((pred.cpu() == test.y).float().mean())
        n = min(int(cfg.get("gallery_size", 12)), len(test))
        if n > 0:
            x = test.x[:n]
            exp = explainer.explain(x)
            titles = [f"y={int(y)} pred={int(p)}" for y, p in zip(test.y[:n], exp["target"])]
            res["gallery"] = str(heatmap_grid(x, [("FEX", exp["attributions"])], titles, out / "heatmaps.png"))
        bb.queries = q0
    elif hasattr(test, "texts") and int(cfg.get("gallery_size", 12)) > 0:  # text: an HTML page of highlighted words
        from fex.textviz import explainer_report

        n = min(int(cfg.get("gallery_size", 12)), len(test))
        res["gallery"] = str(explainer_report(explainer, list(test.texts[:n]), out / "words.html",
                                              getattr(datamodule, "label_names", None), list(test.y[:n])))
    return res


def summary_line(m: dict) -> str:
    parts = [f"fex: explainer {m['checkpoint']}"]
    if "gallery" in m:
        parts.append(f"heatmaps {m['gallery']}")
    if "val/reward" in m:
        parts.append(f"val reward {m['val/reward']:.4f}")
    if "val/deletion_auc" in m:
        parts.append(f"val deletion AUC {m['val/deletion_auc']:.4f}")
    if "target/test_accuracy" in m:
        parts.append(f"target test accuracy {m['target/test_accuracy']:.4f}")
    if "policy_health" in m:
        parts.append(f"policy {m['policy_health']}")
    parts.append(f"{int(m['train/queries'])} training queries in {m['train/seconds']:.0f}s")
    return " | ".join(parts)
