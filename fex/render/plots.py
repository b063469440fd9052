"""Modality-free figures (matplotlib, Agg backend; written atomically): deletion/insertion
curves and quality versus time of a method comparison (rows of :func:`fex.compare.run_methods`),
and learning curves (validation metrics against training queries)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from fex.io import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a figure whole or not at all (``fex.io.atomic_write``), then close it."""
    path = Path(path)
    with atomic_write(path) as fh:
        fig.savefig(fh, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def learning_curves(series: Sequence[tuple[str, Sequence[dict]]], panels: Sequence[tuple[str, str]],
                    path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per ``(key, label)`` of ``panels``: each series' points ``{"train_queries", key}``
    (from :func:`fex.bench.read_training_curve`; points without the key are skipped) against the
    black-box queries spent training."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for name, curve in series:
        for ax, (key, _) in zip(axes[0], panels):
            pts = [(p["train_queries"], p[key]) for p in curve if p.get(key) is not None]
            if pts:
                ax.plot([q for q, _ in pts], [v for _, v in pts], "o-", ms=3, label=name)
    for ax, (_, label) in zip(axes[0], panels):
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e3:.0f}k")
        ax.set_xlabel("black-box queries spent training")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


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


def method_rows(rows: Sequence[dict], n: int) -> list[tuple[str, torch.Tensor]]:
    """``(method, scores of the first n inputs)`` for every comparison row that did not fail."""
    return [(r["method"], r["scores"][:n]) for r in _ok(rows)]
