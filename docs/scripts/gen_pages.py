"""Run by mkdocs-gen-files at build time (mkdocs.yml): writes pages that must follow the tree.

0. ``index.md``: the README, the site's home page (its ``docs/…`` links made site-relative).

1. ``reference/``: one page per module of the ``fex`` package, found by walking ``fex/`` now, so a
   module that is moved, renamed or removed never leaves a stale page; ``reference/SUMMARY.md`` is
   their nav (mkdocs-literate-nav).
2. ``benchmarks/``: the dated measurements (``benchmarks/*.md``) and their figures, copied from the
   repository's ``benchmarks/`` folder, so the manuals link the one copy of each measurement;
   ``benchmarks/SUMMARY.md`` is their nav.
"""
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fex"

with mkdocs_gen_files.open("index.md", "w") as f:
    f.write((ROOT / "README.md").read_text().replace("](docs/", "]("))
mkdocs_gen_files.set_edit_path("index.md", "README.md")

nav = mkdocs_gen_files.Nav()
for path in sorted(PACKAGE.rglob("*.py")):
    module = path.relative_to(ROOT).with_suffix("")
    parts = tuple(module.parts)
    if parts[-1] == "__main__":
        continue
    doc = Path("reference", *parts).with_suffix(".md")
    if parts[-1] == "__init__":
        parts = parts[:-1]
        doc = Path("reference", *parts, "index.md")
    nav[parts] = doc.relative_to("reference").as_posix()
    with mkdocs_gen_files.open(doc, "w") as f:
        f.write(f"::: {'.'.join(parts)}\n")
    mkdocs_gen_files.set_edit_path(doc, path.relative_to(ROOT))
with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
    f.writelines(nav.build_literate_nav())

BENCH = ROOT / "benchmarks"
for path in sorted([*BENCH.glob("*.md"), *(BENCH / "figures").glob("*")]):
    with mkdocs_gen_files.open(path.relative_to(ROOT).as_posix(), "wb") as f:
        f.write(path.read_bytes())
with mkdocs_gen_files.open("benchmarks/SUMMARY.md", "w") as f:
    f.writelines(f"- [{p.stem}]({p.name})\n" for p in sorted(BENCH.glob("*.md")))
