"""Words: an HTML page with highlighted words, ANSI-coloured terminal text, and reading text files.

Scores are normalised per example by the largest absolute score, so the most important
word is the most saturated; positive scores are green, negative (for signed methods such
as IG or KernelShap) red.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

import torch

from fex.errors import DataError, FexError
from fex.inputs import read_text_lines
from fex.io import write_text
from fex.render.base import Renderer


def _norm(scores: Sequence[float]) -> list[float]:
    m = max((abs(float(s)) for s in scores), default=0.0)
    return [float(s) / m if m > 0 else 0.0 for s in scores]


def _as_rows(words: Sequence[Sequence[str]], scores) -> list[list[float]]:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().tolist()
    rows = []
    for i, w in enumerate(words):
        row = list(scores[i])[: len(w)]
        if len(row) != len(w):
            raise ValueError(f"example {i} has {len(w)} words but {len(row)} scores")
        rows.append([float(v) for v in row])
    return rows


def html_words(words: Sequence[str], scores: Sequence[float]) -> str:
    """One example's words as <span>s with background opacity = |normalised score|."""
    out = []
    for w, s, n in zip(words, scores, _norm(scores)):
        rgb = "22,163,74" if n >= 0 else "220,38,38"
        out.append(f'<span class="w" style="background: rgba({rgb},{abs(n):.3f})" '
                   f'title="{float(s):.4f}">{html.escape(w)}</span>')
    return " ".join(out)


def html_page(words: Sequence[Sequence[str]], scores, predictions: Sequence[str] | None = None,
              probabilities: Sequence[float] | None = None, labels: Sequence[str] | None = None,
              title: str = "fex word attributions", method_rows: dict | None = None,
              captions: Sequence[str] | None = None) -> str:
    """A self-contained HTML page, one block per example.

    Args:
        words: the word features of each example.
        scores: [B, F] tensor or per-example lists (padding beyond each example's words is ignored).
        predictions / probabilities: the explained class name and its probability, per example.
        labels: true labels (optional).
        method_rows: optional ``{method name: scores}`` shown under the main row, for comparisons.
        captions: free text per example (e.g. ``y=fresh pred=fresh``).
    """
    rows = _as_rows(words, scores)
    extra = {k: _as_rows(words, v) for k, v in (method_rows or {}).items()}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;line-height:1.9}",
        ".ex{border-bottom:1px solid #ddd;padding:.6em 0}.meta{color:#555;font-size:.9em}",
        ".w{padding:.1em .15em;border-radius:3px}.m{color:#777;font-size:.8em;margin-right:.5em}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='meta'>Green: the word supports the explained class (darker = more); red: it opposes it. "
        "Hover a word for its score.</p>",
    ]
    for i, (w, s) in enumerate(zip(words, rows)):
        meta = [f"#{i}"]
        if captions is not None:
            meta.append(html.escape(str(captions[i])))
        if predictions is not None:
            meta.append(f"prediction <b>{html.escape(str(predictions[i]))}</b>")
        if probabilities is not None:
            meta.append(f"probability {float(probabilities[i]):.3f}")
        if labels is not None:
            meta.append(f"label {html.escape(str(labels[i]))}")
        parts.append(f"<div class='ex'><div class='meta'>{' &middot; '.join(meta)}</div><div>{html_words(w, s)}</div>")
        for name, r in extra.items():
            parts.append(f"<div><span class='m'>{html.escape(name)}</span>{html_words(w, r[i])}</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | os.PathLike, words, scores, **kw) -> Path:
    return write_text(path, html_page(words, scores, **kw))


def ansi_words(words: Sequence[str], scores: Sequence[float], color: bool = True) -> str:
    """Words with a 24-bit background colour by normalised score (plain ``word[0.42]`` without colour)."""
    if not color:
        return " ".join(f"{w}[{float(s):.2f}]" for w, s in zip(words, scores))
    out = []
    for w, n in zip(words, _norm(scores)):
        a = abs(n)
        base = (22, 163, 74) if n >= 0 else (220, 38, 38)
        r, g, b = (int(255 + (c - 255) * a) for c in base)  # blend white -> colour
        fg = "30" if a < 0.6 else "97"
        out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[{fg}m{w}\x1b[0m")
    return " ".join(out)


def print_terminal(words: Sequence[Sequence[str]], scores, predictions: Sequence[str] | None = None,
                   probabilities: Sequence[float] | None = None, color: bool | None = None, file=None) -> None:
    """Print each example's words coloured by attribution (colour off when not a TTY or NO_COLOR set)."""
    import sys

    file = file or sys.stdout
    if color is None:
        color = hasattr(file, "isatty") and file.isatty() and not os.environ.get("NO_COLOR")
    for i, (w, s) in enumerate(zip(words, _as_rows(words, scores))):
        head = f"[{i}]"
        if predictions is not None:
            head += f" {predictions[i]}"
        if probabilities is not None:
            head += f" p={float(probabilities[i]):.3f}"
        print(f"{head}: {ansi_words(w, s, color)}", file=file)


class TextRenderer(Renderer):
    """HTML pages of highlighted words, coloured words in the terminal, and text files
    (one text per line, or a CSV/TSV ``text`` column) as inputs."""

    def _words(self, x: dict, n: int) -> list[list[str]]:
        return list(x["words"])[:n]

    def gallery(self, x: dict, rows, path, captions=None) -> Path | None:
        if not rows:
            return None
        n = min(len(x["words"]), *(len(s) for _, s in rows))
        (_, main), *others = rows
        return write_html(Path(path).with_suffix(".html"), self._words(x, n), main[:n],
                          captions=list(captions)[:n] if captions else None,
                          method_rows={name: s[:n] for name, s in others} if others else None,
                          title=f"{rows[0][0]} word attributions")

    def show(self, x: dict, scores, captions=None, file=None) -> None:
        print_terminal(list(x["words"]), scores, list(captions) if captions else None, file=file)

    def describe(self, x: dict, i: int) -> dict:
        return {"words": list(x["words"][i])}

    def read(self, source: Path):
        if source.is_dir():
            raise DataError(f"{source} is a folder; this explainer's masker ({type(self.masker).__name__}) explains "
                            "texts: give a .txt file (one text per line), a .csv/.tsv file (a text column) or text=...")
        items, skipped = [], []
        for j, t in ((n, t.strip()) for n, t in read_text_lines(source)):  # true line numbers (blank lines count)
            try:
                self.masker.encode([t])  # a text the masker refuses is reported by line, the rest go on
                items.append(({"line": j, "text": t}, t))
            except FexError as exc:
                skipped.append({"file": f"{source.name}:{j}", "reason": str(exc)})
        return items, skipped

    def parse(self, text: str):
        self.masker.encode([str(text)])  # a bad sentence is the error itself, not a skipped row
        return {"line": 1, "text": str(text)}, str(text)

    def collate(self, items) -> dict:
        return self.masker.encode(list(items))
