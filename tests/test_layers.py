"""The package's layers hold: the import-linter contracts in pyproject.toml (layers bottom to top, no
cycle among siblings at any depth), no fex module imported inside a function, and one method registry
that matches the ``method=`` config group."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fex.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def test_lint_imports_keeps_every_contract():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' (import-linter is a dev dependency)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "BROKEN" not in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
    assert res.stdout.count("KEPT") == 2, res.stdout[-2000:]


def function_level_fex_imports(package: Path) -> list[str]:
    hits = []
    for path in sorted(package.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "fex"):
                    hits.append(f"{path.relative_to(package.parent)}:{node.lineno} {fn.name}")
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "fex" for a in node.names):
                    hits.append(f"{path.relative_to(package.parent)}:{node.lineno} {fn.name}")
    return hits


def test_no_fex_module_is_imported_inside_a_function(tmp_path):
    assert function_level_fex_imports(ROOT / "fex") == []
    planted = tmp_path / "pkg"  # the check itself finds one
    planted.mkdir()
    (planted / "m.py").write_text("def f():\n    from fex.io import atomic_write\n    return atomic_write\n")
    assert function_level_fex_imports(planted) == ["pkg/m.py:2 f"]


def test_methods_registry_is_the_method_config_group():
    """Every conf/method option names its registry class, and every registered method has an option."""
    options = {}
    for f in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        options[f.stem] = yaml.safe_load(f.read_text())["_target_"]
    assert set(options) == set(METHODS)
    for name, target in options.items():
        module, cls = target.rsplit(".", 1)
        __import__(module)
        assert getattr(sys.modules[module], cls) is METHODS[name], name
