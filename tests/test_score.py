"""``recsys score``: every known user ranked from the Feast exports into one run, with the
purchased-items policy, the ranker's name and validation figures, and cold-start rows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from feature_helpers import load_events

import recsys.ranking.score as score
from recsys.config import FeatureConfig
from recsys.evaluation.run import EVALUATION_RUNS_DDL
from recsys.features.materialize import export_time_range
from recsys.features.repo import apply
from recsys.home import Paths, resolve_home
from recsys.ranking.policy import POLICIES, Ranking
from recsys.ranking.reasons import COLD_START_REASON
from recsys.ranking.score import ScoreError, cold_start, score_users
from recsys.ranking.tables import ItemTables
from recsys.warehouse.build import build
from recsys.warehouse.connect import connect

T = datetime(2024, 5, 1)
# (user, item, category, behaviour, hours before T). Long-horizon popularity at T (half-life
# 336h): 10 = 4 + 1 (a buy and a view), 11 = 4, then the single views 12 (1h), 14 (4h),
# 13 (5h), 15 (6h), so popular = 10, 11, 12, 14, 13, 15.
ROWS = [
    (1, 10, 1, "buy", 3),
    (1, 11, 1, "buy", 2),
    (1, 12, 1, "view", 1),
    (2, 10, 1, "view", 1),
    (3, 13, 2, "view", 5),
    (3, 14, 2, "view", 4),
    (3, 15, 2, "view", 6),
]
EVENTS = pl.DataFrame(
    {
        "user_id": [r[0] for r in ROWS],
        "item_id": [r[1] for r in ROWS],
        "category_id": [r[2] for r in ROWS],
        "behavior": [r[3] for r in ROWS],
        "event_time": [T - timedelta(hours=r[4]) for r in ROWS],
    }
)
VALIDATION = {
    "repeat": {"ndcg_at_20": 0.5, "recall_at_50": 0.75, "n_users": 3},
    "blend": {"ndcg_at_20": 0.25, "recall_at_50": 0.5, "n_users": 3},
}


class StubModel:
    """What ``score_users`` reads of a trained model: the repeat policy on the home's marts."""

    as_of_ = T

    def __init__(self, paths: Paths) -> None:
        self.ranking_ = Ranking(
            POLICIES["repeat"], FeatureConfig(), ItemTables.from_warehouse(paths)
        )

    def summary(self) -> dict[str, Any]:
        return {"policy": "repeat", "validation": VALIDATION}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Paths:
    """A home with EVENTS ingested, built (the Feast exports) and applied."""
    paths = resolve_home(tmp_path_factory.mktemp("score") / "home")
    load_events(paths, EVENTS.to_pandas())
    build(paths)
    apply(paths)
    return paths


def _latest(paths: Paths, columns: str = "user_id, rank, item_id") -> list[tuple]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return con.execute(f"select {columns} from latest_recommendations order by 1, 2").fetchall()
    finally:
        con.close()


def test_purchased_items_never_return_when_excluded(home):
    report = score_users(home, StubModel(home), model_version="stub-1", k=3, exclude_purchased=True)
    assert report.run.n_users == 3 and report.run.model_version == "stub-1"
    assert report.run.features_as_of == export_time_range(home)[1]
    assert _latest(home) == [
        (1, 1, 12),  # 10 and 11 were bought by user 1: dropped, popular fills after 12
        (1, 2, 14),
        (1, 3, 13),
        (2, 1, 10),  # user 2 only viewed item 10: their own item, then popular
        (2, 2, 11),
        (2, 3, 12),
        (3, 1, 14),  # user 3's own items, the latest first, then popular
        (3, 2, 13),
        (3, 3, 15),
    ]


def test_purchases_return_by_default(home):
    score_users(home, StubModel(home), model_version="stub-1", k=2)
    # user 1's own items by long-decayed score: the buys (4 each; 11 is the later) beat the view
    assert _latest(home) == [(1, 1, 11), (1, 2, 10), (2, 1, 10), (2, 2, 11), (3, 1, 14), (3, 2, 13)]


def test_rows_carry_sources_reasons_and_the_run_its_ranker(home):
    report = score_users(home, StubModel(home), model_version="stub-2", k=3, exclude_purchased=True)
    assert _latest(home, "user_id, rank, source, sources, reason, category_id")[:3] == [
        (1, 1, "repeat", ["repeat", "popular"], "you keep coming back to category 1", 1),
        (1, 2, "popular", ["popular"], "popular in category 2 right now", 2),
        (1, 3, "popular", ["popular"], "popular in category 2 right now", 2),
    ]
    run = report.run
    assert (run.ranker, run.validation) == ("repeat", VALIDATION)
    assert run.counts == {
        "repeat": 5,  # 12; 10; 14, 13, 15 of user 3's own
        "transition": 0,
        "category": 0,
        "next_category": 0,
        "ann": 0,
        "popular": 4,
    }
    assert run.metrics == {}  # never evaluated


def test_users_without_a_profile_get_the_cold_start_rows(home, monkeypatch):
    real = score.profiles_at

    def without_user_2(paths, user_ids, as_of, **kwargs):
        return real(paths, user_ids, as_of, **kwargs).filter(pl.col("user_id") != 2)

    monkeypatch.setattr(score, "profiles_at", without_user_2)
    report = score_users(home, StubModel(home), model_version="stub-1", k=3, exclude_purchased=True)
    assert report.run.n_users == 3
    rows = _latest(home, "user_id, rank, item_id, source, sources, reason")
    assert [r for r in rows if r[0] == 2] == [
        (2, rank, item, "popular", ["popular"], COLD_START_REASON)
        for rank, item in ((1, 10), (2, 11), (3, 12))
    ]
    assert [r[2] for r in rows if r[0] == 1] == [12, 14, 13]


def test_cold_start_ranks_popular_items_with_their_scores(home):
    ranking = StubModel(home).ranking_
    rows = cold_start(ranking, np.array([7, 8]), 2)
    assert rows.columns == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "category_id",
        "source",
        "sources",
        "reason",
    ]
    assert rows.select("user_id", "rank", "item_id", "category_id").rows() == [
        (7, 1, 10, 1),
        (7, 2, 11, 1),
        (8, 1, 10, 1),
        (8, 2, 11, 1),
    ]
    # the long-horizon popularity of item_stats, decayed to the build's as-of time
    hours = (ranking.tables.as_of - T).total_seconds() / 3600
    pop_10 = 4 * 2 ** (-(3 + hours) / 336) + 2 ** (-(1 + hours) / 336)
    pop_11 = 4 * 2 ** (-(2 + hours) / 336)
    assert rows["score"].to_list() == pytest.approx([pop_10, pop_11] * 2)
    assert cold_start(ranking, np.array([], np.int64), 2).is_empty()


def test_the_run_carries_the_newest_evaluation_of_the_interest_model(home):
    def metrics(value: float) -> str:
        rows = [
            {"model": "interest_model", "group": "all", "metric": "recall", "k": 20},
            {"model": "interest_model", "group": "shift", "metric": "ndcg", "k": 50},
            {"model": "popularity", "group": "all", "metric": "recall", "k": 20},
        ]
        return json.dumps([r | {"value": value, "n_users": 3} for r in rows])

    con = connect(home)
    try:
        con.execute(EVALUATION_RUNS_DDL)
        for run_id, day, value in (("old", 1, 0.1), ("new", 2, 0.2)):
            con.execute(
                "insert into evaluation_runs values (?, ?, ?, ?, 3, ['interest_model'], ?, 'x')",
                [run_id, datetime(2024, 5, day), T, T + timedelta(days=1), metrics(value)],
            )
    finally:
        con.close()
    try:
        report = score_users(home, StubModel(home), model_version="stub-1", k=1)
    finally:
        con = connect(home)
        con.execute("drop table evaluation_runs")
        con.close()
    assert report.run.metrics == {"recall_at_20": 0.2, "shift_ndcg_at_50": 0.2}


def test_k_outside_the_range_is_refused(home):
    for k in (0, 1001):
        with pytest.raises(ScoreError, match=r"k must be in 1\.\.1000"):
            score_users(home, StubModel(home), model_version="stub-1", k=k)


def test_a_warehouse_without_users_is_refused(home, tmp_path):
    paths = resolve_home(tmp_path / "empty")
    connect(paths).close()
    with pytest.raises(ScoreError, match="run `recsys ingest` first"):
        score_users(paths, StubModel(home), model_version="stub-1")
