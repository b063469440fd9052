"""What the Hydra entry shims (train.py, evaluate.py) share: one-line errors and exit code 2.

``precheck(config_name)`` composes the config the way ``@hydra.main`` will, before Hydra
creates a run directory, so that a bad override (``foo=1``), a value of the wrong type
(``trainer.max_epochs=abc`` where the config has an integer), a missing mandatory value
(``checkpoint=???``) or an unwritable run directory ends with ``error: ...`` and exit 2
instead of Hydra's multi-line report (or a traceback later) and exit 1. ``run(task, cfg)`` calls the task and turns
fex errors and disk errors (full, read-only) into the same one line, removing the run
directory if the failed run left nothing in it but Hydra's bookkeeping.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from fex.errors import FexError
from fex.io import DISK_ERRNOS, check_writable, output_error_from, remove_empty_dirs

CONF = Path(__file__).resolve().parent.parent / "conf"
HYDRA_BOOKKEEPING = (".hydra", "*.log")
_MULTIRUN = ("-m", "--multirun")
# run/sweep dirs that did not exist before this process: only these are removed after a failure
_NEW_DIRS: set[Path] = set()


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (Hydra's hints kept, its search-path dump dropped)."""
    text = str(exc).split("Config search path")[0].split("\nSee https://hydra.cc")[0]
    text = re.sub(r"\s*\n\s*", "; ", text.strip()).replace(":;", ":").replace(".;", ".")
    text = re.sub(r"\s+", " ", text)
    return (text[:400] + "…") if len(text) > 400 else (text or type(exc).__name__)


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """For a multirun, each sweep override (a=1,2 / range / choice) replaced by its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            first = next(iter(o.sweep_string_iterator()), None)
            out.append(f"{o.input_line.split('=', 1)[0]}={first}")
        else:
            out.append(o.input_line)
    return out


def _missing(node: Any, where: str = "") -> list[str]:
    if isinstance(node, dict):
        return [m for k, v in node.items() for m in _missing(v, f"{where}.{k}" if where else str(k))]
    if isinstance(node, list):
        return [m for i, v in enumerate(node) for m in _missing(v, f"{where}[{i}]")]
    return [where] if node == "???" else []


def _kind(value: Any) -> str | None:
    """The type a config value asks of an override: integer, number, true/false (None: anything)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return None


def _fits(value: Any, kind: str) -> bool:
    if value is None or isinstance(value, str) and value.startswith("${"):
        return True
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_types(config_name: str, overrides: list[str], composed: Any, config_dir: str | Path = CONF) -> None:
    """An override must keep the type of the value it replaces (``trainer.max_epochs=abc`` is refused where
    the config has an integer; Lightning would take the string and fail an assert mid-run). The replaced
    values come from the same config composed with the config-group choices of the command line only."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    groups = set(OmegaConf.to_container(composed.hydra.runtime.choices))
    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [o for o in parsed if o.key_or_group not in groups and not o.key_or_group.startswith("hydra.")
              and not o.is_delete() and o.package is None]
    if not values:
        return
    choices = [o.input_line for o in parsed if o not in values]
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        defaults = compose(config_name, overrides=choices)
    for o in values:
        key = o.key_or_group
        kind = _kind(OmegaConf.select(defaults, key, default=None, throw_on_resolution_failure=False))
        new = OmegaConf.select(composed, key, default=None, throw_on_resolution_failure=False)
        if kind and not _fits(new, kind):
            fail(f"{key} must be {kind}, got {o.input_line.split('=', 1)[1]!r}")


def precheck(config_name: str, argv: list[str] | None = None, config_dir: str | Path = CONF) -> None:
    """Exit 2 with one line if the command line would not compose, leaves a mandatory value
    unset, or points at a run directory that cannot be written. Hydra's own flags (--help,
    --cfg, -cn, ...) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    multirun = any(a in _MULTIRUN for a in args)
    args = [a for a in args if a not in _MULTIRUN]
    if any(a.startswith("-") for a in args):
        return
    try:
        overrides = _first_of_sweeps(args) if multirun else args
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        check_types(config_name, overrides, cfg, config_dir)
    except (HydraException, OmegaConfBaseException) as exc:
        fail(one_line(exc))
    job = OmegaConf.to_container(cfg, resolve=False)
    job.pop("hydra", None)
    missing = _missing(job)
    if missing:
        fail(f"missing mandatory value{'s' if len(missing) > 1 else ''}: "
             + ", ".join(f"{m}=..." for m in missing) + f" (set {missing[0]}=... on the command line)")
    try:
        run_dir = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    except OmegaConfBaseException:
        return  # a run dir that depends on the job: Hydra resolves it
    try:
        check_writable(run_dir, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except FexError as exc:
        fail(str(exc))
    if not Path(run_dir).exists():
        _NEW_DIRS.add(Path(run_dir).absolute())


def run(task: Callable[[Any], Any], cfg: Any) -> Any:
    """``task(cfg)`` with fex errors and disk errors as ``error: ...``, exit 2; a failed run that
    wrote nothing leaves no run directory behind."""
    _remember_if_new(cfg)
    try:
        return task(cfg)
    except FexError as exc:
        _cleanup(cfg)
        fail(one_line(exc))
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        _cleanup(cfg)
        fail(str(output_error_from(exc, where=_output_dir(cfg))))


def _output_dir(cfg: Any) -> Path | None:
    try:
        out = cfg.get("output_dir")
    except Exception:  # noqa: BLE001 - an unresolvable output_dir: nothing to clean
        return None
    return Path(str(out)).expanduser().absolute() if out else None


def _remember_if_new(cfg: Any) -> None:
    out = _output_dir(cfg)
    if out is not None and not out.exists():
        _NEW_DIRS.add(out)


def _cleanup(cfg: Any) -> None:
    """Remove the run's output dir if this process created it (see :func:`precheck`) and the failed
    run left nothing in it but Hydra's bookkeeping; a directory the user made stays."""
    out = _output_dir(cfg)
    if out is None:
        return
    new = next((d for d in _NEW_DIRS if out == d or d in out.parents), None)
    if new is None:
        return
    remove_empty_dirs(out, HYDRA_BOOKKEEPING)
    if new != out and new.is_dir() and not any(new.iterdir()):  # a sweep dir whose only job failed
        new.rmdir()
