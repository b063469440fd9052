"""Batch attribution and evaluation against baselines: `python evaluate.py checkpoint=...` (Hydra; same as `fex-evaluate`)."""
from fex.cli import evaluate_app

if __name__ == "__main__":
    evaluate_app()
