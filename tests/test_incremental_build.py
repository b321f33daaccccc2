"""Incremental builds (``recsys build`` after a first build) equal one full build over the same
events: every mart, the materialised event tables and every Feast export, late events included."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import duckdb
import polars as pl
import polars.testing
import pytest
from feature_helpers import load_events

from recsys.config import FeatureConfig
from recsys.home import Paths
from recsys.warehouse.build import EXPORTS, build, marts
from recsys.warehouse.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.slow

# each mart's grain (its first line), and the live tables' row keys
KEYS = {
    "user_category_interest": ["user_id", "category_id"],
    "user_interest_shift": ["user_id"],
    "interest_migrations": ["user_id", "detected_at"],
    "user_behavior_funnel": ["user_id"],
    "user_recent_sequence": ["user_id"],
    "item_stats": ["item_id"],
    "edges_user_item": ["user_id", "item_id", "behavior"],
    "edges_item_item": ["src_item_id", "dst_item_id"],
    "edges_item_category": ["item_id"],
    "category_transitions": ["src_category_id", "dst_category_id"],
    "live.int_event_stream": ["user_id", "user_event_number"],
    "live.int_category_entries": ["user_id", "category_id", "user_event_number"],
}


def tables(paths: Paths) -> dict[str, pl.DataFrame]:
    """Every mart, the two live tables and every export file, as frames sorted by their keys."""
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    # the stream's ingested_at is when each home ingested the event, which differs by design
    frames = {
        name: con.sql(f"select * exclude (ingested_at) from {name}").pl().sort(KEYS[name])
        if name == "live.int_event_stream"
        else con.sql(f"from {name}").pl().sort(KEYS[name])
        for name in KEYS
    }
    con.close()
    for file, (_, key) in EXPORTS.items():
        frames[file] = pl.read_parquet(paths.features / file).sort([key, "event_timestamp"])
    return frames


def assert_same(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    """Equal as multisets of rows (sorted by key: EXCEPT ALL both ways), floats to 1e-6."""
    assert set(got) == set(want)
    for name in want:
        try:
            polars.testing.assert_frame_equal(
                got[name], want[name], check_exact=False, rel_tol=1e-6, abs_tol=1e-6
            )
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    sim = simulate(SimulationConfig(users=50, items=300, days=6, seed=5))
    return sim.events


def late_event(events: pl.DataFrame) -> pl.DataFrame:
    """A new view, dated on the first day, of the busiest user: it sorts before their history."""
    user = events.group_by("user_id").len().sort(["len", "user_id"]).item(-1, "user_id")
    first = events.filter(pl.col("user_id") == user).sort("event_time").head(1)
    return first.with_columns(
        pl.col("event_time") + timedelta(minutes=1),
        pl.col("item_id") + 100_000,
        pl.lit("view").alias("behavior"),
    )


def test_day_by_day_builds_equal_one_full_build(events, tmp_path):
    by_day = events.with_columns(day=pl.col("event_time").dt.date()).partition_by(
        "day", maintain_order=True, include_key=False
    )
    late = late_event(events)
    assert len(by_day) >= 5
    daily = Paths(tmp_path / "daily")
    plans = []
    for number, day in enumerate(by_day):
        batch = pl.concat([day, late]) if number == 3 else day
        load_events(daily, batch.to_pandas())
        plans.append(build(daily).plan)
    assert plans[0].startswith("full") and set(plans[1:]) == {"incremental"}, plans

    whole = Paths(tmp_path / "whole")
    load_events(whole, pl.concat([events, late]).to_pandas())
    assert build(whole).plan.startswith("full")
    assert_same(tables(daily), tables(whole))
    assert len(marts()) == sum("." not in name for name in KEYS)


def test_new_parameters_or_full_rebuild_everything(events, tmp_path):
    paths = Paths(tmp_path / "home")
    first_days = events.filter(pl.col("event_time") < events["event_time"].min() + timedelta(3))
    load_events(paths, first_days.to_pandas())
    build(paths)
    assert build(paths).plan == "incremental"
    assert build(paths, full=True).plan == "full: --full"
    longer = replace(FeatureConfig(), short_half_life_hours=48.0)
    assert build(paths, config=longer).plan == "full: the parameters, weights or sql/ changed"
