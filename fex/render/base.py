"""The renderer interface: what a modality knows about files and pictures."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from fex.errors import DataError


class Renderer:
    """Reads user inputs and draws attributions for one masker's modality.

    ``rows`` are ``(name, scores [N, F])`` pairs, one per method, over the first N inputs of ``x``.
    ``path`` arguments have no suffix: the renderer adds its own (``.png``, ``.html``).
    The base class draws nothing (returns None) and reads nothing.
    """

    def __init__(self, masker: Any) -> None:
        self.masker = masker

    # ---------------------------------------------------------------- drawing
    def gallery(self, x: Any, rows: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike,
                captions: Sequence[str] | None = None) -> Path | None:
        """Every method's attributions on the same inputs, side by side, in one file."""
        return None

    def save(self, x: Any, scores: torch.Tensor, path: str | os.PathLike, caption: str | None = None) -> Path | None:
        """One input's (a batch of 1) attributions as its own file, if the modality has one."""
        return None

    def show(self, x: Any, scores: torch.Tensor, captions: Sequence[str] | None = None, file: Any = None) -> None:
        """Print attributions to the terminal, if the modality has a way to."""

    def describe(self, x: Any, i: int) -> dict:
        """Extra JSON fields that identify what input ``i`` was made of (e.g. its words)."""
        return {}

    # ---------------------------------------------------------------- reading
    def read(self, source: Path) -> tuple[list[tuple[dict, Any]], list[dict]]:
        """A file or folder -> ``([(record, item), ...], skipped)``; ``record`` names the item in
        outputs, ``skipped`` lists ``{"file", "reason"}`` for inputs that could not be read."""
        raise DataError(f"this explainer's masker ({type(self.masker).__name__}) reads no files")

    def parse(self, text: str) -> tuple[dict, Any]:
        """An input given literally on the command line (``text=...``)."""
        raise DataError(f"this explainer's masker ({type(self.masker).__name__}) takes no text=...; give input=...")

    def collate(self, items: Sequence[Any]) -> Any:
        """Items of :meth:`read` -> a batch the masker and explainer accept."""
        return torch.stack(list(items))


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table: the header, its rule and one line per row (cells as given, ``str``-ed;
    a short row is padded with empty cells). fex's one table writer (reports, benchmarks)."""
    n = len(header)
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * n]
    lines += ["| " + " | ".join([*map(str, r), *[""] * (n - len(r))]) + " |" for r in rows]
    return "\n".join(lines)
