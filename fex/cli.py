"""Console commands (pyproject [project.scripts]); each takes Hydra-style ``key=value`` overrides.

``fex-train`` / ``fex-evaluate`` run the repo-root Hydra shims (same output dirs, multirun,
DDP relaunch); ``fex-explain`` composes ``conf/explain.yaml`` and writes where it is told.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from fex.errors import FexError

ROOT = Path(__file__).resolve().parent.parent


def _shim(name: str) -> None:
    script = ROOT / f"{name}.py"
    sys.argv = [str(script), *sys.argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


def train_main() -> None:
    _shim("train")


def evaluate_main() -> None:
    _shim("evaluate")


def explain_main(argv: list[str] | None = None) -> int:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from fex.io import DISK_ERRNOS, output_error_from
    from fex.launch import one_line
    from fex.tasks.explain import explain

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nusage: fex-explain checkpoint=PATH input=FOLDER|FILE [output_dir=DIR] [key=value ...]")
        return 0
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("explain", overrides=args)
        explain(cfg)
    except (FexError, HydraException, OmegaConfBaseException, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, (FexError, HydraException)):
            if exc.errno not in DISK_ERRNOS:
                raise
            exc = output_error_from(exc)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        if argv is None:
            sys.exit(2)
        return 2
    return 0
