"""The event simulator: determinism, realism statistics and the planted migrations' ground truth."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import FeatureConfig
from recsys.pipeline import PIPELINES_DIR, PipelineConfig
from recsys.warehouse.schema import EVENT_COLUMNS
from recsys.warehouse.simulate import (
    ASSOCIATIONS_FILE,
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
            "associated": pl.Boolean,
        }
    )
    assert sim.associations.schema == pl.Schema(
        {"src_category_id": pl.Int64, "dst_category_id": pl.Int64, "weight": pl.Float64}
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
    for user_id, from_category, _, migrated_at, _ in sim.migrations.head(8).iter_rows():
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
        ({"association_probability": 1.5}, "association_probability"),
        ({"association_probability": -0.1}, "association_probability"),
        ({"associations_per_category": -1}, "associations_per_category"),
        ({"associations_per_category": 2.5}, "associations_per_category"),
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
    assert empty.associations.height == 0  # one category: nothing to associate it with
    assert empty.associations.schema == sim.associations.schema


def test_write_simulation_round_trip(tmp_path, sim: Simulation) -> None:
    events_path, migrations_path = write_simulation(sim, tmp_path / "new" / "folder")
    assert pl.read_parquet(events_path).equals(sim.events)
    assert pl.read_parquet(migrations_path).equals(sim.migrations)
    assert pl.read_parquet(events_path.parent / ASSOCIATIONS_FILE).equals(sim.associations)
    assert sorted(p.name for p in events_path.parent.iterdir()) == [
        "category_associations.parquet",
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
    folder = tmp_path / "simulations" / "sim-u80-i800-d6-s3-a0.8x3"
    expected = simulate(config)
    assert pl.read_parquet(folder / "events.parquet").equals(expected.events)
    assert pl.read_parquet(folder / "migrations.parquet").equals(expected.migrations)
    assert pl.read_parquet(folder / ASSOCIATIONS_FILE).equals(expected.associations)
    assert f"{expected.events.height:,}" in result.output


def test_cli_simulate_association_options(tmp_path) -> None:
    runner = CliRunner()
    base = ["simulate", "--users", "80", "--items", "800", "--days", "6", "--seed", "3"]
    result = runner.invoke(
        app,
        base
        + ["--association-probability", "0", "--associations-per-category", "2"]
        + ["--home", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    # The graph-free log keeps its old folder name; the graph is still written.
    folder = tmp_path / "simulations" / "sim-u80-i800-d6-s3"
    expected = simulate(
        SimulationConfig(
            users=80,
            items=800,
            days=6,
            seed=3,
            association_probability=0.0,
            associations_per_category=2,
        )
    )
    assert pl.read_parquet(folder / "events.parquet").equals(expected.events)
    graph = pl.read_parquet(folder / ASSOCIATIONS_FILE)
    assert graph.equals(expected.associations)
    assert graph.group_by("src_category_id").len()["len"].unique().to_list() == [2]
    refused = runner.invoke(app, base + ["--association-probability", "2", "--home", str(tmp_path)])
    assert refused.exit_code == 2
    assert "association_probability must be in [0, 1]" in refused.output


def test_cli_simulate_out_and_bad_input(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "elsewhere"
    result = runner.invoke(
        app, ["simulate", "--users", "20", "--items", "50", "--days", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "events.parquet").exists() and (out / "migrations.parquet").exists()
    assert (out / ASSOCIATIONS_FILE).exists()
    refused = runner.invoke(app, ["simulate", "--users", "0", "--home", str(tmp_path)])
    assert refused.exit_code == 2
    assert "users must be a positive integer" in refused.output


# --- the category association graph -------------------------------------------------------

# Many jumps per user, so that second and third jumps (whose sources depend on earlier ones)
# are exercised too.
JUMPY = SimulationConfig(users=300, items=3_000, days=30, seed=5, migrations_per_user_day=0.15)


def _digest(frame: pl.DataFrame) -> str:
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()


def _with(config: SimulationConfig, **changes) -> SimulationConfig:
    return SimulationConfig(**(vars(config) | changes))


def _edges(sim: Simulation) -> pl.DataFrame:
    """The planted migrations with ``edge``: whether (from, to) is an edge of the graph."""
    graph = sim.associations.select(
        from_category_id="src_category_id", to_category_id="dst_category_id", edge=pl.lit(True)
    )
    return sim.migrations.join(
        graph, on=["from_category_id", "to_category_id"], how="left"
    ).with_columns(pl.col("edge").fill_null(False))


# sha256 of write_csv() of the events and of the four migration columns, computed with the
# simulator as it was before the association graph existed (same seeds).
GRAPH_FREE_DIGESTS = {
    11: (
        "97229fe3014f20ca0537270b15a4bdbf07dd9af3415ff46a0db9a967ab45c5a2",
        "ef5d06e3b6dcb722e9c31554975498afce785ae538938388c0cf0dde172a5007",
    ),
    5: (
        "452fb3ab3cb1742c0ea74fbdf56cd003f7a0e087646f9b428c90e73818413a3a",
        "9420b51ca9ca27771c3ce09d2c20d773cac4c4a35fba30c87377d72d3cfea021",
    ),
}


@pytest.mark.parametrize("config", [CONFIG, JUMPY], ids=["default", "jumpy"])
@pytest.mark.parametrize(
    "off", [{"association_probability": 0.0}, {"associations_per_category": 0}]
)
def test_without_associations_the_old_log_is_reproduced_exactly(
    config: SimulationConfig, off: dict
) -> None:
    graph_free = _with(config, **off)
    assert not graph_free.follows_associations
    assert graph_free.name == f"sim-u{config.users}-i{config.items}-d{config.days}-s{config.seed}"
    sim = simulate(graph_free)
    columns = ["user_id", "from_category_id", "to_category_id", "migrated_at"]
    assert (_digest(sim.events), _digest(sim.migrations.select(columns))) == GRAPH_FREE_DIGESTS[
        config.seed
    ]
    assert not sim.migrations["associated"].any()


def test_graph_is_seeded_and_well_formed(sim: Simulation) -> None:
    graph = sim.associations
    # Same seed, same graph, whatever the association probability; another seed, another graph.
    assert simulate(_with(CONFIG, association_probability=0.0)).associations.equals(graph)
    assert not simulate(_with(CONFIG, seed=12)).associations.equals(graph)
    categories = CONFIG.n_categories
    assert graph.height == categories * CONFIG.associations_per_category
    per_source = graph.group_by("src_category_id").agg(
        n=pl.len(),
        distinct=pl.col("dst_category_id").n_unique(),
        total=pl.col("weight").sum(),
        self_loops=(pl.col("dst_category_id") == pl.col("src_category_id")).sum(),
    )
    assert per_source.height == categories
    assert (per_source["n"] == CONFIG.associations_per_category).all()
    assert (per_source["distinct"] == per_source["n"]).all()
    assert (per_source["self_loops"] == 0).all()
    assert ((per_source["total"] - 1).abs() < 1e-9).all()
    assert (graph["weight"] > 0).all()
    assert set(graph["dst_category_id"]) <= set(graph["src_category_id"])
    assert set(graph["src_category_id"]) == set(range(1, categories + 1))
    # Popular categories are associated more often than a uniform draw would make them.
    counts = graph["dst_category_id"].value_counts()["count"].sort(descending=True)
    assert counts.head(categories // 10).sum() / counts.sum() > 0.25
    # More neighbours than other categories: every other category, once.
    tiny = simulate(SimulationConfig(users=5, items=40, days=2, categories=3))
    assert tiny.associations.height == 3 * 2


def test_with_probability_one_every_jump_follows_the_graph_but_fallbacks() -> None:
    sim = simulate(_with(JUMPY, association_probability=1.0))
    migrations = _edges(sim)
    assert migrations.height > 200
    fallbacks = migrations.filter(~pl.col("associated"))
    off_graph = migrations.filter(pl.col("associated") & ~pl.col("edge"))
    # Fallbacks: every neighbour of the category left was already known to the user.
    assert fallbacks.height <= 0.1 * migrations.height
    # An associated jump leaves the category a detector sees as the user's top one
    # (from_category_id) for one of its neighbours. The only exceptions: an exploration
    # spoiled by a later-placed jump tips which category is on top (1 of 412 here).
    assert off_graph.height <= 0.01 * migrations.height
    # The observable-jump rules hold as without the graph.
    assert (migrations["from_category_id"] != migrations["to_category_id"]).all()
    joined = sim.events.join(sim.migrations, on="user_id")
    touched = joined.filter(
        (pl.col("event_time") < pl.col("migrated_at"))
        & (pl.col("category_id") == pl.col("to_category_id"))
    )
    assert touched.height == 0
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
    assert next_day["events"].min() >= 5 and next_day["share"].min() > 0.5
    # Where the jumps happen does not depend on the graph, only where they go.
    graph_free = simulate(_with(JUMPY, association_probability=0.0)).migrations
    assert graph_free.select("user_id", "migrated_at").equals(
        sim.migrations.select("user_id", "migrated_at")
    )


def test_default_probability_sends_most_jumps_along_the_graph(sim: Simulation) -> None:
    migrations = _edges(sim)
    share = migrations["associated"].mean()
    assert 0.6 < share < 0.95
    assert migrations.filter(pl.col("associated"))["edge"].all()
    graph_free = _edges(simulate(_with(CONFIG, association_probability=0.0)))
    assert graph_free["edge"].mean() < 0.2  # by chance only


def test_explorations_follow_the_graph(sim: Simulation) -> None:
    """Within a session, a switch to another category lands on a neighbour of the session's
    category more often with the graph than without."""

    def switches_along_edges(s: Simulation) -> float:
        graph = s.associations.select("src_category_id", "dst_category_id", edge=pl.lit(True))
        switches = (
            s.events.filter(pl.col("behavior") == "view")
            .with_columns(
                src_category_id=pl.col("category_id").first().over("session_id"),
                dst_category_id=pl.col("category_id"),
            )
            .filter(pl.col("dst_category_id") != pl.col("src_category_id"))
            .join(graph, on=["src_category_id", "dst_category_id"], how="left")
        )
        return switches["edge"].is_not_null().mean()

    with_graph = switches_along_edges(simulate(_with(CONFIG, association_probability=1.0)))
    without = switches_along_edges(simulate(_with(CONFIG, association_probability=0.0)))
    assert with_graph > without + 0.08  # measured: 0.48 against 0.34


def test_name_and_pipeline_config_carry_the_association_knobs() -> None:
    assert CONFIG.name == "sim-u600-i6000-d21-s11-a0.8x3"
    assert _with(CONFIG, association_probability=0.25).name.endswith("-a0.25x3")
    demo = PipelineConfig.from_toml(Path(PIPELINES_DIR) / "demo.toml")
    config = SimulationConfig(**vars(demo.simulator))
    assert config.follows_associations
    assert config.association_probability == 0.8 and config.associations_per_category == 3
