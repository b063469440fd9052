"""``fex-serve checkpoint=PATH [key=value ...]``: compose conf/serve.yaml and run the server."""
from __future__ import annotations

import sys

from fex.errors import FexError
from fex.launch import one_line
from fex.tasks.common import conf_dir


def compose_serve(overrides: list[str]):
    """conf/serve.yaml (the packaged config tree when installed) with ``key=value`` overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("serve", overrides=list(overrides))


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nSettings (conf/serve.yaml):\n" + (conf_dir() / "serve.yaml").read_text())
        return 0
    try:
        cfg = compose_serve(args)
        from fex.serve.server import serve

        serve(cfg)
    except (FexError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        if argv is None:
            sys.exit(2)
        return 2
    return 0


if __name__ == "__main__":
    main()
