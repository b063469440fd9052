"""Poisoned-data cleaning rows on MNIST (fex.tda.clean), attributors side by side on one poisoned model.

The same experiment as ``python tda.py tda_task=clean`` (the shipped config's poison, recipe and
attributors, built from conf/tda_task/clean.yaml), split so that a slow machine can do it in passes:
the poisoned model is trained once and cached (``--poisoned``), every named attributor ranks the
training set on it (recall at 1..5%: no training), and only the ``--retrain`` ones pay for a retrain.

    python benchmarks/bench_tda_clean.py --attributors random influence_full influence_relatif \\
        gradient_cosine information --retrain influence_relatif information
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from fex.config import build, build_data
from fex.io import write_text
from fex.targets.mnist_cnn import SmallCNN, fit_small_cnn
from fex.tasks.tda import clean_table, split_arrays
from fex.tda.clean import cleaning, plant_backdoor

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attributors", nargs="+", default=None, help="names in tda_task.attributors (default: all)")
    ap.add_argument("--retrain", nargs="*", default=[], help="attributors whose cleaned set is retrained")
    ap.add_argument("--poisoned", default="outputs/bench/tda_clean/poisoned.pt", help="cached poisoned model")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of conf/tda.yaml")
    ap.add_argument("--out", default="outputs/bench/tda_clean")
    a = ap.parse_args(argv)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="tda", overrides=["tda_task=clean", "output_dir=unused", *a.overrides])
    c, p = cfg.tda_task, cfg.tda_task.poison
    names = a.attributors or list(c.attributors)
    rankers = {n: build(c.attributors[n], what=f"tda_task.attributors.{n}") for n in names}
    dm = build_data(cfg.data)
    (x_tr, y_tr, _), (x_val, y_val, _), (x_te, y_te, _) = (split_arrays(dm, s) for s in ("train", "val", "test"))

    def train(x, y):
        return fit_small_cnn(x, y, epochs=int(c.epochs), lr=float(c.lr), seed=int(cfg.seed), num_classes=10)

    path = Path(a.poisoned)
    if path.exists():
        model = SmallCNN()
        model(x_tr[:1])
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        x_p, y_p, _ = plant_backdoor(x_tr, y_tr, int(p.source), int(p.target), float(p.fraction), int(p.patch),
                                     float(p.value), int(cfg.seed))
        model = train(x_p, y_p)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    t0 = time.perf_counter()
    res = cleaning(train, x_tr, y_tr, x_val, y_val, x_te, y_te, rankers, source=int(p.source), target=int(p.target),
                   fraction=float(p.fraction), patch=int(p.patch), value=float(p.value), queries=int(c.queries),
                   removal=tuple(float(f) for f in c.removal), retrain_at=float(c.retrain_at), retrain=list(a.retrain),
                   reference=False, seed=int(cfg.seed), params="last", chunk_size=int(cfg.tda.chunk_size),
                   poisoned_model=model, log=lambda m: print(m, flush=True))
    table = clean_table(res)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "table.md", table)
    write_text(out / "rows.json", json.dumps({"before": res["before"], "rows": res["rows"],
                                              "seconds": time.perf_counter() - t0}, indent=1))
    print(table, flush=True)


if __name__ == "__main__":
    main()
