"""MkDocs hook (mkdocs.yml ``hooks:``): lets a manual link a measurement by its repository path.

A page in ``docs/`` links ``../benchmarks/RESULTS_x.md`` (right when read on a forge); the site
holds that file at ``benchmarks/RESULTS_x.md`` (copied by ``gen_pages.py``), so the link is
rewritten before MkDocs checks it. The same for ``../benchmarks/figures/...``.
"""
import re

_LINK = re.compile(r"(\]\()\.\./benchmarks/")


def on_page_markdown(markdown, page, **kwargs):
    if page.file.src_uri.count("/") == 0:  # pages at the top of docs/
        return _LINK.sub(r"\1benchmarks/", markdown)
    return markdown
