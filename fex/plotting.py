"""Image heatmaps (matplotlib, Agg backend; written atomically)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save via a temporary file + rename so a killed run never leaves a half-written PNG."""
    from fex.io import atomic_write

    path = Path(path)
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        _plt().close(fig)
    return path


def to_display(img: torch.Tensor):
    """[C, H, W] -> numpy [H, W] (grey) or [H, W, 3], scaled to [0, 1]."""
    img = img.detach().float().cpu()
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo + 1e-8)
    return img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy()


def heatmap_grid(images: torch.Tensor, rows: Sequence[tuple[str, torch.Tensor]], titles: Sequence[str] | None = None,
                 path: str | os.PathLike = "heatmaps.png", cmap: str = "inferno", alpha: float = 0.6) -> Path:
    """One column per image; first row the images, then one row per (name, attributions [N, C, H, W] or [N, H, W])."""
    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(1.3 * n, 1.4 * (1 + len(rows))), squeeze=False)
    for j in range(n):
        base = to_display(images[j])
        axes[0][j].imshow(base, cmap="gray" if base.ndim == 2 else None)
        if titles is not None:
            axes[0][j].set_title(titles[j], fontsize=7)
        for i, (name, attr) in enumerate(rows, start=1):
            a = attr[j].detach().float().cpu()
            a = a[0] if a.dim() == 3 else a
            axes[i][j].imshow(base, cmap="gray" if base.ndim == 2 else None)
            axes[i][j].imshow(a.numpy(), cmap=cmap, alpha=alpha)
            if j == 0:
                axes[i][j].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)
