"""Image maskers: a grid of rectangular patches (any grid) as a Captum ``feature_mask``."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F_

from fex.errors import InputError
from fex.inputs import check_range, to_float32
from fex.maskers.base import Masker
from fex.render.image import ImageRenderer

BASELINES = ("zeros", "mean", "blur")


def grid_feature_mask(height: int, width: int, grid: Sequence[int]) -> torch.Tensor:
    """Long [H, W] of patch ids 0..gh*gw-1, row-major. Uneven sizes split as evenly as possible."""
    gh, gw = int(grid[0]), int(grid[1])
    if not (1 <= gh <= height and 1 <= gw <= width):
        raise InputError(f"patch grid {gh}x{gw} does not fit a {height}x{width} image")
    rows = torch.arange(height) * gh // height
    cols = torch.arange(width) * gw // width
    return rows[:, None] * gw + cols[None, :]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] with reflect padding (no torchvision needed)."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    y = F_.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    kw = k[radius - pad_w : radius + pad_w + 1]
    y = F_.conv2d(y, kw.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F_.pad(y, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    kh = k[radius - pad_h : radius + pad_h + 1]
    return F_.conv2d(y, kh.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class PatchMasker(Masker):
    """Features are patches of a ``grid`` = (rows, cols) over [C, H, W] images.

    Args:
        grid: patches per side, e.g. ``[7, 7]`` (4x4-pixel patches on 28x28 MNIST).
        input_shape: expected [C, H, W]; inputs of another shape are refused.
        baseline: what a removed patch becomes: ``zeros``, ``mean`` (the per-channel dataset
            mean in ``fill``) or ``blur`` (a Gaussian blur of the same image, ``blur_sigma``).
        fill: per-channel values for ``baseline=mean`` (the train task fills it from the data).
        value_range: [lo, hi] of the pixels the explainer is trained on (the data config's
            ``value_range``); inputs outside it (e.g. 0-255 pixels for a [0, 1] model) are refused.
    """

    def __init__(
        self,
        grid: Sequence[int] = (7, 7),
        input_shape: Sequence[int] | None = None,
        baseline: str = "zeros",
        fill: Sequence[float] | None = None,
        blur_sigma: float = 2.0,
        value_range: Sequence[float] | None = None,
    ) -> None:
        if baseline not in BASELINES:
            raise InputError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if len(grid) != 2:
            raise InputError(f"grid must be [rows, cols], got {list(grid)}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.baseline = baseline
        self.fill = None if fill is None else [float(v) for v in fill]
        self.blur_sigma = float(blur_sigma)
        self.value_range = None if value_range is None else (float(value_range[0]), float(value_range[1]))
        self._fmask_cache: dict[tuple, torch.Tensor] = {}
        if self.input_shape is not None:
            if len(self.input_shape) != 3:
                raise InputError(f"input_shape must be [C, H, W], got {list(self.input_shape)}")
            grid_feature_mask(self.input_shape[1], self.input_shape[2], self.grid)

    # ------------------------------------------------------------------ checks
    def validate(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"image explainer expects a tensor [B, C, H, W], got {type(x).__name__}")
        if x.dim() != 4:
            raise InputError(f"image explainer expects [B, C, H, W], got shape {tuple(x.shape)}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            c, h, w = self.input_shape
            if x.shape[1] != c:
                raise InputError(f"expected {c} channel(s), got {x.shape[1]} (input shape {tuple(x.shape)})")
            raise InputError(f"expected images of {h}x{w}, got {x.shape[2]}x{x.shape[3]}")
        if not x.is_floating_point():
            raise InputError(f"expected a floating-point image tensor, got {x.dtype} (scale integer pixels, "
                             "e.g. x.float() / 255)")
        if not torch.isfinite(x).all():
            raise InputError("input contains NaN or Inf values")
        check_range(x, self.value_range)
        if self.baseline == "mean" and self.fill is not None and len(self.fill) not in (1, x.shape[1]):
            raise InputError(f"baseline fill has {len(self.fill)} values for {x.shape[1]} channels")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """float64/float16 images (numpy's default is float64) are cast to float32, then validated."""
        x = to_float32(x)
        self.validate(x)
        return x

    # ------------------------------------------------------------------ features
    def feature_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Captum ``feature_mask``: long [1, 1, H, W], broadcastable to x."""
        return self._fmask(x).view(1, 1, *x.shape[-2:])

    def _fmask(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1], x.device)
        if key not in self._fmask_cache:
            self._fmask_cache[key] = grid_feature_mask(x.shape[-2], x.shape[-1], self.grid).to(x.device)
        return self._fmask_cache[key]

    def num_features(self, x: torch.Tensor | None = None) -> int:
        return self.grid[0] * self.grid[1]

    def batch_size(self, x: torch.Tensor) -> int:
        return int(x.shape[0])

    def device_of(self, x: torch.Tensor) -> torch.device:
        return x.device

    def baseline_of(self, x: torch.Tensor) -> torch.Tensor:
        """What x looks like with every feature removed, [B, C, H, W]."""
        if self.baseline == "zeros":
            return torch.zeros_like(x)
        if self.baseline == "blur":
            return gaussian_blur(x, self.blur_sigma)
        if self.fill is None:
            raise InputError("baseline=mean needs the dataset mean in masker.fill")
        return torch.as_tensor(self.fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).expand_as(x)

    # ------------------------------------------------------------------ masking
    def pixel_masks(self, masks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Masks [B, K, F] -> pixel masks [B, K, H, W]."""
        return masks[..., self._fmask(x)]

    def apply(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if masks.dim() != 3 or masks.shape[0] != b or masks.shape[2] != self.num_features():
            raise InputError(f"masks must be [B={b}, K, F={self.num_features()}], got {tuple(masks.shape)}")
        m = self.pixel_masks(masks.to(x.dtype), x).unsqueeze(2)  # [B, K, 1, H, W]
        base = self.baseline_of(x).unsqueeze(1)  # [B, 1, C, H, W]
        out = base + m * (x.unsqueeze(1) - base)  # [B, K, C, H, W]
        return out.reshape(b * masks.shape[1], c, h, w)

    def pool(self, feats: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean of per-pixel features [B, D, H, W] over each patch -> [B, F, D]."""
        fm = self._fmask(feats).flatten()
        onehot = F_.one_hot(fm, self.num_features()).to(feats.dtype)  # [HW, F]
        onehot = onehot / onehot.sum(0, keepdim=True)
        return torch.einsum("bdn,nf->bfd", feats.flatten(2), onehot)

    def expand(self, scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scores [B, F] -> [B, C, H, W] (each pixel gets its patch's score)."""
        pix = scores[:, self._fmask(x)]  # [B, H, W]
        return pix.unsqueeze(1).expand(-1, x.shape[1], -1, -1)

    def renderer(self):
        """Heatmap PNGs; PNG/JPEG files as inputs."""
        return ImageRenderer(self)
