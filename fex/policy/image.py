"""Image backbone: a small encoder-decoder CNN giving per-pixel embeddings with global context."""
from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(1, c_out), nn.ReLU())


class ConvBackbone(nn.Module):
    """[B, C, H, W] -> (per-pixel embeddings [B, D, H, W], global embedding [B, D]).

    ``depth`` stride-2 stages build context; their output is upsampled back to full
    resolution, added to a full-resolution stem, and a global vector is broadcast in,
    so every pixel embedding sees the whole image. With ``coords`` two channels of
    normalised (y, x) coordinates are appended (CoordConv): convolutions alone are
    translation-equivariant and cannot tell two look-alike patches apart by position.
    The global embedding pools the coarsest map to ``global_pool`` x ``global_pool`` cells and
    flattens them (position-aware, like a classifier's FC head); ``global_pool=0`` is a plain
    global average, which learns the class far more slowly. Works for any H, W.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, depth: int = 2, out_dim: int = 32,
                 coords: bool = True, global_pool: int = 0) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_dim = int(out_dim)
        self.coords = bool(coords)
        self.stem = _block(in_channels + 2 * self.coords, width)
        downs, c = [], width
        for i in range(depth):
            downs.append(_block(c, width * 2 ** (i + 1), stride=2))
            c = width * 2 ** (i + 1)
        self.downs = nn.ModuleList(downs)
        self.proj_local = nn.Conv2d(width, out_dim, 1)
        self.proj_ctx = nn.Conv2d(c, out_dim, 1)
        self.global_pool = int(global_pool)
        self.proj_global = nn.Linear(c * max(1, self.global_pool) ** 2, out_dim)
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(out_dim, out_dim, 1))  # per-pixel: cheap at full res

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.coords:
            b, _, h, w = x.shape
            yy = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
            xx = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
            x = torch.cat([x, yy, xx], dim=1)
        local = self.stem(x)
        h = local
        for down in self.downs:
            h = down(h)
        glob = F_.adaptive_avg_pool2d(h, self.global_pool).flatten(1) if self.global_pool else h.mean((2, 3))
        ctx = F_.interpolate(self.proj_ctx(h), size=x.shape[-2:], mode="bilinear", align_corners=False)
        g = self.proj_global(glob)  # [B, D]
        pix = self.mix(self.proj_local(local) + ctx + g[:, :, None, None])
        return pix, g
