"""Train an FEX explainer: `python train.py [group=option] [key=value]` (Hydra). See README."""
import os
import sys

import hydra
from omegaconf import DictConfig

from fex.errors import FexError

os.environ.setdefault("WANDB_MODE", "offline")  # never reach for the network unless asked


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from fex.tasks.train import train

    try:
        metrics, _ = train(cfg)
    except FexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("val/reward", float("nan"))


if __name__ == "__main__":
    main()
