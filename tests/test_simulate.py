"""The event simulator: determinism, realism statistics and the planted migrations' ground truth."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import FeatureConfig
from recsys.warehouse.schema import EVENT_COLUMNS
from recsys.warehouse.simulate import (
    Simulation,
    SimulationConfig,
    SimulationConfigError,
    simulate,
    write_simulation,
)

CONFIG = SimulationConfig(users=600, items=6_000, days=21, seed=11)


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(CONFIG)


@pytest.fixture(scope="module")
def views(sim: Simulation) -> pl.DataFrame:
    return sim.events.filter(pl.col("behavior") == "view")


def test_same_seed_same_log_and_other_seed_differs(sim: Simulation) -> None:
    again = simulate(CONFIG)
    assert again.events.equals(sim.events)
    assert again.migrations.equals(sim.migrations)
    other = simulate(SimulationConfig(users=600, items=6_000, days=21, seed=12))
    assert not other.events.equals(sim.events)


def test_canonical_columns_dtypes_and_order(sim: Simulation) -> None:
    assert sim.events.schema == pl.Schema(
        {
            "user_id": pl.Int64,
            "item_id": pl.Int64,
            "category_id": pl.Int64,
            "behavior": pl.String,
            "event_time": pl.Datetime("us"),
            "session_id": pl.String,
        }
    )
    assert tuple(sim.events.columns) == EVENT_COLUMNS
    assert sim.migrations.schema == pl.Schema(
        {
            "user_id": pl.Int64,
            "from_category_id": pl.Int64,
            "to_category_id": pl.Int64,
            "migrated_at": pl.Datetime("us"),
        }
    )
    assert sim.events.null_count().sum_horizontal().item() == 0
    assert sim.events.equals(sim.events.sort("user_id", "event_time"))
    assert sim.events["user_id"].is_between(1, CONFIG.users).all()
    assert sim.events["item_id"].is_between(1, CONFIG.items).all()
    # Ingest's natural key must not collapse two simulated events into one.
    assert (
        not sim.events.select("user_id", "item_id", "behavior", "event_time").is_duplicated().any()
    )
    first, last = sim.events["event_time"].min(), sim.events["event_time"].max()
    assert CONFIG.start <= first and last < CONFIG.start + timedelta(days=CONFIG.days)
    # The last day is a whole day, not the tail of sessions that ran past the horizon.
    per_day = sim.events.group_by(pl.col("event_time").dt.date()).len()["len"]
    assert per_day.min() > 0.5 * per_day.median()


def test_size_follows_the_activity_knobs(sim: Simulation) -> None:
    expected = CONFIG.users * CONFIG.days * CONFIG.sessions_per_day * CONFIG.session_views / 0.9
    assert 0.8 * expected < sim.events.height < 1.2 * expected


def test_behaviour_mix_is_taobao_like(sim: Simulation) -> None:
    share = dict(sim.events["behavior"].value_counts(normalize=True).iter_rows())
    for behavior, target in {"view": 0.90, "cart": 0.05, "fav": 0.03, "buy": 0.02}.items():
        assert share[behavior] == pytest.approx(target, abs=0.01 if behavior == "view" else 0.005)


def test_each_item_has_one_category(sim: Simulation) -> None:
    per_item = sim.events.group_by("item_id").agg(pl.col("category_id").n_unique())
    assert per_item["category_id"].max() == 1
    assert sim.events["category_id"].n_unique() > 1


def test_follow_ups_come_after_a_view_of_the_item_in_the_session(sim: Simulation) -> None:
    first = sim.events.group_by("session_id", "item_id").agg(pl.col("behavior").first())
    assert (first["behavior"] == "view").all()
    buys_after_cart = (
        sim.events.group_by("session_id", "item_id")
        .agg(pl.col("behavior"))
        .filter(pl.col("behavior").list.contains("cart") & pl.col("behavior").list.contains("buy"))
    )
    assert buys_after_cart.height > 0


def test_item_and_category_popularity_are_skewed(sim: Simulation, views: pl.DataFrame) -> None:
    def top_decile_share(column: str, universe: int) -> float:
        counts = views[column].value_counts()["count"].sort(descending=True)
        return counts.head(max(1, universe // 10)).sum() / counts.sum()

    # Uniform popularity would give the top 10% about 10% of the views.
    assert top_decile_share("item_id", CONFIG.items) > 0.4
    assert top_decile_share("category_id", CONFIG.n_categories) > 0.4


def test_nights_are_quieter_than_evenings(views: pl.DataFrame) -> None:
    hours = views["event_time"].dt.hour()
    night = hours.is_between(2, 5).sum()  # 02:00-05:59
    evening = hours.is_between(19, 22).sum()  # 19:00-22:59
    assert night < 0.3 * evening


def test_users_revisit_items(views: pl.DataFrame) -> None:
    revisit = views.select(pl.col("item_id").is_first_distinct().over("user_id").not_().mean())
    assert revisit.item() > 0.2


def test_sessions_belong_to_one_user_and_have_no_30_minute_gap(sim: Simulation) -> None:
    per_session = sim.events.group_by("session_id").agg(
        users=pl.col("user_id").n_unique(),
        owner=pl.col("user_id").first().cast(pl.String),
        longest_gap=pl.col("event_time").sort().diff().max(),
    )
    assert (per_session["users"] == 1).all()
    assert (per_session["session_id"].str.split("-").list.first() == per_session["owner"]).all()
    assert per_session["longest_gap"].max() < timedelta(minutes=30)
    assert per_session.height > CONFIG.users


def test_migrations_are_planted(sim: Simulation) -> None:
    migrations = sim.migrations
    assert 10 <= migrations.height < CONFIG.users
    assert (migrations["from_category_id"] != migrations["to_category_id"]).all()
    assert migrations["migrated_at"].min() >= CONFIG.start + timedelta(days=3)
    assert migrations["migrated_at"].max() <= CONFIG.start + timedelta(days=CONFIG.days - 1)
    gaps = migrations.select(pl.col("migrated_at").diff().over("user_id")).to_series()
    assert gaps.drop_nulls().min() is None or gaps.drop_nulls().min() >= timedelta(days=5)


def test_migration_target_is_new_then_dominates_the_next_day(sim: Simulation) -> None:
    joined = sim.events.join(sim.migrations, on="user_id")
    before = joined.filter(pl.col("event_time") < pl.col("migrated_at"))
    touched_before = before.filter(pl.col("category_id") == pl.col("to_category_id"))
    assert touched_before.height == 0
    next_day = (
        joined.filter(
            pl.col("event_time").is_between(
                pl.col("migrated_at"), pl.col("migrated_at") + timedelta(days=1), closed="left"
            )
        )
        .group_by("user_id", "migrated_at")
        .agg(events=pl.len(), share=(pl.col("category_id") == pl.col("to_category_id")).mean())
    )
    assert next_day.height == sim.migrations.height
    assert next_day["events"].min() >= 5
    assert next_day["share"].min() > 0.5


def test_from_category_is_the_decayed_top_category_before_the_jump(sim: Simulation) -> None:
    features = FeatureConfig()
    half_life_s = features.long_half_life_hours * 3600
    for user_id, from_category, _, migrated_at in sim.migrations.head(8).iter_rows():
        history = sim.events.filter(
            (pl.col("user_id") == user_id) & (pl.col("event_time") < migrated_at)
        )
        score: dict[int, float] = {}
        for category, behavior, when in history.select(
            "category_id", "behavior", "event_time"
        ).iter_rows():
            age = (migrated_at - when).total_seconds()
            weight = features.behavior_weights[behavior] * 2 ** (-age / half_life_s)
            score[category] = score.get(category, 0.0) + weight
        assert max(score, key=score.__getitem__) == from_category


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"users": 0}, "users"),
        ({"items": -5}, "items"),
        ({"days": 0}, "days"),
        ({"days": 5000}, "days"),
        ({"seed": -1}, "seed"),
        ({"categories": 0}, "categories"),
        ({"categories": 101}, "categories"),
        ({"sessions_per_day": 0.0}, "sessions_per_day"),
        ({"session_views": 0.5}, "session_views"),
        ({"migrations_per_user_day": -0.1}, "migrations_per_user_day"),
        ({"post_migration_share": 1.0}, "post_migration_share"),
        ({"repeat_probability": 1.0}, "repeat_probability"),
        ({"start": datetime(2026, 1, 1).astimezone()}, "start"),
    ],
)
def test_bad_config_is_refused_with_the_field_named(change: dict, field: str) -> None:
    arguments = {"users": 10, "items": 100, "days": 3} | change
    with pytest.raises(SimulationConfigError, match=field) as raised:
        SimulationConfig(**arguments)
    assert isinstance(raised.value, ValueError)


def test_tiny_simulations_keep_the_schema(sim: Simulation) -> None:
    empty = simulate(SimulationConfig(users=1, items=1, days=1, sessions_per_day=1e-6))
    assert empty.events.height == 0
    assert empty.events.schema == sim.events.schema
    assert empty.migrations.schema == sim.migrations.schema


def test_write_simulation_round_trip(tmp_path, sim: Simulation) -> None:
    events_path, migrations_path = write_simulation(sim, tmp_path / "new" / "folder")
    assert pl.read_parquet(events_path).equals(sim.events)
    assert pl.read_parquet(migrations_path).equals(sim.migrations)
    assert sorted(p.name for p in events_path.parent.iterdir()) == [
        "events.parquet",
        "migrations.parquet",
    ]


def test_cli_simulate_writes_under_home(tmp_path) -> None:
    config = SimulationConfig(users=80, items=800, days=6, seed=3)
    result = CliRunner().invoke(
        app,
        ["simulate", "--users", "80", "--items", "800", "--days", "6", "--seed", "3"]
        + ["--home", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "simulations" / "sim-u80-i800-d6-s3"
    expected = simulate(config)
    assert pl.read_parquet(folder / "events.parquet").equals(expected.events)
    assert pl.read_parquet(folder / "migrations.parquet").equals(expected.migrations)
    assert f"{expected.events.height:,}" in result.output


def test_cli_simulate_out_and_bad_input(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "elsewhere"
    result = runner.invoke(
        app, ["simulate", "--users", "20", "--items", "50", "--days", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "events.parquet").exists() and (out / "migrations.parquet").exists()
    refused = runner.invoke(app, ["simulate", "--users", "0", "--home", str(tmp_path)])
    assert refused.exit_code == 2
    assert "users must be a positive integer" in refused.output
