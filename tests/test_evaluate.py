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
    from recsys.ranking.policy import RankingSettings

    assert list(learned_models(ablations=False)) == ["interest_model"]
    models = learned_models(ablations=True)
    assert list(models) == [
        "interest_model",
        "interest_model-full",
        "interest_model-full-no_gnn",
        "interest_model-full-no_sequence",
        "interest_model-full-no_next_category",
        "interest_model-full-no_multi_interest",
    ]
    configs = {name: make().config for name, make in models.items()}
    default, full = configs["interest_model"], configs["interest_model-full"]
    # the served defaults: every component whose removal cost less than the interval is off
    assert (default.towers.use_gnn, default.towers.use_sequence) == (False, False)
    assert default.ranking == RankingSettings()
    assert not default.ranking.next_categories and default.ranking.ann_interests == 0
    assert (full.towers.use_gnn, full.towers.use_sequence) == (True, True)
    assert full.ranking.next_categories and full.ranking.ann_interests > 0
    # the full model and its ablations serve a learned policy, so that they measure something
    assert full.policies == ("learned",) and "repeat" in default.policies
    assert (
        replace(full, towers=default.towers, ranking=default.ranking, policies=default.policies)
        == default
    )
    expected = {
        "interest_model-full-no_gnn": replace(full, towers=replace(full.towers, use_gnn=False)),
        "interest_model-full-no_sequence": replace(
            full, towers=replace(full.towers, use_sequence=False)
        ),
        "interest_model-full-no_next_category": replace(
            full, ranking=replace(full.ranking, next_categories=False)
        ),
        "interest_model-full-no_multi_interest": replace(
            full, ranking=replace(full.ranking, ann_interests=0)
        ),
    }
    for name, config in expected.items():
        assert configs[name] == config, name


class PolicyModel(SpyModel):
    """A learned-looking model: it names the policy it serves after fit."""

    def fit(self, events: pl.DataFrame, as_of: datetime):
        self.policy_ = "learned_gbdt"
        return self


def test_metrics_json_rows_carry_intervals_deltas_and_the_served_policy(home):
    run = run_evaluation(home, models={"interest_model": PolicyModel, "spy": SpyModel})
    assert run.policies == {"interest_model": "learned_gbdt"}
    rows = json.loads((run.run_dir / "metrics.json").read_text())
    assert set(rows[0]) == {
        "model",
        "group",
        "metric",
        "k",
        "value",
        "n_users",
        "ci_low",
        "ci_high",
        "best_baseline",
        "delta_vs_best_baseline",
        "delta_ci_low",
        "delta_ci_high",
        "policy",
        "served",
    }
    baselines = {"popularity", "recent_popularity", "repeat", "category_interest"}
    baselines |= {"item_knn", "als", "blend"}
    for row in rows:
        learned = row["model"] == "interest_model"
        assert row["policy"] == ("learned_gbdt" if learned else None)
        assert row["served"] is learned
        if row["metric"] == "coverage":
            assert row["ci_low"] is None and row["delta_vs_best_baseline"] is None
            continue
        assert row["ci_low"] <= row["value"] + 1e-12 and row["value"] <= row["ci_high"] + 1e-12
        assert row["best_baseline"] in baselines
        best = next(
            r["value"]
            for r in rows
            if (r["model"], r["group"], r["metric"], r["k"])
            == (row["best_baseline"], row["group"], row["metric"], row["k"])
        )
        assert row["delta_vs_best_baseline"] == pytest.approx(row["value"] - best)
        assert row["delta_ci_low"] <= row["delta_vs_best_baseline"] + 1e-12
        assert row["delta_vs_best_baseline"] <= row["delta_ci_high"] + 1e-12
        same = [
            r["value"]
            for r in rows
            if r["model"] in baselines
            and (r["group"], r["metric"], r["k"]) == (row["group"], row["metric"], row["k"])
        ]
        assert best == max(same)
    # Both spies recommend the same lists: their paired difference has a [0, 0] interval.
    spy = {(r["group"], r["metric"], r["k"]): r for r in rows if r["model"] == "spy"}
    for r in rows:
        if r["model"] == "interest_model" and r["metric"] != "coverage":
            twin = spy[(r["group"], r["metric"], r["k"])]
            assert (r["ci_low"], r["ci_high"]) == (twin["ci_low"], twin["ci_high"])

    con = duckdb.connect(str(home.warehouse), read_only=True)
    [(stored,)] = con.execute("select metrics from evaluation_runs").fetchall()
    stored = json.loads(stored)
    assert stored == rows
