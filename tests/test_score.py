"""``recsys score``: every known user scored into one run, with the purchased-items policy."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest

from recsys.home import resolve_home
from recsys.ranking.score import ScoreError, latest_model_dir, score_users
from recsys.warehouse.connect import connect

T = datetime(2024, 5, 1)
CATALOGUE = [10, 11, 12, 13, 14, 15]


class StubModel:
    """Ranks the catalogue in a fixed order for everybody (item 10 first)."""

    as_of_ = T

    def recommend_frame(self, user_ids: np.ndarray, k: int) -> pl.DataFrame:
        items = CATALOGUE[:k]
        return pl.DataFrame(
            {
                "user_id": np.repeat(user_ids, len(items)),
                "rank": np.tile(np.arange(1, len(items) + 1, dtype=np.int32), len(user_ids)),
                "item_id": np.tile(items, len(user_ids)),
                "score": np.tile(-np.arange(len(items), dtype=float), len(user_ids)),
                "category_id": 1,
                "source": "popular",
                "reason": "popular right now",
            }
        )


@pytest.fixture
def home(tmp_path):
    paths = resolve_home(tmp_path / "home")
    frame = pl.DataFrame(  # noqa: F841 (read by DuckDB's replacement scan)
        {
            "user_id": [1, 1, 1, 2],
            "item_id": [10, 11, 12, 10],
            "category_id": [1, 1, 1, 1],
            "behavior": ["buy", "buy", "view", "view"],
            "event_time": [T - timedelta(hours=h) for h in (3, 2, 1, 1)],
        }
    )
    con = connect(paths)
    con.execute(
        "insert into events select *, null, 'test', null, now(), "
        "hash(user_id, item_id, behavior, event_time) from frame"
    )
    con.close()
    return paths


def _latest(paths) -> list[tuple]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return con.execute(
            "select user_id, rank, item_id from latest_recommendations order by 1, 2"
        ).fetchall()
    finally:
        con.close()


def test_purchased_items_never_return_by_default(home):
    report = score_users(home, StubModel(), model_version="stub-1", k=3)
    assert report.run.n_users == 2 and report.run.model_version == "stub-1"
    assert _latest(home) == [
        (1, 1, 12),  # 10 and 11 were bought by user 1: dropped, the rest re-ranked
        (1, 2, 13),
        (1, 3, 14),
        (2, 1, 10),  # user 2 only viewed item 10
        (2, 2, 11),
        (2, 3, 12),
    ]


def test_the_policy_can_let_purchases_return(home):
    score_users(home, StubModel(), model_version="stub-1", k=2, exclude_purchased=False)
    assert _latest(home) == [(1, 1, 10), (1, 2, 11), (2, 1, 10), (2, 2, 11)]


def test_k_outside_the_range_is_refused(home):
    with pytest.raises(ScoreError, match=r"k must be in 1\.\.1000"):
        score_users(home, StubModel(), model_version="stub-1", k=0)


def test_latest_model_is_the_newest_as_of(tmp_path):
    paths = resolve_home(tmp_path)
    with pytest.raises(ScoreError, match="run `recsys train` first"):
        latest_model_dir(paths)
    for name, as_of in (("b", "2024-01-02"), ("a", "2024-03-01"), ("c", "2024-02-01")):
        folder = paths.models / name
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"as_of": as_of}))
    assert latest_model_dir(paths).name == "a"
