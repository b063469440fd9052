"""The scaling benchmark's pure logic (break-even, cumulative cost, training curve) on hand-built numbers,
plus @slow smoke runs of benchmarks/scaling.py and benchmarks/throughput.py in --quick mode.
No assertion here depends on a timing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import scaling  # noqa: E402
import throughput  # noqa: E402


# --------------------------------------------------------------------------- break-even
def test_break_even_hand_computed():
    # 1000 + n < 50 n  <=>  n > 1000 / 49 = 20.4  ->  21
    assert scaling.break_even(1000, 1, 50) == 21
    assert scaling.cumulative_cost(1000, 1, [20, 21]) == [1020, 1021]
    assert scaling.cumulative_cost(0, 50, [20, 21]) == [1000, 1050]


def test_break_even_exact_tie_is_not_cheaper():
    # 980 + 1 * 20 == 50 * 20: equal at 20, strictly cheaper from 21
    assert scaling.break_even(980, 1, 50) == 21
    # fractional costs at a float boundary: 0.3 + 0.1 n < 0.2 n  <=>  n > 3
    assert scaling.break_even(0.3, 0.1, 0.2) == 4


def test_break_even_never_and_free():
    assert scaling.break_even(1000, 50, 50) is None  # no saving per explanation
    assert scaling.break_even(1000, 60, 50) is None
    assert scaling.break_even(0, 0, 1) == 1  # no training cost: cheaper from the first explanation


@pytest.mark.parametrize("fixed,a,b", [(63000, 0, 200), (63000, 0, 785), (95.5, 0.004, 0.031), (7, 2, 3)])
def test_break_even_is_the_first_crossing(fixed, a, b):
    n = scaling.break_even(fixed, a, b)
    assert fixed + a * n < b * n
    assert n == 1 or fixed + a * (n - 1) >= b * (n - 1)


def test_cumulative_cost_is_linear():
    c = scaling.cumulative_cost(5.0, 2.0, range(4))
    assert c == [5.0, 7.0, 9.0, 11.0]


def test_break_even_rows_per_grid_and_method():
    grids = [{"features": 49, "grid": "7x7", "train_queries": 1000, "train_seconds": 10.0,
              "methods": {"fex": {"queries_per_expl": 0, "sec_per_expl": 0.001},
                          "kernel_shap": {"queries_per_expl": 200, "sec_per_expl": 0.05},
                          "feature_ablation": {"queries_per_expl": 50, "sec_per_expl": 0.0005}}}]
    rows = scaling.break_even_rows(grids)
    assert [(r["method"], r["break_even_queries"], r["break_even_seconds"]) for r in rows] == [
        ("kernel_shap", 6, 205),           # 1000/200 = 5 -> 6;  10 / 0.049 = 204.1 -> 205
        ("feature_ablation", 21, None)]    # 1000/50 = 20 -> 21; fex slower per explanation: never
    assert "never" in scaling.break_even_table(rows)


# --------------------------------------------------------------------------- training curve
CSV = """epoch,step,train/queries,train/reward,val/deletion_auc,val/reward,val/train_queries
0,9,3840.0,1.1,,,
0,13,,,0.30,1.20,5376.0
0,19,7680.0,1.3,,,
0,27,,,,1.50,10752.0
0,27,,,0.20,,
1,41,,,0.18,1.56,16128.0
"""


def test_read_training_curve_merges_rows_of_a_step(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    curve = scaling.read_training_curve(p)
    assert [c["train_queries"] for c in curve] == [5376.0, 10752.0, 16128.0]
    assert [c["reward"] for c in curve] == [1.2, 1.5, 1.56]
    assert [c["deletion_auc"] for c in curve] == [0.30, 0.20, 0.18]  # step 27 merged from two rows
    assert [c["epoch"] for c in curve] == [0, 0, 1]


def test_queries_to_reach(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text(CSV)
    curve = scaling.read_training_curve(p)
    # reward gain 1.2 -> 1.56 (0.36); 80% of it = 1.488 first reached at 10752 queries
    assert scaling.queries_to_reach(curve, "reward", 0.8) == 10752.0
    assert scaling.queries_to_reach(curve, "reward", 1.0) == 16128.0
    # deletion AUC is lower-better: 0.30 -> 0.18; 50% of the gain (0.24) reached at 10752
    assert scaling.queries_to_reach(curve, "deletion_auc", 0.5, higher_is_better=False) == 10752.0
    assert scaling.queries_to_reach([], "reward") is None


# --------------------------------------------------------------------------- throughput logic
def test_linear_fit_recovers_slope_and_intercept():
    fit = throughput.linear_fit([1000, 5000, 50000], [3.0 + 0.002 * n for n in (1000, 5000, 50000)])
    assert fit["intercept"] == pytest.approx(3.0)
    assert fit["slope"] == pytest.approx(0.002)
    assert fit["r2"] == pytest.approx(1.0)


def test_repeat_dataset_is_lazy_and_keyed_by_position():
    import torch

    base = torch.arange(5).float().view(5, 1, 1, 1)
    ds = throughput.RepeatDataset(base, torch.arange(5) * 10, 12)
    assert len(ds) == 12
    x, y, i = ds[7]
    assert float(x) == 2.0 and int(y) == 20 and int(i) == 7
    assert ds.base_x.data_ptr() == base.data_ptr()  # no copy of the repeated data


# --------------------------------------------------------------------------- smoke runs
@pytest.mark.slow
def test_scaling_quick_smoke(tmp_path):
    res = scaling.main(["--quick", "--out", str(tmp_path)])
    assert [g["features"] for g in res["grids"]] == [4, 16]
    for g in res["grids"]:
        assert set(g["methods"]) == set(scaling.METHODS.split(","))
        assert g["methods"]["fex"]["queries_per_expl"] == 0
        assert g["methods"]["feature_ablation"]["queries_per_expl"] == g["features"] + 1
        assert g["curve"], "no validation points in the training log"
    assert len(res["break_even"]) == 4
    assert all(Path(f).is_file() for f in res["files"].values())
    assert json.loads((tmp_path / "scaling.json").read_text())["quick"] is True


@pytest.mark.slow
def test_throughput_quick_smoke(tmp_path):
    res = throughput.main(["--quick", "--out", str(tmp_path)])
    runs = res["runs"]
    assert runs and all(r["returncode"] == 0 for r in runs)
    assert all(r["rows"] == r["size"] for r in runs)
    assert all(r["shards"] == -(-r["size"] // r["batch_size"]) for r in runs)
    assert all(r["peak_rss_mib"] > 0 for r in runs)
