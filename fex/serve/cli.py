"""``fex-serve checkpoint=PATH [key=value ...]``: compose conf/serve.yaml and run the server."""
from __future__ import annotations

import sys
from pathlib import Path

from fex.errors import FexError

ROOT = Path(__file__).resolve().parents[2]


def compose_serve(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("serve", overrides=list(overrides))


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\nSettings (conf/serve.yaml):\n" + (ROOT / "conf" / "serve.yaml").read_text())
        return 0
    try:
        cfg = compose_serve(args)
        from fex.serve.server import serve

        serve(cfg)
    except (FexError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        if argv is None:
            sys.exit(2)
        return 2
    return 0


if __name__ == "__main__":
    main()
