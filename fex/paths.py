"""Where fex keeps what it trains or downloads once (targets, proxies, data wheels): ``$FEX_CACHE``, or
``~/.cache/fex`` when it is unset. Jobs get the same place from ``conf/paths/default.yaml``."""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$FEX_CACHE`` (``~`` expanded), or ``~/.cache/fex``."""
    return Path(os.environ.get("FEX_CACHE") or Path.home() / ".cache" / "fex").expanduser()


def cache_dir_or_default(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` (``~`` expanded) when given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
