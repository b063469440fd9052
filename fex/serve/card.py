"""The explainer's card: what a served explainer is, read from its checkpoint (no model is built).

Target fingerprint, features, classes, training cost as recorded in the checkpoint, and measured
faithfulness when an evaluation's ``metrics.json`` is known (``card_metrics=...``, or one beside
the checkpoint).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fex.checkpoint import CKPT_KEY, read_checkpoint

FAITHFULNESS_KEYS = ("deletion_auc", "insertion_auc", "aopc", "comprehensiveness", "sufficiency",
                     "faithfulness_corr", "sec_per_expl", "queries_per_expl")


def _features(config: dict) -> dict:
    m = dict(config.get("masker") or {})
    kind = str(m.get("_target_", "")).rsplit(".", 1)[-1]
    if m.get("input_shape") is not None:
        grid = [int(g) for g in m.get("grid", [])]
        return {"modality": "image", "masker": kind, "unit": "patch", "grid": grid,
                "count": grid[0] * grid[1] if len(grid) == 2 else None,
                "input_shape": [int(s) for s in m["input_shape"]], "removed_become": m.get("baseline", "zeros")}
    return {"modality": "text", "masker": kind, "unit": "word", "count": "one per word",
            "max_tokens": m.get("max_length"), "removed_become": m.get("mode", "mask_token"),
            "tokenizer": m.get("tokenizer") or "bundled all-MiniLM-L6-v2"}


def _training(ckpt: dict, meta: dict) -> dict:
    out: dict[str, Any] = {"epochs": ckpt.get("epoch"), "steps": ckpt.get("global_step")}
    recorded = meta.get("training") or meta.get("train")
    if isinstance(recorded, dict):
        out.update(recorded)
    if meta.get("train_queries") is not None:
        out.setdefault("queries", int(meta["train_queries"]))
    out.setdefault("queries", None)  # black-box queries spent training, when the checkpoint records them
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            out[f"best_{state['monitor']}"] = float(state["best_model_score"])
    return out


def faithfulness(metrics_path: str | os.PathLike | None) -> dict | None:
    """FEX's row (and the reference method's) from an evaluation ``metrics.json``; None if unknown."""
    if not metrics_path or not os.path.isfile(metrics_path):
        return None
    try:
        m = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    rows = {r.get("method"): r for r in m.get("methods", []) if isinstance(r, dict) and "error" not in r}
    if "fex" not in rows:
        return None
    pick = lambda r: {k: r[k] for k in FAITHFULNESS_KEYS if k in r}  # noqa: E731
    out = {"source": str(metrics_path), "split": m.get("split"), "fex": pick(rows["fex"])}
    ref = rows.get("kernel_shap")
    if ref:
        out["kernel_shap"] = pick(ref)
    return out


def explainer_card(source: str | os.PathLike | dict, metrics_path: str | os.PathLike | None = None,
                   serving: dict | None = None) -> dict:
    """The card of a checkpoint (a path, or the dict of :func:`fex.checkpoint.read_checkpoint`)."""
    ckpt = source if isinstance(source, dict) else read_checkpoint(source)
    path = os.path.abspath(ckpt.get("_path") or os.path.expanduser(str(source)))
    meta = ckpt[CKPT_KEY]
    config = dict(meta.get("config") or {})
    if metrics_path is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
        metrics_path = beside if os.path.isfile(beside) else None
    fp = meta.get("target") or {}
    policy = dict(config.get("policy") or {})
    data = dict(config.get("data") or {})
    n_params = sum(int(v.numel()) for k, v in ckpt["state_dict"].items() if k.startswith("policy."))
    return {
        "checkpoint": path,
        "checkpoint_version": meta.get("version"),
        "fex_version": meta.get("fex_version"),
        "target": {"name": fp.get("name"), "output": fp.get("output"), "weights_sha256": fp.get("weights_sha256"),
                   "config": fp.get("config") or config.get("target")},
        "features": _features(config),
        "classes": config.get("num_classes") or policy.get("num_classes"),
        "class_names": config.get("class_names") or data.get("label_names"),
        "data": {k: data.get(k) for k in ("_target_", "source", "test_size", "seed") if k in data} or None,
        "policy": {"backbone": str((policy.get("backbone") or {}).get("_target_", "")).rsplit(".", 1)[-1],
                   "stored_parameters": n_params},
        "objective": config.get("objective"),
        "training": _training(ckpt, meta),
        "faithfulness": faithfulness(metrics_path),
        "serving": serving or {},
    }
