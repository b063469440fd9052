"""Shared driver of the side-by-side benchmarks in ``benchmarks/`` (they import this, not each other).

``load`` gives the evaluate config, black box, explainer and test split of a checkpoint (its
own data and target configs; overrides on top); ``bench`` runs every configured method on the
same inputs and features (``fex.compare``); ``train_explainer`` trains one for a patch grid.
"""
from __future__ import annotations

import csv
import os
import platform
from pathlib import Path
from typing import Any

import torch

from fex import compare
from fex import metrics as M
from fex.config import build_data, compose  # noqa: F401 (compose: the benchmarks' config composer)
from fex.explainer import open_checkpoint
from fex.methods import build_methods
from fex.tasks.train import train


def load(checkpoint: str, methods: str, overrides: list[str]):
    """(cfg, blackbox, explainer, test dataset): the checkpoint read once, its data and target."""
    cfg = compose("evaluate", [f"checkpoint={checkpoint}", f"method=[{methods}]", "output_dir=.", *overrides])
    cfg, explainer = open_checkpoint(cfg)
    ds = build_data(cfg.data).dataset(cfg.split)
    return cfg, explainer.blackbox, explainer, ds


def first_inputs(ds: Any, n: int, masker: Any) -> Any:
    """The first ``n`` inputs of a dataset as one batch, made by the masker's renderer (any modality)."""
    return masker.renderer().collate([ds[i][0] for i in range(min(n, len(ds)))])


def bench(cfg, bb, explainer, x: Any, batch_size: int, reference: str = "kernel_shap",
          methods: dict | None = None) -> list[dict]:
    """The side-by-side run: rows with cost, quality and ratios to ``reference``. ``methods`` (name ->
    method or zero-argument factory) defaults to the config's ``method`` group bound to ``explainer``."""
    with bb.uncounted():
        target = bb(x).argmax(-1)  # the explained class: the prediction, once for every method
    methods = build_methods(cfg, bb, explainer) if methods is None else methods
    rows = compare.run_methods(bb, explainer.masker, x, target, methods, batch_size,
                               metric_masker=M.with_substrate(explainer.masker, cfg.compare.substrate),
                               metric_kwargs={"steps": cfg.compare.steps, "seed": int(cfg.seed)})
    return compare.add_ratios(rows, reference)


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


# --------------------------------------------------------------------------- training for a benchmark
def train_overrides(grid: int, out: Path, epochs: int, val_per_epoch: int, limit: int | None) -> list[str]:
    o = [f"masker.grid=[{grid},{grid}]", f"trainer.max_epochs={epochs}", f"output_dir={out}",
         "trainer.enable_progress_bar=false", "gallery_size=4", "hydra.job.chdir=false"]
    if val_per_epoch > 1:
        o.append(f"+trainer.val_check_interval={1.0 / val_per_epoch}")
    if limit:
        o += [f"data.limit={limit}", "trainer.limit_val_batches=2", "val_auc_examples=8"]
    return o


def read_training_curve(metrics_csv: str | Path) -> list[dict]:
    """Validation points of a CSVLogger ``metrics.csv``: one dict per validation, sorted by training
    queries, with ``train_queries``, ``reward`` (val/reward), ``deletion_auc`` / ``insertion_auc``
    (val/deletion_auc, val/insertion_auc; None if not logged), ``step`` and ``epoch``. Rows of the same step are merged (loggers may split them)."""
    by_step: dict[int, dict] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(float(row["step"]))
            merged = by_step.setdefault(step, {})
            merged.update({k: v for k, v in row.items() if v not in ("", None)})
    points = []
    for step, row in by_step.items():
        if "val/train_queries" not in row or "val/reward" not in row:
            continue
        d, i = row.get("val/deletion_auc"), row.get("val/insertion_auc")
        sec = row.get("val/train_seconds")
        points.append({"step": step, "epoch": int(float(row.get("epoch", 0))),
                       "train_seconds": float(sec) if sec is not None else None,
                       "train_queries": float(row["val/train_queries"]), "reward": float(row["val/reward"]),
                       "deletion_auc": float(d) if d is not None else None,
                       "insertion_auc": float(i) if i is not None else None})
    return sorted(points, key=lambda p: (p["train_queries"], p["step"]))


def train_explainer(grid: int, out: Path, epochs: int, val_per_epoch: int, limit: int | None) -> dict:
    """Train an explainer for a ``grid`` x ``grid`` patch masker; training cost and curve."""
    cfg = compose("train", [o for o in train_overrides(grid, out, epochs, val_per_epoch, limit)
                            if not o.startswith("hydra.")])
    metrics, _ = train(cfg)
    csv_path = out / "logs" / "version_0" / "metrics.csv"
    curve = read_training_curve(csv_path) if csv_path.is_file() else []
    return {"checkpoint": metrics["checkpoint"], "train_queries": float(metrics["train/queries"]),
            "train_seconds": float(metrics["train/seconds"]), "val_reward": metrics.get("val/reward"),
            "val_deletion_auc": metrics.get("val/deletion_auc"), "curve": curve}


# --------------------------------------------------------------------------- several training seeds
def bench_seeds(checkpoints: list[str], methods: str, overrides: list[str], n: int, batch_size: int,
                reference: str = "kernel_shap") -> tuple[list[dict], Any, Any, Any]:
    """Every method once (the first checkpoint's fex among them), fex again for each further
    checkpoint (other training seeds) on the same inputs; the fex row becomes the mean over seeds
    with ``<metric>_std`` (spread across seeds) and one ``fex[seed i]`` row each.
    Returns (rows with ratios, the evaluate config, the first explainer, the inputs)."""
    cfg, bb, explainer, ds = load(checkpoints[0], methods, overrides)
    x = first_inputs(ds, n, explainer.masker)
    rows = bench(cfg, bb, explainer, x, batch_size, reference)
    fex_rows = [r for r in rows if r["method"] == "fex" and "error" not in r]
    for ck in checkpoints[1:]:
        c2, _, e2, _ = load(ck, "fex", overrides)
        fex_rows += [r for r in bench(c2, bb, e2, x, batch_size, reference) if r["method"] == "fex" and "error" not in r]
    if len(fex_rows) > 1:
        rows = [r for r in rows if r["method"] != "fex"]
        rows.insert(0, mean_row(fex_rows, "fex"))
        rows += [{**r, "method": f"fex[seed {i}]"} for i, r in enumerate(fex_rows)]
    return compare.add_ratios(rows, reference), cfg, explainer, x


def mean_row(rows: list[dict], name: str) -> dict:
    """Mean of numeric fields over rows (seeds), with ``<key>_std`` spreads of the quality keys and time."""
    out: dict[str, Any] = {"method": name, "seeds": len(rows)}
    for k, v in rows[0].items():
        if k.endswith("_vs_ref"):  # ratios are recomputed for the mean row
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(k in r for r in rows):
            vals = torch.tensor([float(r[k]) for r in rows])
            out[k] = float(vals.mean())
            if k in (*compare.QUALITY_KEYS, "sec_per_expl"):
                out[f"{k}_std"] = float(vals.std()) if len(vals) > 1 else 0.0
        elif k not in out:
            out[k] = v
    out["scores"] = rows[0].get("scores")
    out["curves"] = {c: torch.stack([r["curves"][c] for r in rows]).mean(0) for c in rows[0].get("curves", {})}
    return out
