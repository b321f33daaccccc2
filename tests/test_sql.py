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
from recsys.warehouse.build import EXPORTS, BuildError, build, data_test_failures, marts
from recsys.warehouse.connect import connect
from recsys.warehouse.dbt import PROJECT_DIR

T0 = datetime(2026, 3, 1, 12, 0, 0)
AS_OF = datetime(2026, 3, 10, 0, 0, 0)
HOUR = timedelta(hours=1)
TAOBAO = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_user_behavior_sample.csv"
MARTS = marts()
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


def test_data_tests_pass_on_the_published_marts(simulated_warehouse):
    failures = data_test_failures(simulated_warehouse)
    assert set(failures) == {path.stem for path in (PROJECT_DIR / "tests").glob("*.sql")}
    assert {name: n for name, n in failures.items() if n} == {}


def test_data_tests_catch_a_broken_mart(tmp_path):
    paths = home(tmp_path)
    load_events(paths, small_simulation(days=5).events)
    build(paths, export=False)
    con = connect(paths)
    con.execute("insert into user_interest_shift select * from user_interest_shift limit 1")
    con.execute("update user_category_interest set share_short = share_short * 1.01")
    con.close()
    failures = {name for name, n in data_test_failures(paths).items() if n}
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


def test_every_model_states_its_grain_first():
    models = sorted((PROJECT_DIR / "models").rglob("*.sql"))
    assert len(models) > 20
    for path in models:
        assert path.read_text().startswith("-- "), path
    assert {"user_category_interest", "interest_migrations", "edges_item_item"} <= set(MARTS)


def test_a_failing_data_test_blocks_publishing(tmp_path):
    paths = home(tmp_path)
    load_events(paths, small_simulation(days=5).events)
    build(paths)
    before = mart_frames(paths)
    (as_of,) = query(paths, "select as_of from recsys_params")[0]
    manifest = (paths.features / "manifest.json").read_text()
    # a behaviour without a weight: ingest would quarantine it, so write it as a bug would
    load_events(paths, [(1, 1, 1, "share", T0, None)])
    with pytest.raises(BuildError, match="test behaviors_have_weights: 1 offending row"):
        build(paths)
    assert query(paths, "select as_of from recsys_params")[0][0] == as_of
    assert (paths.features / "manifest.json").read_text() == manifest
    after = mart_frames(paths)
    for name in MARTS:
        polars.testing.assert_frame_equal(after[name], before[name])
    assert query(paths, "select count(*) from duckdb_tables() where table_name like '%__next'") == [
        (0,)
    ]


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
    assert {name: n for name, n in data_test_failures(paths).items() if n} == {}


# --- category transitions ---

MINUTE = timedelta(minutes=1)
CATEGORY_TRANSITION_COLUMNS = (
    "select src_category_id, dst_category_id, n_session, w_session, n_migration, w_migration, "
    "weight, p, rank from category_transitions order by src_category_id, rank"
)


def category_transition_events() -> list[tuple]:
    """Two users' sessions (one session-less, one with interleaved source sessions), a user whose
    history migrates from category 80 to 90, and one who moves 80 -> 90 inside a session."""
    migrating = [(3, 300 + h, 80, "view", T0 + timedelta(days=1, hours=h), None) for h in range(20)]
    migrating += [
        (3, 400 + h, 90, "view", T0 + timedelta(days=1, hours=h), None) for h in range(20, 25)
    ]
    return [
        # user 1: gap sessions
        (1, 1, 10, "view", T0, None),
        (1, 2, 20, "cart", T0 + 10 * MINUTE, None),  # 10 -> 20, weight 3
        (1, 3, 20, "view", T0 + 15 * MINUTE, None),  # same category: no change
        (1, 4, 10, "buy", T0 + 20 * MINUTE, None),  # 20 -> 10, weight 4
        (1, 5, 30, "view", T0 + 2 * HOUR, None),  # 100 min gap: a new session, no change
        (1, 6, 10, "fav", T0 + 2 * HOUR + 5 * MINUTE, None),  # 30 -> 10, weight 2
        (1, 7, 30, "view", AS_OF - 5 * MINUTE, None),  # a new session
        (1, 8, 70, "view", AS_OF - timedelta(microseconds=1), None),  # 30 -> 70, weight 1
        # user 2: source sessions s1 and s2 and session-less events, interleaved
        (2, 11, 10, "view", T0, "s1"),
        (2, 12, 30, "view", T0 + 1 * MINUTE, "s2"),
        (2, 13, 20, "view", T0 + 2 * MINUTE, "s1"),  # s1: 10 -> 20, weight 1
        (2, 14, 40, "view", T0 + 3 * MINUTE, None),
        (2, 15, 10, "cart", T0 + 4 * MINUTE, "s2"),  # s2: 30 -> 10, weight 3
        (2, 16, 10, "view", T0 + 5 * MINUTE, None),  # session-less: 40 -> 10, weight 1
        (2, 17, 20, "view", T0 + 6 * MINUTE, None),  # session-less: 10 -> 20, weight 1
        # user 4: 80 -> 90 within a session, weight 1
        (4, 80, 80, "view", T0, None),
        (4, 90, 90, "view", T0 + MINUTE, None),
        *migrating,
    ]


def test_category_transitions_match_hand_computation(tmp_path):
    paths = home(tmp_path)
    load_events(paths, category_transition_events())
    build(paths, as_of=AS_OF, export=False)
    # user 3: 20 hourly events in 80 (separate sessions), then hourly ones in 90; the fifth event
    # in 90 (hour 24) is the detection, and its strength is 90's short-horizon share after it
    short = [2 ** (h / 24) for h in range(25)]
    strength = sum(short[20:]) / sum(short)
    assert query(
        paths, "select from_category_id, to_category_id, strength from interest_migrations"
    )[0] == (80, 90, pytest.approx(strength, abs=1e-9))
    w_80_90 = 1 + 5.0 * strength
    expected = [
        # src, dst, n_session, w_session, n_migration, w_migration, weight, p, rank
        (10, 20, 3, 5.0, 0, 0.0, 5.0, 1.0, 1),
        (20, 10, 1, 4.0, 0, 0.0, 4.0, 1.0, 1),
        (30, 10, 2, 5.0, 0, 0.0, 5.0, 5 / 6, 1),
        (30, 70, 1, 1.0, 0, 0.0, 1.0, 1 / 6, 2),
        (40, 10, 1, 1.0, 0, 0.0, 1.0, 1.0, 1),
        (80, 90, 1, 1.0, 1, strength, w_80_90, 1.0, 1),
    ]
    got = query(paths, CATEGORY_TRANSITION_COLUMNS)
    assert [row[:3] + row[4:5] + row[8:] for row in got] == [
        row[:3] + row[4:5] + row[8:] for row in expected
    ]
    for got_row, want in zip(got, expected, strict=True):
        assert got_row[3] == pytest.approx(want[3], abs=1e-12)
        assert got_row[5:8] == pytest.approx(want[5:8], abs=1e-9)


def test_category_transitions_ignore_events_at_or_after_as_of(tmp_path):
    paths = home(tmp_path)
    events = category_transition_events()
    load_events(paths, events)
    build(paths, as_of=AS_OF, export=False)
    before = query(paths, CATEGORY_TRANSITION_COLUMNS)
    later = [
        (1, 9, 50, "buy", AS_OF, None),  # 1 us after user 1's 70: would be 70 -> 50
        (2, 18, 60, "view", AS_OF, "s1"),  # would be s1's 20 -> 60
        (2, 19, 10, "view", AS_OF + MINUTE, None),  # would be 20 -> 10
    ]
    load_events(paths, later)
    build(paths, as_of=AS_OF, export=False)
    assert query(paths, CATEGORY_TRANSITION_COLUMNS) == before
    # the same events do count once as_of is past them, so the check above can fail
    build(paths, export=False)
    pairs = {row[:2]: row[2] for row in query(paths, CATEGORY_TRANSITION_COLUMNS)}
    assert (pairs[(70, 50)], pairs[(20, 60)], pairs[(20, 10)]) == (1, 1, 1)


def test_category_transitions_equal_a_lag_over_sessions(tmp_path):
    """The mart finds each event's session predecessor without a sort; a lag over the sessions of
    int_sessionized_events must agree, with sessions interleaved by dropping some session ids."""
    events = small_simulation(days=5).events
    dropped = (pl.col("item_id") % 3 == 0) | (pl.col("user_id") % 4 == 0)
    events = events.with_columns(
        pl.when(dropped).then(None).otherwise(pl.col("session_id")).alias("session_id")
    )
    paths = home(tmp_path)
    load_events(paths, events)
    build(paths, export=False)
    reference = query(
        paths,
        """
        with steps as (
            select
                lag(category_id) over (
                    partition by user_id, session_key order by user_event_number
                ) as src,
                category_id as dst,
                weight
            from live.int_sessionized_events
            inner join live.stg_behavior_weights using (behavior)
            qualify src is not null and src <> dst
        )
        select src, dst, count(*), sum(weight) from steps group by all order by all
        """,
    )
    got = query(
        paths,
        "select src_category_id, dst_category_id, n_session, w_session from category_transitions "
        "where n_session > 0 order by all",
    )
    interleaved = query(
        paths,
        """
        select count(*) from live.int_ordered_events as e
        inner join live.int_ordered_events as p
            on p.user_id = e.user_id and p.user_event_number = e.user_event_number - 1
        where e.previous_item_in_session is not null
            and p.session_id is distinct from e.session_id
        """,
    )[0][0]
    assert interleaved > 100 and len(reference) > 50
    assert got == reference


def test_category_transition_data_tests_catch_a_broken_mart(tmp_path):
    paths = home(tmp_path)
    load_events(paths, category_transition_events())
    build(paths, as_of=AS_OF, export=False)
    con = connect(paths)
    con.execute("insert into category_transitions select * from category_transitions limit 1")
    con.execute("update category_transitions set p = p * 1.01 where src_category_id = 30")
    con.execute("update category_transitions set n_session = -1 where src_category_id = 40")
    con.close()
    failures = {name for name, n in data_test_failures(paths).items() if n}
    assert failures >= {
        "category_transitions_counts",
        "category_transitions_grain_unique",
        "category_transitions_normalised",
    }
