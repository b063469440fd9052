"""Input shifts that make an explainer's answers wrong, for testing gates (:mod:`fex.gate`).

Letters: B batch, F features, C channels, H W pixels.

* Images ([B, C, H, W] in [0, 1]): :func:`invert_images` and :func:`noise_images`, out of distribution;
  geometric ones, :func:`rotate_images`, :func:`translate_images`, :func:`scale_images`,
  :func:`flip_images` (either axis) and :func:`turn_images` (any angle); other data,
  :func:`sklearn_digits` (scikit-learn's 8x8 digits, upscaled),
  :func:`photo_patches` (grayscale patches of scikit-learn's two sample photographs) and
  :func:`printed_letters` (capital letters, or any characters such as printed digits, in Pillow's
  bundled font).
* Text (lists of strings): :func:`shuffle_words` (each snippet's words in a random order) and
  :func:`replace_words` (a random share of each snippet's words swapped for other words of the
  batch), out of distribution.
* Any modality: :class:`PermutedExplainer`, a deliberately corrupted explainer whose feature scores
  are permuted within each input's valid features.
"""
from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch

from fex.maskers.text import split_words


# --------------------------------------------------------------------------- images
def invert_images(x: torch.Tensor) -> torch.Tensor:
    """``1 - x`` (pixels in [0, 1])."""
    return 1 - x


def noise_images(x: torch.Tensor, std: float = 0.5, seed: int = 0) -> torch.Tensor:
    """``x + N(0, std^2)``, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def rotate_images(x: torch.Tensor, quarter_turns: int = 1) -> torch.Tensor:
    """Each image turned by ``quarter_turns`` x 90 degrees (counter-clockwise)."""
    return torch.rot90(x, int(quarter_turns), dims=(-2, -1))


def translate_images(x: torch.Tensor, dx: int = 6, dy: int = 0) -> torch.Tensor:
    """Each image moved ``dx`` pixels right and ``dy`` down; uncovered pixels become 0."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def scale_images(x: torch.Tensor, factor: float = 0.6) -> torch.Tensor:
    """Each image shrunk by ``factor`` (bilinear, antialiased) and centred on a 0 background."""
    if not 0 < factor <= 1:
        raise ValueError(f"scale factor must be in (0, 1], got {factor}")
    h, w = x.shape[-2:]
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    small = torch.nn.functional.interpolate(x.reshape(-1, *x.shape[-3:]), size=(sh, sw), mode="bilinear",
                                            align_corners=False, antialias=True).clamp(0, 1)
    out = torch.zeros_like(x)
    top, left = (h - sh) // 2, (w - sw) // 2
    out[..., top:top + sh, left:left + sw] = small.view(*x.shape[:-2], sh, sw)
    return out


def flip_images(x: torch.Tensor, axis: str = "horizontal") -> torch.Tensor:
    """Each image mirrored left to right (``axis="horizontal"``) or top to bottom (``"vertical"``)."""
    if axis not in ("horizontal", "vertical"):
        raise ValueError(f"flip axis must be horizontal or vertical, got {axis!r}")
    return x.flip(-1 if axis == "horizontal" else -2)


def turn_images(x: torch.Tensor, degrees: float = 45.0) -> torch.Tensor:
    """Each image turned by ``degrees`` (counter-clockwise) about its centre, bilinear, corners filled with 0."""
    a = math.radians(float(degrees))
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    flat = x.reshape(-1, *x.shape[-3:])
    grid = torch.nn.functional.affine_grid(theta.expand(len(flat), 2, 3), list(flat.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp(0, 1).view_as(x)


def printed_letters(size: int = 28, n: int = 300, seed: int = 0,
                    chars: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ") -> torch.Tensor:
    """``n`` white characters of ``chars`` (capital letters A-Z: another kind of character entirely; ``"0123456789"``:
    printed digits, other data of the same task) on black, drawn with Pillow's bundled scalable font at a random
    size (55-85% of ``size``) and place: [n, 1, size, size] in [0, 1]."""
    if not chars:
        raise ValueError("printed_letters needs at least one character")
    from PIL import Image, ImageDraw, ImageFont  # third-party, only this shift needs it

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        letter = chars[int(torch.randint(0, len(chars), (1,), generator=g))]
        px = int(size * (0.55 + 0.3 * float(torch.rand(1, generator=g))))
        font = ImageFont.load_default(size=px)
        im = Image.new("L", (size, size))
        draw = ImageDraw.Draw(im)
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
        w, h = right - left, bottom - top
        dx = int(torch.randint(0, max(1, size - w), (1,), generator=g)) - left
        dy = int(torch.randint(0, max(1, size - h), (1,), generator=g)) - top
        draw.text((dx, dy), letter, fill=255, font=font)
        out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size).float() / 255.0)
    return torch.stack(out)[:, None]


def photo_patches(size: int = 28, n: int = 300, crop: int = 84, seed: int = 0) -> torch.Tensor:
    """``n`` grayscale ``crop`` x ``crop`` patches at random places of scikit-learn's two sample photographs
    (another kind of data entirely), downscaled to ``size`` x ``size`` and stretched to [0, 1] each:
    [n, 1, size, size]."""
    from sklearn.datasets import load_sample_images  # third-party, only this shift needs it

    g = torch.Generator().manual_seed(seed)
    photos = [torch.from_numpy(im.astype("float32")).mean(-1) / 255.0 for im in load_sample_images().images]
    out = []
    for i in range(n):
        ph = photos[i % len(photos)]
        r = int(torch.randint(0, ph.shape[0] - crop + 1, (1,), generator=g))
        c = int(torch.randint(0, ph.shape[1] - crop + 1, (1,), generator=g))
        out.append(ph[r:r + crop, c:c + crop])
    x = torch.nn.functional.interpolate(torch.stack(out)[:, None], size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def sklearn_digits(size: int = 28, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits (another data set of the same task), scaled to [0, 1] and
    upscaled bilinearly to ``size`` x ``size``: (x [N, 1, size, size], labels [N])."""
    from sklearn.datasets import load_digits  # third-party, only this shift needs it

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.as_tensor(d.target, dtype=torch.long)
    return (x, y) if n is None else (x[:n], y[:n])


# --------------------------------------------------------------------------- text
def shuffle_words(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Each snippet's words in a random order (the same words, so the same features)."""
    rng = random.Random(seed)
    out = []
    for t in texts:
        words = split_words(t)
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def replace_words(texts: Sequence[str], fraction: float = 0.3, seed: int = 0) -> list[str]:
    """Replace ``ceil(fraction * n)`` random words of each n-word snippet by words drawn uniformly from the
    batch's vocabulary (its distinct words): the word count stays, the sentences stop making sense."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = random.Random(seed)
    split = [split_words(t) for t in texts]
    vocab = sorted({w for words in split for w in words})
    out = []
    for words in split:
        for i in rng.sample(range(len(words)), math.ceil(fraction * len(words)) if words else 0):
            words[i] = rng.choice(vocab)
        out.append(" ".join(words))
    return out


# --------------------------------------------------------------------------- any modality
def permute_valid(scores: torch.Tensor, valid: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Scores [B, F] with each input's valid features' scores permuted among themselves; invalid ones 0.

    An input with n valid features gets ``randperm(n)`` from a generator seeded by ``seed``: the
    permutation depends only on (seed, n), so it does not change with batching (and on fixed-F
    inputs every input gets the same one).
    """
    valid = valid.to(scores.device)
    out = torch.zeros_like(scores)
    perms: dict[int, torch.Tensor] = {}
    for i in range(scores.shape[0]):
        idx = valid[i].nonzero().flatten()
        n = idx.numel()
        if n not in perms:
            perms[n] = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(scores.device)
        out[i, idx] = scores[i, idx[perms[n]]]
    return out


class PermutedExplainer:
    """A deliberately corrupted explainer: the wrapped one's feature scores permuted within each input's
    valid features (:func:`permute_valid`). Same target, masker and classes as the wrapped one."""

    name = "fex_corrupted"

    def __init__(self, explainer: Any, seed: int = 0) -> None:
        self.inner, self.masker, self.blackbox = explainer, explainer.masker, getattr(explainer, "blackbox", None)
        self.seed = int(seed)

    def explain(self, x: Any, target: Any = None) -> dict:
        out = dict(self.inner.explain(x, target))
        valid = self.masker.valid(x)
        out["scores"] = permute_valid(out["scores"], valid, self.seed)
        out["attributions"] = self.masker.expand(out["scores"], x)
        return out
