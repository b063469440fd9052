"""HTML view of word interactions (SPEX / ProxySPEX on text): per snippet, the words coloured by their
Shapley values, then the top interactions, each shown as the sentence with only its words lit and
its value, with the black-box queries the explanation cost. Reuses the text renderer's
``html_words`` (green supports the explained class, red opposes it)."""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Sequence

try:  # the text renderer is moving into the fex.render package
    from fex.render.text import html_words
except ImportError:  # pragma: no cover - depends on the merge order
    from fex.render.text import html_words

from fex.io import write_text

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;line-height:1.9}"
         ".ex{border-bottom:1px solid #ddd;padding:.6em 0}.meta{color:#555;font-size:.9em}"
         ".w{padding:.1em .15em;border-radius:3px}.i{margin-left:1.5em;font-size:.92em}"
         ".v{display:inline-block;width:11em;color:#333;font-family:monospace}")


def interaction_block(words: Sequence[str], shapley: Sequence[float], interactions: dict, queries: int,
                      meta: Sequence[str] = ()) -> str:
    """One snippet: Shapley-coloured words, then one line per interaction ``{feature ids: value}``."""
    head = " &middot; ".join([*map(str, meta), f"{int(queries)} queries"])
    parts = [f"<div class='ex'><div class='meta'>{head}</div>",
             f"<div><span class='v'>Shapley values</span>{html_words(words, list(shapley)[:len(words)])}</div>"]
    for ids, v in interactions.items():
        lit = [float(v) if i in ids else 0.0 for i in range(len(words))]
        label = " × ".join(html.escape(words[i]) for i in ids)
        parts.append(f"<div class='i'><span class='v' title='{float(v):.5f}'>{float(v):+.3f}</span>"
                     f"{html_words(words, lit)} <span class='meta'>({label})</span></div>")
    parts.append("</div>")
    return "\n".join(parts)


def interactions_page(blocks: Sequence[str], title: str = "fex word interactions", intro: str = "") -> str:
    return "\n".join([
        "<!doctype html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
        "<p class='meta'>First line: each word coloured by its Shapley value (green supports the explained "
        "class, red opposes it; hover for the value). Below: the strongest interactions, each with its "
        f"value and only its words lit.</p><p class='meta'>{html.escape(intro)}</p>",
        *blocks, "</body></html>"])


def write_interactions_html(path: str | os.PathLike, blocks: Sequence[str], **kw) -> Path:
    return write_text(path, interactions_page(blocks, **kw))
