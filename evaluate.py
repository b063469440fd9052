"""Batch attribution and evaluation against baselines: `python evaluate.py checkpoint=...` (Hydra)."""
import sys

import hydra
from omegaconf import DictConfig

from fex.errors import FexError


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from fex.tasks.evaluate import evaluate

    try:
        evaluate(cfg)
    except FexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
