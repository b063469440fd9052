"""Console commands (pyproject ``[project.scripts]``): ``fex-train``, ``fex-evaluate``, ``fex-explain``, ``fex-tda``,
``fex-merge``.

Each is a ``@hydra.main`` app over the config tree that ships with the package (``conf/`` in a
checkout, ``fex/conf`` when installed), so they run the same configs from any directory, take
Hydra overrides (``group=option key=value``, ``-m`` sweeps) and list the config groups with
``--help``. The repo-root ``train.py`` / ``evaluate.py`` shims call the same functions. ``fex-merge OUT IN IN ...``
(argparse, no config tree) writes one multi-head explainer of several (:func:`fex.explainer.merge_explainers`).
Errors end with one line ``error: ...`` and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from fex.config import conf_dir
from fex.errors import FexError
from fex.explainer import merge_explainers
from fex.launch import precheck, run
from fex.tasks.evaluate import evaluate
from fex.tasks.explain import explain
from fex.tasks.tda import tda
from fex.tasks.train import train

os.environ.setdefault("WANDB_MODE", "offline")  # never reach for the network unless asked
CONF = str(conf_dir())


def _run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """fex and disk errors: one line, exit 2; a run dir the failed run created and left empty is removed."""
    return run(task, cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="train")
def train_app(cfg: DictConfig) -> float:
    """Train an explainer (``conf/train.yaml``); returns the best validation reward for sweepers."""
    metrics, _ = _run(train, cfg)
    return metrics.get("best/val/faithfulness", metrics.get("val/faithfulness", float("nan")))  # sweeper objective


@hydra.main(version_base="1.3", config_path=CONF, config_name="evaluate")
def evaluate_app(cfg: DictConfig) -> None:
    """Batch attribution and the comparison against baselines (``conf/evaluate.yaml``)."""
    _run(evaluate, cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="explain")
def explain_app(cfg: DictConfig) -> None:
    """Explain the user's files or one text with a checkpoint (``conf/explain.yaml``)."""
    _run(explain, cfg)


@hydra.main(version_base="1.3", config_path=CONF, config_name="tda")
def tda_app(cfg: DictConfig) -> None:
    """Which training examples made these predictions: influence functions (``conf/tda.yaml``)."""
    _run(tda, cfg)


def tda_main() -> None:
    precheck("tda", config_dir=CONF)
    tda_app()


def train_main() -> None:
    precheck("train", config_dir=CONF)  # config errors / unwritable run dir: one line, exit 2, before Hydra
    train_app()


def evaluate_main() -> None:
    precheck("evaluate", config_dir=CONF)
    evaluate_app()


def explain_main(argv: list[str] | None = None) -> int:
    """``fex-explain key=value ...``; with ``argv`` (tests, notebooks) it returns the exit code."""
    if argv is None:
        precheck("explain", config_dir=CONF)
        explain_app()
        return 0
    from hydra.core.global_hydra import GlobalHydra

    saved = sys.argv
    sys.argv = ["fex-explain", *argv]
    GlobalHydra.instance().clear()
    try:
        precheck("explain", argv, config_dir=CONF)
        explain_app()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return 0


def merge_main(argv: list[str] | None = None) -> int:
    """``fex-merge OUT.ckpt A.ckpt B.ckpt ...``: one explainer whose heads are A's, B's, ... (training seeds of
    one recipe): their mean scores at about one explainer's cost. Errors: one line, exit code 2."""
    p = argparse.ArgumentParser(prog="fex-merge", description=merge_main.__doc__.split(":")[0])
    p.add_argument("out", help="the merged explainer checkpoint to write")
    p.add_argument("members", nargs="+", help="explainer checkpoints (explainer.ckpt) of the same recipe and target")
    a = p.parse_args(argv)
    try:
        module = merge_explainers(a.members, out=a.out)
    except FexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"fex-merge: {a.out}: {module.policy.heads} heads from {len(a.members)} explainers "
          f"({module._train_queries:,} training queries in all)")
    return 0
