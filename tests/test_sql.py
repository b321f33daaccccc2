"""The SQL feature layer: hand-computed oracles for each mart, as-of correctness, the sql/tests
data tests, the Feast snapshots, and migration recovery on simulated data."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import polars.testing
import pytest

from recsys.config import FeatureConfig
from recsys.evaluation.migration_recovery import migration_recovery
from recsys.home import Paths
from recsys.warehouse.build import (
    EXPORTS,
    BuildError,
    build,
    load_data_tests,
    load_models,
    run_data_tests,
)
from recsys.warehouse.connect import connect

T0 = datetime(2026, 3, 1, 12, 0, 0)
AS_OF = datetime(2026, 3, 10, 0, 0, 0)
HOUR = timedelta(hours=1)
TAOBAO = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_user_behavior_sample.csv"
MARTS = [m.name for m in load_models() if m.layer == "marts"]
EVENT_SCHEMA = {
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "category_id": pl.Int64,
    "behavior": pl.Utf8,
    "event_time": pl.Datetime("us"),
    "session_id": pl.Utf8,
}


def load_events(paths: Paths, rows: list[tuple] | pl.DataFrame) -> None:
    """Append canonical events (tuples in EVENT_SCHEMA order, or a frame) to the warehouse."""
    frame = (
        rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, EVENT_SCHEMA, orient="row")
    )
    con = connect(paths)
    con.register("incoming", frame.select(list(EVENT_SCHEMA)).to_arrow())
    con.execute(
        "insert into events by name select *, 'test' as source_file, now() as ingested_at, "
        "hash(user_id, item_id, behavior, event_time) as event_key from incoming"
    )
    con.close()


def query(paths: Paths, sql: str) -> list[tuple]:
    con = connect(paths, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def home(tmp_path: Path, name: str = "home") -> Paths:
    return Paths(tmp_path / name)


def small_simulation(days: int = 12, seed: int = 3):
    from recsys.warehouse.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(users=300, items=2000, days=days, seed=seed))


# --- oracles ---


def test_decay_and_shares_match_hand_computation(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 100, 10, "view", AS_OF - 24 * HOUR, None),
            (1, 200, 20, "buy", AS_OF - 48 * HOUR, None),
        ],
    )
    build(paths, as_of=AS_OF, export=False)
    rows = query(
        paths,
        "select category_id, interest_short, interest_long, share_short, share_long, n_events "
        "from user_category_interest order by category_id",
    )
    long_10, long_20 = 2 ** (-24 / 336), 4 * 2 ** (-48 / 336)
    expected = [
        (10, 0.5, long_10, 0.5 / 1.5, long_10 / (long_10 + long_20), 1),
        (20, 1.0, long_20, 1.0 / 1.5, long_20 / (long_10 + long_20), 1),
    ]
    for got, want in zip(rows, expected, strict=True):
        assert got[0] == want[0] and got[5] == want[5]
        assert got[1:5] == pytest.approx(want[1:5], abs=1e-9)


def test_shift_metrics_match_hand_computation(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 100, 10, "view", AS_OF - 100 * HOUR, None),  # old category
            (1, 101, 10, "cart", AS_OF - 90 * HOUR, None),
            (1, 200, 20, "view", AS_OF - 6 * HOUR, None),  # new: inside the 24 h window
            (1, 201, 20, "view", AS_OF - 2 * HOUR, None),
        ],
    )
    build(paths, as_of=AS_OF, export=False)

    def shares(half_life):
        cat10 = 2 ** (-100 / half_life) + 3 * 2 ** (-90 / half_life)
        cat20 = 2 ** (-6 / half_life) + 2 ** (-2 / half_life)
        return [cat10 / (cat10 + cat20), cat20 / (cat10 + cat20)]

    p, q = shares(24), shares(336)
    mid = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    js = 0.5 * sum(a * math.log2(a / m) for a, m in zip(p, mid, strict=True)) + 0.5 * sum(
        b * math.log2(b / m) for b, m in zip(q, mid, strict=True)
    )
    ((js_got, top_s, top_l, changed, novel, ent_s, ent_l),) = query(
        paths,
        "select js_divergence, top_category_short, top_category_long, top_category_changed, "
        "novel_category_share, entropy_short, entropy_long from user_interest_shift",
    )
    assert js_got == pytest.approx(js, abs=1e-9)
    assert (top_s, top_l, changed) == (20, 10 if q[0] > q[1] else 20, q[0] > q[1])
    assert novel == pytest.approx(p[1], abs=1e-9)
    assert ent_s == pytest.approx(-sum(x * math.log2(x) for x in p), abs=1e-9)
    assert ent_l == pytest.approx(-sum(x * math.log2(x) for x in q), abs=1e-9)


def test_funnel_counts_rates_and_recency(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 1, 10, "view", AS_OF - 10 * HOUR, None),
            (1, 2, 10, "view", AS_OF - 9 * HOUR, None),
            (1, 3, 10, "view", AS_OF - 8 * HOUR, None),
            (1, 1, 10, "cart", AS_OF - 7 * HOUR, None),
            (1, 2, 10, "cart", AS_OF - 6 * HOUR, None),
            (1, 1, 10, "buy", AS_OF - 5 * HOUR, None),
            (1, 3, 10, "fav", AS_OF - 4 * HOUR, None),
            (1, 4, 10, "buy", AS_OF - 3 * HOUR, None),  # bought without a view
        ],
    )
    build(paths, as_of=AS_OF, export=False)
    (row,) = query(
        paths,
        "select n_view, n_cart, n_fav, n_buy, cart_rate, fav_rate, buy_rate, cart_to_buy_rate, "
        "last_view_at, last_cart_at, last_fav_at, last_buy_at, hours_since_last_event "
        "from user_behavior_funnel",
    )
    assert row[:4] == (3, 2, 1, 2)
    assert row[4:8] == pytest.approx((2 / 3, 1 / 3, 1 / 3, 1 / 2), abs=1e-12)
    assert row[8:12] == (AS_OF - 8 * HOUR, AS_OF - 6 * HOUR, AS_OF - 4 * HOUR, AS_OF - 3 * HOUR)
    assert row[12] == pytest.approx(3.0, abs=1e-12)


def test_recent_sequence_is_most_recent_first_with_gaps(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 1, 10, "view", AS_OF - 40 * HOUR, None),
            (1, 2, 20, "view", AS_OF - 30 * HOUR, None),
            (1, 3, 30, "cart", AS_OF - 20 * HOUR, None),
            (1, 4, 40, "buy", AS_OF - 1 * HOUR, None),
        ],
    )
    build(paths, as_of=AS_OF, config=FeatureConfig(recent_sequence_length=3), export=False)
    (row,) = query(
        paths,
        "select seq_item_ids, seq_category_ids, seq_behaviors, seq_gap_seconds, seq_len "
        "from user_recent_sequence",
    )
    assert row == ([4, 3, 2], [40, 30, 20], ["buy", "cart", "view"], [3600.0, 72000.0, 108000.0], 3)


def test_sessions_from_gaps_and_item_transitions(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 1, 10, "view", T0, None),
            (1, 2, 10, "view", T0 + timedelta(minutes=10), None),
            (1, 2, 10, "cart", T0 + timedelta(minutes=11), None),  # same item: no edge
            (1, 3, 10, "view", T0 + timedelta(minutes=46), None),  # 35 min gap: new session
            (1, 4, 10, "view", T0 + timedelta(minutes=76), None),  # exactly 30 min: same session
            (2, 1, 10, "view", T0, "s-a"),  # source sessions are kept despite the gap
            (2, 2, 10, "view", T0 + 5 * HOUR, "s-a"),
            (2, 5, 10, "view", T0 + 5 * HOUR, "s-b"),
        ],
    )
    build(paths, as_of=AS_OF, export=False)
    sessions = query(
        paths,
        "select user_id, item_id, behavior, session_key from live.int_sessionized_events "
        "order by user_id, user_event_number",
    )
    assert [s[3] for s in sessions] == [
        "gap:1",
        "gap:1",
        "gap:1",
        "gap:2",
        "gap:2",
        "source:s-a",
        "source:s-a",
        "source:s-b",
    ]
    edges = query(paths, "select * from edges_item_item order by src_item_id, dst_item_id")
    assert edges == [(1, 2, 2, 1.0), (3, 4, 1, 1.0)]


def test_edges_user_item_and_item_stats(tmp_path):
    paths = home(tmp_path)
    load_events(
        paths,
        [
            (1, 7, 10, "view", AS_OF - 336 * HOUR, None),
            (1, 7, 10, "view", AS_OF - 24 * HOUR, None),
            (2, 7, 11, "cart", AS_OF - 12 * HOUR, None),  # the item's latest category wins
        ],
    )
    build(paths, as_of=AS_OF, export=False)
    edges = query(paths, "select * from edges_user_item order by user_id")
    assert edges[0][:3] == (1, 7, "view") and edges[0][4:] == (2, AS_OF - 24 * HOUR)
    assert edges[0][3] == pytest.approx(0.5 + 2 ** (-24 / 336), abs=1e-12)
    ((item, category, pop_short, pop_long, n_users, cart_rate, buy_rate, trend),) = query(
        paths,
        "select item_id, category_id, pop_short, pop_long, n_users, cart_rate, buy_rate, trend "
        "from item_stats",
    )
    short = 2**-14 + 0.5 + 3 * 2**-0.5
    long = 0.5 + 2 ** (-24 / 336) + 3 * 2 ** (-12 / 336)
    assert (item, category, n_users, cart_rate, buy_rate) == (7, 11, 2, 0.5, 0.0)
    assert (pop_short, pop_long) == pytest.approx((short, long), abs=1e-12)
    assert trend == pytest.approx((short / 24) / (long / 336), abs=1e-12)


# --- as-of semantics and snapshots ---


def mart_frames(paths: Paths) -> dict[str, pl.DataFrame]:
    con = connect(paths, read_only=True)
    try:
        return {name: con.sql(f"select * from {name}").pl() for name in MARTS}
    finally:
        con.close()


def assert_same_rows(left: pl.DataFrame, right: pl.DataFrame) -> None:
    assert left.columns == right.columns
    key = [c for c in left.columns if left.schema[c] != pl.List]
    pl.testing.assert_frame_equal(left.sort(key), right.sort(key), check_exact=False, rel_tol=1e-9)


def test_events_at_or_after_as_of_never_count(tmp_path):
    events = small_simulation().events
    cut = events["event_time"].min() + timedelta(days=8)
    before, after = home(tmp_path, "before"), home(tmp_path, "after")
    load_events(before, events.filter(pl.col("event_time") < cut))
    load_events(after, events)  # includes an event exactly at the cut, if any, and later ones
    assert events.filter(pl.col("event_time") >= cut).height > 0
    build(before, as_of=cut, export=False)
    build(after, as_of=cut, export=False)
    for name, frame in mart_frames(before).items():
        assert_same_rows(frame, mart_frames(after)[name])


def test_migrations_as_of_are_the_prefix_of_the_full_history(tmp_path):
    paths = home(tmp_path)
    events = small_simulation().events
    load_events(paths, events)
    build(paths, export=False)
    full = mart_frames(paths)["interest_migrations"]
    cut = events["event_time"].min() + timedelta(days=7)
    build(paths, as_of=cut, export=False)
    partial = mart_frames(paths)["interest_migrations"]
    assert partial.height > 0
    assert_same_rows(partial, full.filter(pl.col("detected_at") < cut))


def test_snapshot_rows_equal_a_build_as_of_their_timestamp(tmp_path):
    paths = home(tmp_path)
    load_events(paths, small_simulation(days=6).events)
    report = build(paths)
    assert report.snapshots >= 6
    files = {name: pl.read_parquet(paths.features / name) for name in EXPORTS}
    stamps = files["user_interest_shift.parquet"]["event_timestamp"].unique().sort()
    assert stamps[-1] == report.as_of and stamps.len() == report.snapshots
    final_users = files["user_interest_shift.parquet"].filter(
        pl.col("event_timestamp") == report.as_of
    )
    assert final_users.height == query(paths, "select count(distinct user_id) from events")[0][0]
    # a middle snapshot must equal what a build as of that time computes
    middle = stamps[len(stamps) // 2]
    snapshot = {
        name: frame.filter(pl.col("event_timestamp") == middle) for name, frame in files.items()
    }
    build(paths, as_of=middle, snapshots=[])
    for name in EXPORTS:
        at_middle = pl.read_parquet(paths.features / name)
        key = EXPORTS[name][1]
        expected = at_middle.join(snapshot[name].select(key), on=key, how="semi")
        assert snapshot[name].height > 0
        assert_same_rows(snapshot[name], expected)


# --- data tests ---


@pytest.fixture(scope="module")
def simulated_warehouse(tmp_path_factory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("sim") / "home")
    load_events(paths, small_simulation().events)
    build(paths, export=False)
    return paths


@pytest.mark.parametrize("name", sorted(load_data_tests()))
def test_data_test_passes(simulated_warehouse, name):
    con = connect(simulated_warehouse, read_only=True)
    offending = con.execute(load_data_tests()[name]).fetchall()
    con.close()
    assert offending == []


def test_data_tests_catch_a_broken_mart(tmp_path):
    paths = home(tmp_path)
    load_events(paths, small_simulation(days=5).events)
    build(paths, export=False)
    con = connect(paths)
    con.execute("insert into user_interest_shift select * from user_interest_shift limit 1")
    con.execute("update user_category_interest set share_short = share_short * 1.01")
    failures = {name for name, n in run_data_tests(con).items() if n}
    con.close()
    assert failures == {"mart_grains_unique", "shares_sum_to_one", "values_in_range"}


# --- migrations ---


def test_migration_recovery_rule():
    planted = pl.DataFrame(
        {
            "user_id": [1, 2],
            "to_category_id": [10, 20],
            "migrated_at": [T0, T0],
        }
    )
    detected = pl.DataFrame(
        {
            "user_id": [1, 2, 3],
            "to_category_id": [10, 20, 30],
            # user 2's detection comes too late to count
            "detected_at": [T0 + HOUR, T0 + timedelta(days=2, seconds=1), T0],
        }
    )
    assert migration_recovery(detected, planted) == (1 / 3, 1 / 2)


def test_detected_migrations_recover_the_planted_ones(tmp_path):
    from recsys.warehouse.simulate import SimulationConfig, simulate

    sim = simulate(SimulationConfig(users=2000, items=5000, days=30, seed=11))
    paths = home(tmp_path)
    load_events(paths, sim.events)
    build(paths, export=False)
    detected = mart_frames(paths)["interest_migrations"]
    precision, recall = migration_recovery(detected, sim.migrations)
    print(
        f"migration recovery: {detected.height} detected, {sim.migrations.height} planted, "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    assert precision >= 0.8 and recall >= 0.8


# --- errors and real data ---


def test_build_without_events_says_to_ingest(tmp_path):
    paths = home(tmp_path)
    with pytest.raises(BuildError, match="run `recsys ingest"):
        build(paths)
    connect(paths).close()  # an empty warehouse
    with pytest.raises(BuildError, match="has no events"):
        build(paths)


def test_as_of_before_every_event_is_refused(tmp_path):
    paths = home(tmp_path)
    load_events(paths, [(1, 1, 1, "view", T0, None)])
    with pytest.raises(BuildError, match="no events before as_of"):
        build(paths, as_of=T0)


def test_missing_behavior_weight_is_refused(tmp_path):
    paths = home(tmp_path)
    load_events(paths, [(1, 1, 1, "view", T0, None)])
    config = replace(FeatureConfig(), behavior_weights={"view": 1.0})
    with pytest.raises(BuildError, match="no weight"):
        build(paths, config=config)


def test_models_come_after_what_they_read():
    seen: set[str] = set()
    for model in load_models():
        assert model.depends_on <= seen, model.name
        assert model.sql.lstrip().startswith("--")
        seen.add(model.name)
    assert {"user_category_interest", "interest_migrations", "edges_item_item"} <= set(MARTS)


@pytest.mark.skipif(not TAOBAO.exists(), reason=f"Taobao sample not found at {TAOBAO}")
def test_taobao_sample_builds_and_passes_data_tests(tmp_path):
    from recsys.warehouse.ingest import ingest_file

    paths = home(tmp_path)
    ingest_file(paths, TAOBAO, fmt="taobao")
    report = build(paths)
    assert report.mart_rows["user_interest_shift"] > 800
    assert (
        report.export_rows["user_interest_shift.parquet"] > report.mart_rows["user_interest_shift"]
    )
    con = connect(paths, read_only=True)
    failures = {name: n for name, n in run_data_tests(con).items() if n}
    con.close()
    assert failures == {}
