"""``fex-serve checkpoint=PATH [key=value ...]``: compose conf/serve.yaml and run the server."""
from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from fex.config import compose, conf_dir
from fex.errors import FexError
from fex.launch import one_line
from fex.serve.server import serve


def compose_serve(overrides: list[str]):
    """conf/serve.yaml (the packaged config tree when installed) with ``key=value`` overrides."""
    return compose("serve", overrides)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nSettings (conf/serve.yaml):\n" + (conf_dir() / "serve.yaml").read_text())
        return 0
    try:
        cfg = compose_serve(args)
        serve(cfg)
    except (FexError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        if argv is None:
            sys.exit(2)
        return 2
    return 0


if __name__ == "__main__":
    main()
