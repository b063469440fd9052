"""Batch attribution and evaluation against baselines: `python evaluate.py checkpoint=...` (Hydra; same as `fex-evaluate`)."""
from fex.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
