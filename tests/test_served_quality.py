"""The pure helpers of benchmarks/served_quality.py (no service, no CLI)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "served_quality.py"


@pytest.fixture(scope="module")
def sq():
    spec = importlib.util.spec_from_file_location("served_quality", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_api_json_to_padded_matrix_in_user_order(sq):
    payloads = {
        30: {"user_id": 30, "items": [{"item_id": 7}, {"item_id": 8}, {"item_id": 7}]},
        10: {"user_id": 10, "items": [{"item_id": 1}, {"item_id": 2}, {"item_id": 3}]},
        40: {"user_id": 40, "items": []},
    }
    out = sq.padded_matrix(sq.lists_from_api(payloads), np.array([10, 20, 30, 40]), k=3)
    assert out.recs.dtype == np.int64
    np.testing.assert_array_equal(out.recs, [[1, 2, 3], [-1, -1, -1], [7, 8, -1], [-1, -1, -1]])
    assert (out.missing, out.duplicates, out.truncated) == (1, 1, 0)


def test_table_rows_ordered_by_rank_and_truncated(sq):
    rows = pl.DataFrame(
        {
            "user_id": [2, 1, 1, 1, 2],
            "rank": [1, 3, 1, 2, 2],
            "item_id": [50, 13, 11, 12, 60],
        }
    )
    lists = sq.lists_from_rows(rows)
    assert lists == {1: [11, 12, 13], 2: [50, 60]}
    out = sq.padded_matrix(lists, np.array([1, 2]), k=2)
    np.testing.assert_array_equal(out.recs, [[11, 12], [50, 60]])
    assert out.truncated == 1


def test_padded_matrix_scores_with_project_metrics(sq):
    from recsys.evaluation.metrics import evaluate
    from recsys.evaluation.split import GroundTruth

    truth = GroundTruth.from_frame(pl.DataFrame({"user_id": [1, 2], "item_id": [5, 9]}))
    out = sq.padded_matrix({2: [9], 1: [4, 5]}, truth.user_ids, k=2)
    frame = evaluate({"m": out.recs}, truth, ks=(2,))
    recall = frame.filter(pl.col("metric") == "recall")["value"][0]
    assert recall == pytest.approx(1.0)
    ndcg = frame.filter(pl.col("metric") == "ndcg")["value"][0]
    assert ndcg == pytest.approx((1 / np.log2(3) + 1.0) / 2)


def test_bootstrap_interval_tiny_fixed_example(sq):
    constant = sq.bootstrap_interval(np.full(5, 0.25))
    assert constant == pytest.approx((0.25, 0.25))
    values = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    low, high = sq.bootstrap_interval(values, resamples=1000, seed=0)
    assert low < values.mean() < high
    # A 90% interval of a mean of 10 Bernoulli(0.7) draws: about 0.7 +- 1.645 * 0.145.
    assert 0.4 <= low <= 0.6 and 0.8 <= high <= 0.95
    assert sq.bootstrap_interval(values, seed=0) == (low, high)  # fixed seed, same interval
    assert np.isnan(sq.bootstrap_interval(np.array([]))[0])


def test_within_two_percent_and_ratio(sq):
    assert sq.within(1.02) and sq.within(0.98) and sq.within(1.0)
    assert not sq.within(1.021) and not sq.within(0.979)
    assert sq.within(None) is None
    assert sq.ratio(0.51, 0.5) == pytest.approx(1.02)
    assert sq.ratio(0.5, 0.0) is None and sq.ratio(None, 0.5) is None


def _results(values: dict[str, float]) -> pl.DataFrame:
    rows = []
    for model, v in values.items():
        for metric, k in (("ndcg", 20), ("recall", 50)):
            rows.append({"model": model, "group": "all", "metric": metric, "k": k, "value": v})
    return pl.DataFrame(rows)


def test_paired_check_compares_with_the_best_simple_baseline_beyond_chance(sq):
    rng = np.random.default_rng(0)
    blend = rng.uniform(0, 1, 400)
    baselines = {
        "repeat": {"ndcg@20": blend - 0.1, "recall@50": blend - 0.1},
        "blend": {"ndcg@20": blend, "recall@50": blend},
    }
    tie = blend + rng.normal(0, 0.01, 400)  # a hair either way: not below beyond chance
    worse = blend - 0.05 + rng.normal(0, 0.01, 400)
    checks = {
        c["metric"]: c
        for c in sq.paired_check("m", {"ndcg@20": tie, "recall@50": worse}, baselines)
    }
    ndcg, recall = checks["ndcg@20"], checks["recall@50"]
    assert ndcg["best_baseline"] == "blend" and ndcg["ok"] is True
    low, high = ndcg["delta_interval"]
    assert low < ndcg["delta"] < high and low < 0 < high
    assert recall["ok"] is False and recall["point_below"] is True
    assert recall["delta"] == pytest.approx(worse.mean() - blend.mean())


def test_evaluate_delta_reads_the_paired_interval_of_metrics_json(sq):
    row = {"model": "interest_model", "group": "all", "metric": "ndcg", "k": 20, "value": 0.13}
    rows = [
        row | {"best_baseline": "blend", "delta_vs_best_baseline": -0.004},
        row | {"metric": "recall", "k": 50, "best_baseline": "blend"},
    ]
    rows[0] |= {"delta_ci_low": -0.008, "delta_ci_high": 0.0002}
    rows[1] |= {"delta_vs_best_baseline": -0.005, "delta_ci_low": -0.009, "delta_ci_high": -0.001}
    got = sq.evaluate_delta(rows, "interest_model")
    assert [(c["metric"], c["ok"]) for c in got] == [("ndcg@20", True), ("recall@50", False)]
    assert got[0]["baseline_value"] == pytest.approx(0.134)


def test_chosen_model(sq):
    rows = [{"model": "interest_model"}, {"model": "repeat"}]
    assert sq.chosen_model(rows, None, "interest_model") == "interest_model"
    assert sq.chosen_model(rows, "repeat", "interest_model") == "repeat"
    flagged = rows + [{"model": "ranker", "served": True}]
    assert sq.chosen_model(flagged, None, "interest_model") == "ranker"
    assert sq.chosen_model(rows + [{"model": "served"}], None, "interest_model") == "served"
