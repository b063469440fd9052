"""Images: heatmaps over the inputs (PNG) and reading image files (PNG/JPEG)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fex.errors import DataError, InputError
from fex.inputs import Notes
from fex.inputs import load_image as load_checked
from fex.render.base import Renderer
from fex.render.plots import _plt, save_figure

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


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


def prototype_grid(images: torch.Tensor, concept_maps: torch.Tensor, own: torch.Tensor, rival: torch.Tensor,
                   titles: Sequence[str] | None = None, own_titles: Sequence[str] | None = None,
                   rival_titles: Sequence[str] | None = None, path: str | os.PathLike = "prototypes.png",
                   cmap: str = "RdBu_r", alpha: float = 0.6) -> Path:
    """Prototype explanations, one column per input: the input, its concept map [N, h, w] over it
    (red: like its own prototype, blue: like the rival's; spread over the pixels), the exemplar of
    its own prototype and of the rival prototype ([N, C, H, W] each)."""
    plt = _plt()
    n = images.shape[0]
    fig, axes = plt.subplots(4, n, figsize=(1.3 * n, 5.6), squeeze=False)
    maps = torch.nn.functional.interpolate(concept_maps.detach().float().cpu().unsqueeze(1), size=images.shape[-2:],
                                           mode="nearest")[:, 0]
    for j in range(n):
        base = to_display(images[j])
        grey = "gray" if base.ndim == 2 else None
        axes[0][j].imshow(base, cmap=grey)
        axes[1][j].imshow(base, cmap=grey)
        lim = float(maps[j].abs().max()) or 1.0
        axes[1][j].imshow(maps[j].numpy(), cmap=cmap, alpha=alpha, vmin=-lim, vmax=lim)
        for r, (imgs, names) in enumerate(((own, own_titles), (rival, rival_titles)), start=2):
            ex = to_display(imgs[j])
            axes[r][j].imshow(ex, cmap="gray" if ex.ndim == 2 else None)
            if names is not None:
                axes[r][j].set_title(names[j], fontsize=7)
        if titles is not None:
            axes[0][j].set_title(titles[j], fontsize=7)
    for i, name in enumerate(("input", "concept map", "own prototype", "rival prototype")):
        axes[i][0].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)


def load_image(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """[C, H, W] float in [0, 1] resized to ``shape``; raises on anything PIL cannot decode."""
    from PIL import Image

    c, h, w = shape
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1)


class ImageRenderer(Renderer):
    """Heatmaps (the masker expands feature scores to pixels) and PNG/JPEG inputs."""

    def _maps(self, x: torch.Tensor, rows: Sequence[tuple[str, torch.Tensor]], n: int) -> list:
        return [(name, self.masker.expand(s[:n].to(x.device), x[:n]).cpu()) for name, s in rows]

    def gallery(self, x: torch.Tensor, rows, path, captions=None) -> Path:
        n = min(x.shape[0], *(len(s) for _, s in rows)) if rows else x.shape[0]
        return heatmap_grid(x[:n].cpu(), self._maps(x, rows, n), list(captions)[:n] if captions else None,
                            Path(path).with_suffix(".png"))

    def save(self, x: torch.Tensor, scores: torch.Tensor, path, caption=None) -> Path:
        return heatmap_grid(x[:1].cpu(), self._maps(x, [("FEX", scores)], 1), [caption] if caption else None,
                            Path(f"{path}.heatmap.png"))

    def prototypes(self, x: torch.Tensor, explanation: dict, exemplars: torch.Tensor, classes: torch.Tensor, path,
                   captions=None) -> Path:
        """A prototype method's explanations (``kmeans_prototypes``: ``concept_map``, ``prototype``,
        ``rival``) with each prototype's exemplar image ``exemplars`` [P, C, H, W] and class [P]."""
        own, rival = explanation["prototype"].cpu(), explanation["rival"].cpu()
        return prototype_grid(x.cpu(), explanation["concept_map"], exemplars[own], exemplars[rival],
                              list(captions) if captions else None,
                              [f"proto {int(p)} ({int(classes[p])})" for p in own],
                              [f"proto {int(p)} ({int(classes[p])})" for p in rival], Path(path).with_suffix(".png"))

    def read(self, source: Path) -> tuple[list[tuple[dict, Any]], list[dict]]:
        shape = getattr(self.masker, "input_shape", None)
        if shape is None:
            raise DataError("this explainer's masker has no input_shape, so images cannot be sized for it")
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise DataError(f"no files in {source}")
        elif source.suffix.lower() in IMAGE_EXTS:
            files = [source]
        else:
            raise DataError(f"{source.name} is not an image; this explainer's masker ({type(self.masker).__name__}) "
                            "explains images (a PNG/JPEG file or a folder of them)")
        items, skipped = [], []
        self.notes = getattr(self, "notes", None) or Notes()
        for f in files:
            try:  # conversions (input_size / channels / scale) only as asked in self.convert, each noted
                items.append(({"file": f.name}, load_checked(f, shape, notes=self.notes, **(getattr(self, "convert", None) or {}))))
            except InputError as exc:  # readable, but not what the explainer takes: the reason says which setting
                skipped.append({"file": f.name, "reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 - any decode failure: report by name, go on
                skipped.append({"file": f.name, "reason": f"not a readable image ({type(exc).__name__}: "
                                                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''})"})
        return items, skipped

    def parse(self, text: str):
        raise DataError(f"text=... given, but this explainer's masker ({type(self.masker).__name__}) explains images; "
                        "give input=<image or folder>")
