"""The documentation builds strictly, and the README's links and Layout match the tree.

`mkdocs build --strict` fails on a broken link, a page left out of the nav, or an API name
(`::: fex.x.Y`) that no longer exists; the API reference is generated from the package tree at
build time (docs/scripts/gen_pages.py), and griffe reads the sources without importing fex.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """The docs tools come with the dev extra (scripts/setup.sh installs it); no network needed."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, env=ENV, capture_output=True, text=True, timeout=300)


def test_docs_build_strict(tmp_path):
    res = mkdocs_build(ROOT, tmp_path / "site")
    assert res.returncode == 0, res.stderr[-4000:]
    for page in ["index.html", "api/index.html", "reference/fex/blackbox/index.html",
                 "benchmarks/RESULTS_mnist/index.html"]:
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ["fex.load_explainer", "fex.ExplainerModule.attribute", "fex.ExplainerModule.explain",
                 "fex.BlackBox", "fex.gate.Gate", "fex.gate.Screen", "fex.registry.register"]:
        link = rf'<a [^>]*href="[^"]*reference/[^"#]*#fex\.[\w.]+"[^>]*><code>{re.escape(name)}</code></a>'
        assert re.search(link, api), f"the API page links {name} to its reference entry"


def test_docs_build_fails_on_stale_api_name_and_broken_link(tmp_path):
    """The check above can fail: a copy of the docs with one stale name and one dead link does not build."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for item in ["mkdocs.yml", "README.md", "docs", "fex", "benchmarks"]:
        src = ROOT / item
        (shutil.copytree(src, copy / item, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
         if src.is_dir() else shutil.copy(src, copy / item))
    api = (ROOT / "docs" / "api.md").read_text()
    (copy / "docs" / "api.md").write_text(api + "\nUse `fex.gate.NoSuchGate`, see [x](no-such-page.md).\n")
    res = mkdocs_build(copy, tmp_path / "site")
    assert res.returncode != 0, res.stderr[-2000:]
    assert "fex.gate.NoSuchGate" in res.stderr and "no-such-page.md" in res.stderr, res.stderr[-2000:]


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links, "the README links the docs"
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not missing, missing


def layout_block() -> str:
    section = README.read_text().split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_readme_layout_matches_the_tree():
    """Every path the Layout names exists, and every module and subpackage of fex/ is named."""
    block = layout_block()
    named = set(re.findall(r"(?<![\w/.])((?:[\w.-]+/)+(?:[\w.-]+\.\w+)?|[\w-]+\.(?:py|toml|yml|sh))(?=[\s,]|$)", block))
    assert named, block
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the Layout names paths that do not exist: {missing}"
    children = {p.relative_to(ROOT).as_posix() + ("/" if p.is_dir() else "")
                for p in (ROOT / "fex").iterdir()
                if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    unnamed = sorted(children - named)
    assert not unnamed, f"the Layout does not name: {unnamed}"
