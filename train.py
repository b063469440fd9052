"""Train an FEX explainer: `python train.py [group=option] [key=value]` (Hydra; same as `fex-train`). See README."""
from fex.cli import train_main

if __name__ == "__main__":
    train_main()
