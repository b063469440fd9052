"""Poisoned-data cleaning (fex.tda.clean): the trigger, recall, and the experiment end to end on a
planted problem whose answer is known (a linear model on tiny synthetic images learns the backdoor;
attribution must find the poisons and removing them must remove it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fex.errors import ConfigError, DataError
from fex.tda.clean import (cleaning, influence_ranker, information_ranker, plant_backdoor,
                           random_ranker, recall_at, self_influence_ranker, stamp)
from fex.tda.ihvp import IdentitySolver
from fex.tda.evaluation import fit_softmax
from tests.conftest import compose


def _images(n_per_class, seed, classes=3, size=8):
    """Class c lights row c of an 8x8 image; noise elsewhere; the trigger corner stays dark."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = 0.1 * torch.rand(len(y), 1, size, size, generator=g, dtype=torch.double)
    for c in range(classes):
        x[y == c, 0, c, :] = 0.8 + 0.2 * torch.rand(int((y == c).sum()), size, generator=g, dtype=torch.double)
    return x, y


def _train(x, y):
    return nn.Sequential(nn.Flatten(), fit_softmax(x.flatten(1), y, 3, l2=1e-3)).eval()


def test_stamp_and_plant_backdoor():
    x, y = _images(20, 0)
    s = stamp(x, patch=2, value=1.0)
    assert (s[..., 4:6, 4:6] == 1).all() and torch.equal(s[..., :4, :], x[..., :4, :]) and (s[..., 6:, :] == x[..., 6:, :]).all()
    x2, y2, pos = plant_backdoor(x, y, source=0, target=2, fraction=0.25, patch=2, seed=1)
    assert len(pos) == 5 and (y[pos] == 0).all() and (y2[pos] == 2).all()
    assert int((y2 != y).sum()) == 5 and int((x2 != x).any(dim=(1, 2, 3)).sum()) == 5
    with pytest.raises(ConfigError, match="differ"):
        plant_backdoor(x, y, 1, 1, 0.1)
    with pytest.raises(DataError, match="plants nothing"):
        plant_backdoor(x, y, 0, 1, 0.001)
    with pytest.raises(ConfigError, match="does not fit"):
        stamp(x, patch=8)


def test_recall_at():
    order = torch.tensor([5, 3, 9, 0, 1, 2, 4, 6, 7, 8])
    assert recall_at(order, torch.tensor([3, 5]), 0.2) == 1.0
    assert recall_at(order, torch.tensor([3, 8]), 0.2) == 0.5
    assert recall_at(order, torch.tensor([3, 8]), 0.15) == 0.5  # ceil(1.5) = 2 examples


def test_cleaning_finds_the_planted_backdoor_and_removal_repairs_the_model():
    x_tr, y_tr = _images(100, 0)
    x_val, y_val = _images(20, 1)
    x_te, y_te = _images(100, 2)
    rankers = {"random": random_ranker(0), "self_influence": self_influence_ranker(damping=0.01),
               "influence_full": influence_ranker(damping=0.01),
               "information": information_ranker(damping=0.01),
               "information_subset": information_ranker(damping=0.01, subset=15)}
    res = cleaning(_train, x_tr, y_tr, x_val, y_val, x_te, y_te, rankers, source=0, target=1, fraction=0.1,
                   patch=2, queries=10, removal=(0.01, 0.05), retrain_at=0.05, retrain="all", log=lambda m: None)
    assert res["n_poison"] == 10
    assert res["before"]["asr"] >= 0.5 and res["reference"]["asr"] <= 0.05  # the backdoor is learned, and only from the poisons
    rows = {r["attributor"]: r for r in res["rows"]}
    for name in ("influence_full", "information", "information_subset"):
        assert rows[name]["recall@0.05"] >= 0.8, rows[name]
        assert rows[name]["after_asr"] < 0.1, rows[name]
        assert abs(rows[name]["after_clean_acc"] - res["before"]["clean_acc"]) <= 0.01, rows[name]
    assert rows["random"]["recall@0.05"] <= 0.3 and rows["random"]["after_asr"] >= 0.5


def test_relatif_and_gradient_cosine_find_confidently_fit_poisons_among_hard_examples():
    """The MNIST failure mode, planted: besides 10 poisons (triggered 0s labelled 1, which the model fits
    confidently: small gradients), 20 untriggered 0s are labelled 1. The model cannot fit those, so their
    gradients are large and also point the query's way (more "0-looking is 1"). Normalised by
    self-influence (RelatIF) or by gradient norms (cosine), the poisons - the examples most aligned with
    the triggered queries - come first, and removing them removes the backdoor."""
    x_tr, y_tr = _images(100, 0)
    g = torch.Generator().manual_seed(5)
    zeros = (y_tr == 0).nonzero().squeeze(1)
    hard = zeros[torch.randperm(len(zeros), generator=g)[:20]]
    y_tr = y_tr.clone()
    y_tr[hard] = 1  # label noise towards the backdoor's target, no trigger
    x_val, y_val = _images(20, 1)
    x_te, y_te = _images(100, 2)
    cosine = influence_ranker(solver=lambda m, z, y, w: IdentitySolver(m, z, y, w, damping=0.01), normalize="relatif",
                              aggregate="unit")
    rankers = {"influence_full": influence_ranker(damping=0.01),
               "influence_relatif": influence_ranker(damping=0.01, normalize="relatif", aggregate="unit"),
               "gradient_cosine": cosine}
    res = cleaning(_train, x_tr, y_tr, x_val, y_val, x_te, y_te, rankers, source=0, target=1, fraction=0.1,
                   patch=2, queries=10, removal=(0.05,), retrain_at=0.05, retrain="all", reference=False, seed=3,
                   log=lambda m: None)
    poisoned = res["poisoned"]
    assert not torch.isin(poisoned, hard).any() and res["before"]["asr"] >= 0.5
    rows = {r["attributor"]: r for r in res["rows"]}
    for name in ("influence_relatif", "gradient_cosine"):
        assert rows[name]["recall@0.05"] >= 0.9, rows[name]
        assert rows[name]["after_asr"] < 0.1, rows[name]
    # raw influence is not asserted to fail here: on this planted problem it also finds the poisons
    # (CI, 2026-12-06); the MNIST case where it misses them (57% at 5%) is in docs/tda_information.md


def test_clean_config_composes_and_builds_every_attributor(tmp_path):
    from fex.config import build

    cfg = compose("tda", ["tda_task=clean"], tmp_path)
    assert cfg.tda_task.name == "clean"
    rankers = {n: build(spec) for n, spec in cfg.tda_task.attributors.items()}
    assert set(rankers) >= {"random", "self_influence", "influence_full", "influence_relatif", "gradient_cosine",
                            "influence_uniform", "influence_logit", "influence_feature", "information",
                            "information_subset"}
    assert all(callable(r) for r in rankers.values())


@pytest.mark.slow
def test_clean_task_runs_on_mnist(tmp_path):
    """The task end to end on a shrunk MNIST (1 epoch, 3 attributors): wiring, table, metrics."""
    from fex.tasks.tda import tda

    keep = ["random", "influence_full", "information"]
    drop = [f"~tda_task.attributors.{n}" for n in ("self_influence", "influence_relatif", "gradient_cosine",
                                                    "influence_uniform", "influence_logit", "influence_feature",
                                                    "information_subset")]
    cfg = compose("tda", ["tda_task=clean", "tda_task.epochs=1", "data.limit=200", "tda_task.reference=false",
                          f"tda_task.retrain=[{keep[0]}]", *drop], tmp_path)
    metrics, obj = tda(cfg)
    assert [r["attributor"] for r in obj["result"]["rows"]] == keep
    assert "clean/random/after_asr" in metrics and "clean/information/recall@0.05" in metrics
    assert (tmp_path / "table.md").read_text().startswith("| attributor |")
