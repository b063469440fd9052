"""Which training examples made these predictions: `python tda.py [group=option] [key=value]` (Hydra,
conf/tda.yaml; same as `fex-tda`). See README "Which training examples made this prediction"."""
from fex.cli import tda_app

if __name__ == "__main__":
    tda_app()
