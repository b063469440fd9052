"""Pictures of training-data attribution: each test input beside its most helpful and most harmful
training examples. Images -> a PNG grid; texts -> an HTML page. Files are written atomically."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fex.io import atomic_write, write_text


def _image(x: torch.Tensor):
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] in (1, 3):
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    return x.numpy()


def image_grid(test: Sequence[dict], path: str | os.PathLike) -> Path:
    """``test``: one dict per test input with ``x``, ``title``, and ``helpful``/``harmful`` lists of
    ``{"x", "title"}``. One row per test input: the test image | k helpful | k harmful."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = max(max(len(t["helpful"]), len(t["harmful"])) for t in test)
    cols = 1 + 2 * k
    fig, axes = plt.subplots(len(test), cols, figsize=(1.3 * cols, 1.55 * len(test)), squeeze=False)
    for r, t in enumerate(test):
        cells = [(t["x"], t["title"], "black")] + [(h["x"], h["title"], "tab:green") for h in t["helpful"]] \
            + [None] * (k - len(t["helpful"])) + [(h["x"], h["title"], "tab:red") for h in t["harmful"]]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            cell = cells[c] if c < len(cells) else None
            if cell is None:
                ax.axis("off")
                continue
            ax.imshow(_image(cell[0]), cmap="gray")
            ax.set_title(cell[1], fontsize=6.5, color=cell[2])
            for s in ax.spines.values():
                s.set_edgecolor(cell[2])
                s.set_linewidth(2 if c else 1)
    fig.suptitle(f"test input | {k} most helpful training examples (green) | {k} most harmful (red)", fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def text_page(test: Sequence[dict], path: str | os.PathLike, title: str = "Which training examples made this prediction") -> Path:
    """Same structure as :func:`image_grid` with ``x`` a string; writes a self-contained HTML page."""
    css = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
           ".t{background:#f3f4f6;padding:.6em;border-radius:6px}.h{border-left:4px solid #16a34a;padding-left:.6em}"
           ".n{border-left:4px solid #dc2626;padding-left:.6em}.s{color:#555;font-size:.85em}li{margin:.3em 0}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>",
           "<p>Score = grad L(test)<sup>T</sup> (H + &lambda;I)<sup>-1</sup> grad L(train): positive = helpful "
           "(removing the example would raise the test loss), negative = harmful.</p>"]
    for t in test:
        out.append(f"<h2>{html.escape(t['title'])}</h2><p class='t'>{html.escape(t['x'])}</p>")
        for kind, cls, label in (("helpful", "h", "most helpful"), ("harmful", "n", "most harmful")):
            out.append(f"<h3>{label} training snippets</h3><ol class='{cls}'>")
            out += [f"<li>{html.escape(h['x'])} <span class='s'>({html.escape(h['title'])})</span></li>"
                    for h in t[kind]]
            out.append("</ol>")
    out.append("</body></html>")
    return write_text(path, "\n".join(out))


def render(test: Sequence[dict], out_dir: str | os.PathLike) -> Path:
    """Images -> ``influence.png``; texts -> ``influence.html``."""
    if isinstance(test[0]["x"], str):
        return text_page(test, Path(out_dir) / "influence.html")
    return image_grid(test, Path(out_dir) / "influence.png")


def describe(label: Any, names: Sequence[str] | None) -> str:
    return names[int(label)] if names is not None and 0 <= int(label) < len(names) else str(int(label))
