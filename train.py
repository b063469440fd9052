"""Train an FEX explainer: `python train.py [group=option] [key=value]` (Hydra). See README."""
import os

import hydra
from omegaconf import DictConfig

from fex.launch import precheck, run

os.environ.setdefault("WANDB_MODE", "offline")  # never reach for the network unless asked


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from fex.tasks.train import train

    metrics, _ = run(train, cfg)  # fex / disk errors: one line, exit 2
    return metrics.get("val/reward", float("nan"))


if __name__ == "__main__":
    precheck("train")  # config errors: one line, exit 2, before Hydra makes a run dir
    main()
