"""Batch attribution and evaluation against baselines: `python evaluate.py checkpoint=...` (Hydra)."""

import hydra
from omegaconf import DictConfig

from fex.launch import precheck, run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from fex.tasks.evaluate import evaluate

    run(evaluate, cfg)  # fex / disk errors: one line, exit 2


if __name__ == "__main__":
    precheck("evaluate")  # config errors: one line, exit 2, before Hydra makes a run dir
    main()
