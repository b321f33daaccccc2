"""metrics.json round trip, the rich table and the PNG plots."""

import json

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.metrics import RESULT_SCHEMA, evaluate
from recsys.evaluation.plots import write_plots
from recsys.evaluation.report import (
    METRICS_JSON_SCHEMA,
    metrics_table,
    read_metrics_json,
    write_metrics_json,
)
from recsys.ranking.metrics import GroundTruth

TRUTH = GroundTruth(np.array([1, 2]), np.array([0, 1, 3]), np.array([10, 20, 30]))
NOVEL = GroundTruth(np.array([2]), np.array([0, 1]), np.array([30]))


@pytest.fixture(scope="module")
def results():
    recs = {"good": np.array([[10, 5], [20, 30]]), "bad": np.array([[1, 2], [3, 4]])}
    groups = {"all": TRUTH, "novel": NOVEL}
    return evaluate(recs, TRUTH, groups, ks=(1, 2), catalogue_size=10, intervals=True)


def test_metrics_json_round_trip(tmp_path, results):
    path = write_metrics_json(results, tmp_path / "run")
    rows = json.loads(path.read_text())
    assert path.name == "metrics.json" and len(rows) == results.height
    assert list(rows[0]) == list(METRICS_JSON_SCHEMA)
    assert {"model", "group", "metric", "k", "value", "n_users"} <= set(rows[0])
    assert {"ci_low", "ci_high", "delta_vs_best_baseline", "delta_ci_low"} <= set(rows[0])
    assert {"delta_ci_high", "best_baseline", "policy", "served"} <= set(rows[0])
    back = read_metrics_json(path)
    assert back.drop("policy", "served").equals(results)
    assert back["policy"].null_count() == back.height and not back["served"].any()


def test_metrics_json_keeps_the_policy_and_reads_old_files(tmp_path, results):
    flagged = results.with_columns(
        pl.when(pl.col("model") == "good").then(pl.lit("blend")).alias("policy"),
        (pl.col("model") == "good").alias("served"),
    )
    rows = json.loads(write_metrics_json(flagged, tmp_path / "run").read_text())
    assert {r["policy"] for r in rows if r["model"] == "good"} == {"blend"}
    assert {r["policy"] for r in rows if r["model"] == "bad"} == {None}
    assert all(r["served"] is (r["model"] == "good") for r in rows)
    # no baselines among "good" and "bad": no deltas; coverage: no intervals
    assert all(r["best_baseline"] is None for r in rows)
    assert all((r["ci_low"] is None) == (r["metric"] == "coverage") for r in rows)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(results.select(list(RESULT_SCHEMA)).to_dicts()))
    back = read_metrics_json(old)
    assert back.columns == list(METRICS_JSON_SCHEMA)
    assert back.select(list(RESULT_SCHEMA)).equals(results.select(list(RESULT_SCHEMA)))
    assert back["ci_low"].null_count() == back.height


def test_table_has_a_row_per_model_and_a_column_per_group_metric_k(results):
    table = metrics_table(results, metrics=("recall",))
    assert table.row_count == 2
    assert len(table.columns) == 1 + 2 * 2  # model + {all, novel} x recall@{1, 2}
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "novel" in text and "n=1" in text and "1.0000" in text and "0.0000" in text


def test_plots_are_png_files(tmp_path, results):
    paths = write_plots(results, tmp_path, plots=(("ndcg", 2),))
    assert [p.name for p in paths] == ["ndcg@2_by_model.png", "ndcg@2_by_group.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_results_are_rejected(tmp_path, results):
    with pytest.raises(EvaluationError, match="lacks"):
        write_metrics_json(results.drop("n_users"), tmp_path)
    with pytest.raises(EvaluationError, match="no recall@7"):
        write_plots(results, tmp_path, plots=(("recall", 7),))
    with pytest.raises(EvaluationError, match="empty"):
        metrics_table(results.filter(pl.lit(False)))
