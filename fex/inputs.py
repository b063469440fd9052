"""User inputs: explicit conversions of images and tensors, and fex's one reader of text files.

Input conversions are explicit: each one is asked for in config and logged, or refused.

An explainer was trained on inputs of one shape, channel count and value range. A file or
tensor that differs is not quietly squashed into that form (a 16-bit PNG saturated to white,
an RGB photo shrunk to 28x28 grey, 0-255 pixels read as 0-1): fex refuses it with one line
saying which setting would convert it, and when that setting is given, logs a note.

Settings (``fex-explain`` config keys):
    input_size: ``strict`` (default: other sizes refused) | ``resize`` (bilinear, noted)
    channels:   ``strict`` (default: other channel counts refused) | ``convert`` (grey<->RGB, alpha dropped; noted)
    scale:      ``auto`` (default: divide by the file format's maximum, 255 for 8-bit and 65535 for
                16-bit images, giving [0, 1]) | a number to divide raw pixel values by (noted)

Text files (texts to explain, data files) are read by :func:`read_text_file` only: UTF-8, missing or
undecodable files refused with one line; :func:`read_text_lines` / :func:`read_texts` turn one into texts.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fex.errors import FexError, InputError

log = logging.getLogger("fex")

INPUT_SIZE = ("strict", "resize")
CHANNELS = ("strict", "convert")
# PIL mode -> (channels without alpha, has alpha, format maximum)
_MODES = {
    "1": (1, False, 1.0), "L": (1, False, 255.0), "LA": (1, True, 255.0), "P": (3, False, 255.0),
    "PA": (3, True, 255.0), "RGB": (3, False, 255.0), "RGBA": (3, True, 255.0), "RGBX": (3, False, 255.0),
    "CMYK": (4, False, 255.0), "YCbCr": (3, False, 255.0),
    "I;16": (1, False, 65535.0), "I;16B": (1, False, 65535.0), "I;16L": (1, False, 65535.0),
    "I": (1, False, 65535.0),  # PIL opens 16-bit greyscale PNGs as "I" (32-bit) on some versions
}


class Notes:
    """Conversions applied, each logged once (with a count at the end via :meth:`summary`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, note: str) -> None:
        if note not in self.counts:
            log.warning("note: %s", note)
        self.counts[note] = self.counts.get(note, 0) + 1

    def summary(self) -> list[str]:
        return [f"{n} ({c} input{'s' if c > 1 else ''})" for n, c in self.counts.items()]


def check_options(input_size: str = "strict", channels: str = "strict", scale: Any = "auto") -> None:
    if input_size not in INPUT_SIZE:
        raise InputError(f"input_size must be one of {INPUT_SIZE}, got {input_size!r}")
    if channels not in CHANNELS:
        raise InputError(f"channels must be one of {CHANNELS}, got {channels!r}")
    if scale != "auto" and not (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
                                and math.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be 'auto' or a positive number (raw pixel values are divided by it), got {scale!r}")


def load_image(path: str | Path, shape: Sequence[int], input_size: str = "strict", channels: str = "strict",
               scale: Any = "auto", notes: Notes | None = None) -> torch.Tensor:
    """An image file -> float32 [C, H, W] for an explainer trained on ``shape`` = (C, H, W).

    Raises :class:`InputError` (one line, naming the setting that would convert it) for another
    size or channel count, and lets PIL's decode errors through for unreadable files."""
    from PIL import Image

    check_options(input_size, channels, scale)
    notes = notes or Notes()
    c, h, w = (int(s) for s in shape)
    name = Path(path).name
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode not in _MODES:
            raise InputError(f"{name}: unsupported image mode {mode!r}")
        file_c, alpha, fmt_max = _MODES[mode]
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if alpha or "transparency" in im.info else "RGB")
            alpha = im.mode == "RGBA"
        if mode == "CMYK":
            raise InputError(f"{name}: CMYK images are not supported; convert it to RGB first")
        arr = np.asarray(im)
    arr = arr.astype(np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mode == "1":
        arr = arr.astype(np.float64)  # PIL gives booleans: 0/1
    have = file_c + int(alpha)
    if have != c:
        desc = f"{have} channel{'s' if have > 1 else ''} ({mode})"
        if channels != "convert":
            raise InputError(f"{name} has {desc}; the explainer expects {c}; set channels=convert to convert it "
                             "(grey<->RGB, alpha dropped)")
        arr = arr[:, :, :file_c]  # drop alpha
        if c == 1 and file_c == 3:
            arr = arr @ np.array([0.299, 0.587, 0.114])[:, None]  # ITU-R 601 luma, as PIL's "L"
        elif c == 3 and file_c == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.shape[2] != c:
            raise InputError(f"{name} has {desc}; cannot convert to {c} channels")
        notes.add(f"converted {desc} images to {c} channel{'s' if c > 1 else ''} (channels=convert)")
    div = fmt_max if scale == "auto" else float(scale)
    if scale != "auto":
        notes.add(f"divided raw pixel values by {div:g} (scale={scale}), not by the format's maximum {fmt_max:g}")
    t = torch.from_numpy(np.ascontiguousarray(arr / div, dtype=np.float32)).permute(2, 0, 1)  # [C, H, W]
    if tuple(t.shape[1:]) != (h, w):
        if input_size != "resize":
            raise InputError(f"{name} is {t.shape[2]}x{t.shape[1]} pixels; the explainer expects {w}x{h}; "
                             "set input_size=resize to resize it")
        notes.add(f"resized {t.shape[2]}x{t.shape[1]} images to {w}x{h} (input_size=resize)")
        t = torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False,
                                            antialias=True)[0]
    return t


def check_range(x: torch.Tensor, value_range: Sequence[float] | None, tol: float = 1e-3) -> None:
    """Refuse pixels outside the range the explainer was trained on (e.g. 0-255 for a [0, 1] model)."""
    if value_range is None or x.numel() == 0:
        return
    lo, hi = float(value_range[0]), float(value_range[1])
    span = (hi - lo) * tol
    xmin, xmax = float(x.min()), float(x.max())
    if xmin >= lo - span and xmax <= hi + span:
        return
    if hi <= 1.0 + tol and xmin >= -tol and 1.5 < xmax <= 255 + tol:
        raise InputError(f"pixel values look 0-255 (max {xmax:g}) but this explainer was trained on [{lo:g}, {hi:g}]; "
                         "divide by 255 (fex-explain: leave scale=auto)")
    raise InputError(f"pixel values span [{xmin:.4g}, {xmax:.4g}], outside the range [{lo:g}, {hi:g}] this explainer "
                     "was trained on")


def to_float32(x: Any) -> Any:
    """Floating tensors of another precision (float64 is numpy's default) are cast to float32."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    return x


def class_index(target: Any, batch: int, num_classes: int, device: Any = None) -> torch.Tensor:
    """``target`` (an int, a sequence or a tensor of ints) -> long [B]; non-integer values (2.7),
    booleans and out-of-range classes are refused instead of truncated."""
    t = torch.as_tensor(target, device=device)
    if t.dtype == torch.bool:
        raise InputError(f"target must be class indices, got booleans {t.flatten().tolist()[:5]}")
    if t.is_floating_point() or t.is_complex():
        if t.is_complex() or not torch.isfinite(t).all() or (t != t.round()).any():
            raise InputError(f"target must be whole class indices, got {t.flatten().tolist()[:5]}")
    t = t.long().flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise InputError(f"target has {t.numel()} entries for a batch of {batch}")
    if (t < 0).any() or (t >= num_classes).any():
        raise InputError(f"target class out of range 0..{num_classes - 1}: {t.tolist()[:8]}")
    return t


def read_text_file(path: str | os.PathLike, error: type[FexError] = InputError, what: str = "text file") -> str:
    """The one reader of text files: the whole file decoded as UTF-8 (a BOM dropped); a missing or
    non-UTF-8 file is refused with one line (``error``: InputError for inputs, DataError for data)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{p} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from exc


def read_text_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Texts to explain, with where they stand: (line number in the file, text) for each non-blank text;
    plain text one per line; CSV/TSV the ``text`` column (else the first). Blank lines are skipped but
    counted, so numbers match an editor's. Missing, non-UTF-8 and empty files are refused."""
    p = Path(path).expanduser()
    content = read_text_file(p)
    if p.suffix.lower() in (".csv", ".tsv"):
        try:
            reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            rows = [(reader.line_num, r) for r in reader]
        except csv.Error as exc:
            raise InputError(f"cannot read {p}: {exc}") from exc
        header = rows[0][1] if rows else []
        col = header.index("text") if "text" in header else 0
        body = rows[1:] if "text" in header else rows
        lines = [(n, r[col]) for n, r in body if len(r) > col and r[col].strip()]
    else:
        text = content.replace("\r\n", "\n").replace("\r", "\n")
        lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise InputError(f"{p} is empty: no text to explain")
    return lines


def read_texts(path: str | os.PathLike) -> list[str]:
    """Texts to explain from a file (:func:`read_text_lines` without line numbers, stripped)."""
    return [t.strip() for _, t in read_text_lines(path)]
