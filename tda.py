"""Training-data attribution: `python tda.py [group=option] [key=value]` (Hydra, conf/tda.yaml). See README."""
import sys

import hydra
from omegaconf import DictConfig

from fex.errors import FexError


@hydra.main(version_base="1.3", config_path="conf", config_name="tda")
def main(cfg: DictConfig) -> None:
    from fex.tasks.tda import tda

    try:
        tda(cfg)
    except FexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
