"""Comparison plots: deletion/insertion curves, quality versus time, and a heatmap gallery.

All figures are written atomically through :func:`fex.plotting.save_figure`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fex.plotting import _plt, heatmap_grid, save_figure


def _ok(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if "error" not in r]


def curves(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Mean deletion and insertion curves (target probability vs fraction of features) per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for r in _ok(rows):
            c = r["curves"][kind].float()
            x = torch.linspace(0, 1, len(c))
            ax.plot(x.numpy(), c.numpy(), label=f"{r['method']} ({r[kind + '_auc']:.3f})")
        ax.set_xlabel(f"fraction of features {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("target-class probability")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} AUC is better)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def quality_vs_time(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Scatter of deletion / insertion AUC against seconds per explanation (log scale)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("deletion_auc", "insertion_auc")):
        for r in _ok(rows):
            t = max(r["sec_per_expl"], 1e-7)
            ax.scatter([t], [r[key]])
            ax.annotate(r["method"], (t, r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per explanation (log)")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(f"{key.replace('_', ' ')} vs time ({'lower' if key.startswith('del') else 'higher'} is better)")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def gallery(images: Any, rows: Sequence[dict], masker: Any, path: str | os.PathLike, n: int = 6,
            titles: Sequence[str] | None = None) -> Path | None:
    """Heatmaps of every method on the same first ``n`` images (image tensors only; else None)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return None
    n = min(n, images.shape[0])
    x = images[:n]
    heat = [(r["method"], masker.expand(r["scores"][:n].to(x.device), x)) for r in _ok(rows)]
    return heatmap_grid(x.cpu(), [(k, v.cpu()) for k, v in heat], titles[:n] if titles else None, path)
