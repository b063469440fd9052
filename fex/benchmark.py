"""Shared driver of the side-by-side benchmarks in benchmarks/ (they import this, never each other).

``load`` builds the black box, the explainer(s) and the test split from the evaluate config (the
checkpoint knows its data and target); ``bench`` runs every method on the same inputs through
:func:`fex.compare.run_methods`; ``seed_summary`` turns the rows of several training seeds of one
explainer into mean and spread. Cost definitions are in :mod:`fex.compare`.
"""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from fex import compare
from fex import metrics as M

CONF = Path(__file__).resolve().parents[1] / "conf"
QUALITY = compare.QUALITY_KEYS
COST = ("sec_per_expl", "queries_per_expl", "peak_mem_mib")


def machine() -> str:
    """One line describing the machine (CPU, cores, torch threads), for every benchmark header."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def compose_evaluate(checkpoint: str, methods: str, overrides: Sequence[str] = ()):
    """The evaluate config for ``checkpoint`` with ``method=[methods]`` (a comma list)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("evaluate", [f"checkpoint={checkpoint}", f"method=[{methods}]", "output_dir=.", *overrides])


def load(checkpoint: str, methods: str, overrides: Sequence[str] = ()):
    """(cfg, blackbox, explainer, test dataset) from the evaluate config (same target and data as training)."""
    from fex.module import ExplainerModule
    from fex.tasks.common import build_blackbox, build_data

    cfg = compose_evaluate(checkpoint, methods, overrides)
    bb = build_blackbox(cfg.target, num_classes=int(cfg.num_classes))
    explainer = ExplainerModule.from_checkpoint(checkpoint, target=bb, allow_target_mismatch=cfg.allow_target_mismatch)
    ds = build_data(cfg.data).dataset(cfg.split)
    return cfg, bb, explainer, ds


def metric_kwargs(cfg: Any) -> dict:
    """The quality-metric settings of ``cfg.compare`` (same for every method)."""
    c = cfg.compare
    return {"steps": c.steps, "fractions": tuple(c.eraser_fractions), "num_subsets": int(c.faithfulness_subsets),
            "subset_fraction": float(c.faithfulness_fraction), "seed": int(cfg.seed)}


def bench(cfg: Any, bb: Any, explainer: Any, x: Any, batch_size: int, reference: str = "kernel_shap",
          methods: dict | None = None) -> list[dict]:
    """The side-by-side run: rows with cost, quality and ratios to ``reference``. ``methods`` (name ->
    method or factory) defaults to the config's ``method`` group bound to ``explainer``."""
    from fex.tasks.evaluate import build_methods

    with bb.uncounted():
        target = bb(x).argmax(-1)  # the explained class: computed once, charged to nobody
    rows = compare.run_methods(bb, explainer.masker, x, target,
                               methods if methods is not None else build_methods(cfg, bb, explainer), batch_size,
                               metric_masker=M.with_substrate(explainer.masker, cfg.compare.substrate),
                               metric_kwargs=metric_kwargs(cfg))
    return compare.add_ratios(rows, reference)


def seed_summary(rows: list[dict], name: str, members: Sequence[str]) -> dict | None:
    """One row ``name`` with the mean of ``members``' (training seeds') cost and quality and, for
    quality, the spread: ``<key>_std`` (sample std; 0 for one seed) and ``<key>_min``/``<key>_max``."""
    got = [r for r in rows if r["method"] in members and "error" not in r]
    if not got:
        return None
    out: dict[str, Any] = {"method": name, "seeds": len(got), "members": [r["method"] for r in got]}
    for k in (*COST, *QUALITY):
        v = [float(r[k]) for r in got]
        out[k] = statistics.fmean(v)
        if k in QUALITY:
            out[f"{k}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
            out[f"{k}_min"], out[f"{k}_max"] = min(v), max(v)
    out["scores"] = got[0].get("scores")
    out["curves"] = got[0].get("curves")
    return out


def spread_table(rows: list[dict], keys: Sequence[str] = ("deletion_auc", "insertion_auc", "comprehensiveness",
                                                           "sufficiency", "faithfulness_corr")) -> str:
    """Markdown: mean ± std (over training seeds) of the quality keys for summary rows."""
    head = "| explainer | seeds | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        cells = [f"{r[k]:.4f} ± {r.get(f'{k}_std', 0.0):.4f}" for k in keys]
        lines.append(f"| {r['method']} | {r.get('seeds', 1)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
