"""MkDocs hook (mkdocs.yml ``hooks:``): repository paths and fex names in the manuals, checked.

1. A page in ``docs/`` links ``../benchmarks/RESULTS_x.md`` or ``../README.md`` (right when read on
   a forge); the site holds them at ``benchmarks/RESULTS_x.md`` and ``index.md`` (written by
   ``gen_pages.py``), so those links are rewritten before MkDocs checks them.
2. A fex object named in prose as inline code (`` `fex.gate.Gate` ``) becomes a cross-reference to
   its API reference entry (mkdocs-autorefs), so a name that no longer exists fails the strict build.
"""
import re

_LINK = re.compile(r"(\]\()\.\./(benchmarks/|README\.md)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_NAME = re.compile(r"(?<!\[)`(fex(?:\.[A-Za-z_]\w*)+)`(?!\])")


def _site_path(match: re.Match) -> str:
    return match.group(1) + ("index.md" if match.group(2) == "README.md" else match.group(2))


def _crossref(text: str) -> str:
    return _NAME.sub(lambda m: f"[`{m.group(1)}`][{m.group(1)}]", text)


def on_page_markdown(markdown, page, **kwargs):
    if "/" in page.file.src_uri:  # generated pages (reference/, benchmarks/) are left as they are
        return markdown
    markdown = _LINK.sub(_site_path, markdown)
    out, last = [], 0
    for fence in _FENCE.finditer(markdown):  # not inside fenced code
        out += [_crossref(markdown[last:fence.start()]), fence.group(0)]
        last = fence.end()
    return "".join(out + [_crossref(markdown[last:])])
