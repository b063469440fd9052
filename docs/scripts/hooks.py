"""MkDocs hook (mkdocs.yml ``hooks:``): lets a manual link a file by its repository path.

A page in ``docs/`` links ``../benchmarks/RESULTS_x.md`` or ``../README.md`` (right when read on a
forge); the site holds them at ``benchmarks/RESULTS_x.md`` and ``index.md`` (written by
``gen_pages.py``), so those links are rewritten before MkDocs checks them.
"""
import re

_LINK = re.compile(r"(\]\()\.\./(benchmarks/|README\.md)")


def _site_path(match: re.Match) -> str:
    return match.group(1) + ("index.md" if match.group(2) == "README.md" else match.group(2))


def on_page_markdown(markdown, page, **kwargs):
    if "/" not in page.file.src_uri:  # pages at the top of docs/
        return _LINK.sub(_site_path, markdown)
    return markdown
