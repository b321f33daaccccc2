"""``recsys evaluate``: one split for every model, no leakage, results a script can compare."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest

from recsys.evaluation.run import EvaluationConfig, learned_models, run_evaluation
from recsys.evaluation.split import last_day_split
from recsys.home import resolve_home
from recsys.warehouse.connect import connect

START = datetime(2024, 3, 1)


def _events() -> pl.DataFrame:
    """Ten users over three days; each returns to its own two items, plus a shared hit item."""
    rows = []
    for user in range(10):
        for day in range(3):
            for hour, item in ((9, 100 + user), (10, 200 + user), (11, 999)):
                rows.append((user, item, item // 100, "view", START + timedelta(day, hours=hour)))
    return pl.DataFrame(
        rows, schema=["user_id", "item_id", "category_id", "behavior", "event_time"], orient="row"
    )


@pytest.fixture
def home(tmp_path):
    paths = resolve_home(tmp_path / "home")
    con = connect(paths)
    frame = _events()  # noqa: F841 (read by DuckDB's replacement scan)
    con.execute(
        "insert into events select *, null, 'test', null, now(), "
        "hash(user_id, item_id, behavior, event_time) from frame"
    )
    con.close()
    return paths


class SpyModel:
    """Remembers what it was fitted on; recommends each user's own first item."""

    seen_max: datetime | None = None

    def fit(self, events: pl.DataFrame, as_of: datetime):
        SpyModel.seen_max = events["event_time"].max()
        SpyModel.as_of = as_of
        return self

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        recs = np.full((len(user_ids), k), -1, dtype=np.int64)
        recs[:, 0] = 100 + user_ids
        return recs


def test_every_model_is_scored_on_one_split_without_leakage(home):
    run = run_evaluation(home, models={"spy": SpyModel})
    expected_split = last_day_split(_events())
    assert run.split == expected_split
    assert SpyModel.as_of == expected_split.train_end
    assert SpyModel.seen_max < expected_split.train_end

    rows = json.loads((run.run_dir / "metrics.json").read_text())
    keys = {(r["model"], r["group"], r["metric"], r["k"]) for r in rows}
    for model in ("popularity", "repeat", "als", "blend", "spy"):
        for metric in ("recall", "ndcg", "hit_rate", "coverage"):
            assert (model, "all", metric, 20) in keys
            assert (model, "all", metric, 50) in keys
    # The spy hits exactly one of each user's three test items at rank 1.
    spy = {(r["metric"], r["k"]): r["value"] for r in rows if r["model"] == "spy"}
    assert spy[("recall", 20)] == pytest.approx(1 / 3)
    assert spy[("hit_rate", 20)] == pytest.approx(1.0)
    assert spy[("ndcg", 20)] == pytest.approx(1 / (1 + 1 / np.log2(3) + 1 / np.log2(4)))
    assert len(run.plots) == 4 and all(p.stat().st_size > 0 for p in run.plots)

    con = duckdb.connect(str(home.warehouse), read_only=True)
    [(run_id, n_users, models)] = con.execute(
        "select run_id, n_test_users, models from evaluation_runs"
    ).fetchall()
    assert (run_id, n_users) == (run.run_id, 10)
    assert "spy" in models and "repeat" in models


def test_explicit_test_day_in_a_time_zone(home):
    config = EvaluationConfig(tz="Asia/Shanghai", test_day=datetime(2024, 3, 3).date())
    run = run_evaluation(home, config=config, models={})
    assert run.split.train_end == datetime(2024, 3, 2, 16)
    assert run.split.test_end == datetime(2024, 3, 3, 16)


def test_learned_models_and_their_ablations_change_one_flag_each():
    assert list(learned_models(ablations=False)) == ["interest_model"]
    models = learned_models(ablations=True)
    assert list(models) == [
        "interest_model",
        "interest_model-no_gnn",
        "interest_model-no_sequence",
    ]
    towers = {name: make().config.towers for name, make in models.items()}
    full = towers["interest_model"]
    assert (full.use_gnn, full.use_sequence) == (True, True)
    assert towers["interest_model-no_gnn"] == replace(full, use_gnn=False)
    assert towers["interest_model-no_sequence"] == replace(full, use_sequence=False)
