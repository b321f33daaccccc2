"""The online updater: equivalence with the SQL marts, pushes, and awkward events."""

from __future__ import annotations

import math
import random
import shutil
import sqlite3
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest
from feature_helpers import delete_redis_keys, load_events, online_snapshot, simulated_home

from recsys.config import FeatureConfig
from recsys.features.errors import MaterializationError, UnknownUser
from recsys.features.materialize import materialize
from recsys.features.read import online_features
from recsys.features.repo import SQLITE, feature_store
from recsys.home import resolve_home
from recsys.online.seed import SeedError, seed_state
from recsys.online.state import Outcome, UserState
from recsys.online.updater import Event, OnlineUpdater, user_rows
from recsys.warehouse.build import build
from recsys.warehouse.connect import connect
from recsys.warehouse.simulate import SimulationConfig, simulate

CONFIG = FeatureConfig()


def _event(row) -> Event:
    return Event(
        user_id=int(row.user_id),
        item_id=int(row.item_id),
        behavior=row.behavior,
        event_time=row.event_time.to_pydatetime(),
        category_id=int(row.category_id),
    )


def _updater(tmp_path, catalogue=None) -> tuple[OnlineUpdater, list]:
    pushed: list[dict] = []
    updater = OnlineUpdater(
        UserState(tmp_path / "state.db", CONFIG),
        push=pushed.append,
        catalogue=catalogue or (lambda item_id: None),
        config=CONFIG,
    )
    return updater, pushed


def _assert_rows_equal(got: dict, want: pd.Series) -> None:
    for column, value in got.items():
        if column in ("user_id", "event_timestamp"):
            continue
        expected = want[column]
        if isinstance(value, list):
            expected = list(expected)
            if value and isinstance(value[0], float):
                assert value == pytest.approx(expected, abs=1e-6), column
            else:
                assert value == expected, column
        elif value is None:
            assert expected is None or math.isnan(expected), column
        elif isinstance(value, float):
            assert value == pytest.approx(expected, abs=1e-6), column
        else:
            assert value == expected, column


@pytest.fixture(scope="module")
def marts_home(tmp_path_factory: pytest.TempPathFactory):
    """A simulated home built as of a time inside the data (later events are excluded)."""
    paths = resolve_home(tmp_path_factory.mktemp("home"))
    events = simulated_home(paths, users=30, items=150, days=4)
    as_of = events.event_time.min() + (events.event_time.max() - events.event_time.min()) * 0.7
    build(paths, as_of=as_of.to_pydatetime(), snapshots=[])
    return paths, events[events.event_time < as_of], as_of.to_pydatetime()


def _export(paths, name: str) -> pd.DataFrame:
    return (
        duckdb.connect()
        .execute(f"select * from read_parquet('{paths.features / name}.parquet')")
        .fetchdf()
        .set_index("user_id")
    )


@pytest.mark.parametrize("order", ["in_order", "shuffled"])
def test_replay_matches_the_sql_marts(marts_home, tmp_path, order):
    """Replaying events (in order, or shuffled: out-of-order arithmetic) reproduces the marts."""
    paths, events, as_of = marts_home
    rows = list(events.itertuples())
    if order == "shuffled":
        random.Random(3).shuffle(rows)
    updater, _ = _updater(tmp_path)
    results = updater.apply_all(_event(row) for row in rows)
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    interest = (
        duckdb.connect(str(paths.warehouse), read_only=True)
        .execute("select * from user_category_interest")
        .fetchdf()
    )
    exports = {
        source: _export(paths, name)
        for source, name in [
            ("user_interest_push", "user_interest"),
            ("user_interest_shift_push", "user_interest_shift"),
            ("user_behavior_funnel_push", "user_behavior_funnel"),
            ("user_recent_sequence_push", "user_recent_sequence"),
        ]
    }
    users = sorted(events.user_id.unique())
    assert len(users) >= 10
    for user in users:
        state = {c.category_id: c for c in updater.state.categories(int(user), _us(as_of))}
        mart = interest[interest.user_id == user].set_index("category_id")
        assert set(state) == set(mart.index)
        for category, c in state.items():
            assert c.short == pytest.approx(mart.loc[category, "interest_short"], abs=1e-6)
            assert c.long == pytest.approx(mart.loc[category, "interest_long"], abs=1e-6)
        for source, row in updater.features_as_of(int(user), as_of).items():
            _assert_rows_equal(row, exports[source].loc[user])


def _us(moment: datetime) -> int:
    from recsys.online.state import to_us

    return to_us(moment)


def test_pushed_row_is_the_row_just_after_the_event(tmp_path):
    updater, pushed = _updater(tmp_path)
    t0 = datetime(2024, 1, 1, 12)
    updater.apply(Event(1, 100, "view", t0, category_id=7))
    result = updater.apply(Event(1, 101, "buy", t0 + timedelta(hours=24), category_id=8))
    interest = result.rows["user_interest_push"]
    assert interest["event_timestamp"] == t0 + timedelta(hours=24, microseconds=1)
    # buy (4) just now beats a view (1) decayed by one short half-life (24 h) to 0.5.
    assert interest["top_categories_short"] == [8, 7]
    assert interest["top_scores_short"] == pytest.approx([4.0, 0.5], abs=1e-6)
    assert interest["top_scores_long"] == pytest.approx([4.0, 2 ** (-1 / 14)], abs=1e-6)
    sequence = result.rows["user_recent_sequence_push"]
    assert sequence["seq_item_ids"] == [101, 100]
    assert sequence["seq_gap_seconds"] == pytest.approx([1e-6, 86400.000001])
    funnel = result.rows["user_behavior_funnel_push"]
    assert (funnel["n_view"], funnel["n_buy"], funnel["buy_rate"]) == (1, 1, 0.0)
    assert pushed[-1] is result.rows  # one push (one transaction) per event


def test_duplicates_are_dropped(tmp_path):
    updater, pushed = _updater(tmp_path)
    event = Event(1, 100, "view", datetime(2024, 1, 1), category_id=7)
    assert updater.apply(event).outcome is Outcome.APPLIED
    before = len(pushed)
    assert updater.apply(event).outcome is Outcome.DUPLICATE
    assert len(pushed) == before
    row = updater.features_as_of(1, datetime(2024, 1, 2))["user_behavior_funnel_push"]
    assert row["n_view"] == 1


def test_unknown_items_and_bad_events(tmp_path):
    updater, _ = _updater(tmp_path, catalogue={100: 7}.get)
    when = datetime(2024, 1, 1)
    known = updater.apply(Event(1, 100, "view", when))  # category from the catalogue
    assert known.rows["user_interest_push"]["top_categories_short"] == [7]
    new_item = updater.apply(Event(1, 555, "cart", when, category_id=9))
    assert new_item.outcome is Outcome.APPLIED
    cases = [
        (Event(1, 556, "view", when), "unknown item 556"),
        (Event(1, 100, "click", when), "unknown behavior"),
        (Event("x", 100, "view", when), "user_id must be an integer"),  # type: ignore[arg-type]
        (Event(1, 100, "view", "yesterday"), "event_time must be a datetime"),  # type: ignore[arg-type]
        ({"user_id": 1}, "not an Event"),
    ]
    reasons = []
    for event, reason in cases:
        result = updater.apply(event)
        assert result.outcome is Outcome.QUARANTINED
        assert reason in result.reason
        reasons.append(result.reason)
    assert [row[-1] for row in updater.state.quarantined()] == reasons


@pytest.mark.parametrize("via_push_api", [False, True])
def test_cold_start_and_push_through_feast(tmp_path, via_push_api):
    """A never-seen user's first event is served at once by get_online_features, through the
    push sources (FeastPushWriter, or FeatureStore.push with PushMode.ONLINE)."""
    paths = resolve_home(tmp_path)
    events = simulated_home(paths, users=10, items=50, days=2)
    materialize(paths)
    store = feature_store(paths)
    updater = OnlineUpdater.for_store(paths, store, via_push_api=via_push_api)
    item = int(events.item_id.iloc[0])
    new_user = int(events.user_id.max()) + 1000
    with pytest.raises(UnknownUser):
        online_features(paths, new_user, store=store)
    when = events.event_time.max().to_pydatetime() + timedelta(minutes=5)
    result = updater.apply(Event(new_user, item, "cart", when))  # category from item_stats
    assert result.outcome is Outcome.APPLIED
    got = online_features(paths, new_user, store=store)
    assert got["user_interest_short__top_categories_short"] == [int(events.category_id.iloc[0])]
    assert got["user_behavior_funnel__n_cart"] == 1
    assert got["user_recent_sequence__seq_item_ids"] == [item]
    assert got["user_interest_shift__top_category_changed"] is False
    assert got["user_interest_long__top_scores_long"] == pytest.approx([3.0], abs=1e-6)
    updater.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_push_writer_writes_what_feast_push_writes(tmp_path, kind, request):
    """One event's rows, written by FeastPushWriter (one transaction) and, from an empty
    slate, by FeatureStore.push(..., ONLINE): the same stored records and online features."""
    from feast import ValueType
    from feast.data_source import PushMode

    from recsys.features.online_store import entity_keys

    paths = resolve_home(tmp_path)
    settings = SQLITE if kind == "sqlite" else request.getfixturevalue("redis_store")(paths, 4)
    events = simulated_home(paths, users=10, items=50, days=2)
    materialize(paths, online=settings)
    store = feature_store(paths, settings)
    updater = OnlineUpdater.for_store(paths, store)
    user = int(events.user_id.max()) + 2000
    when = events.event_time.max().to_pydatetime() + timedelta(minutes=5)
    item = int(events.item_id.iloc[0])
    updater.apply(Event(user, item, "view", when))
    result = updater.apply(Event(user, item, "buy", when + timedelta(seconds=1)))
    updater.close()
    ids = {"user_id": [user]}
    written = online_snapshot(paths, settings, ids)
    assert written[1]["user_behavior_funnel"]["n_buy"] == [1]
    if kind == "redis":
        delete_redis_keys(paths, settings, ids)
    else:
        (key,) = entity_keys("user_id", ValueType.INT64, [user])
        con = sqlite3.connect(str(paths.feast / "online_store.db"))
        with con:
            for table in written[0]:
                con.execute(f'delete from "{table}" where entity_key = ?', (key,))
        con.close()
    assert online_snapshot(paths, settings, ids)[1]["user_behavior_funnel"]["n_buy"] == [None]
    for source, row in result.rows.items():
        store.push(source, pd.DataFrame([row]), to=PushMode.ONLINE)
    assert online_snapshot(paths, settings, ids) == written


# --- a home with history: the updater's state is seeded from the warehouse by materialize ---


@pytest.fixture(scope="module")
def history_home(tmp_path_factory: pytest.TempPathFactory):
    """Built and materialised; some users have more events than the recent sequence holds."""
    paths = resolve_home(tmp_path_factory.mktemp("history"))
    config = SimulationConfig(users=8, items=120, days=20, seed=7, categories=8)
    events = simulate(config).events.to_pandas()
    load_events(paths, events)
    build(paths)
    materialize(paths)
    return paths, events


def _copy_home(home, tmp_path):
    paths, events = home
    copy = resolve_home(tmp_path / "home")
    shutil.copytree(paths.home, copy.home)
    return copy, events


def _busiest_user(events: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    counts = events.groupby("user_id").size()
    user = int(counts.idxmax())
    assert counts.max() > CONFIG.recent_sequence_length  # the seeded sequence is a window
    return user, events[events.user_id == user].sort_values("event_time")


def _append_event(paths, event: Event) -> None:
    con = connect(paths)
    con.execute(
        "insert into events by name select ?::bigint as user_id, ?::bigint as item_id, "
        "?::bigint as category_id, ?::varchar as behavior, ?::timestamp as event_time, "
        "'test' as source_file, now() as ingested_at, "
        "hash(user_id, item_id, behavior, event_time) as event_key",
        [event.user_id, event.item_id, event.category_id, event.behavior, event.event_time],
    )
    con.close()


@pytest.mark.parametrize("when", ["after_the_build", "inside_the_seeded_window"])
def test_a_known_users_event_continues_their_history(history_home, tmp_path, when):
    """The regression: a user with history posts one event; the pushed rows equal the marts
    rebuilt as of just after it on the warehouse holding it (not the new event alone)."""
    paths, events = _copy_home(history_home, tmp_path)
    user, mine = _busiest_user(events)
    viewed = mine[mine.behavior == "view"].iloc[-1]
    if when == "after_the_build":
        moment = events.event_time.max().to_pydatetime() + timedelta(hours=2)
    else:  # older than the user's latest event, newer than the 50th latest
        moment = mine.event_time.iloc[-3].to_pydatetime() - timedelta(seconds=1)
    event = Event(user, int(viewed.item_id), "cart", moment, int(viewed.category_id))
    store = feature_store(paths)
    updater = OnlineUpdater.for_store(paths, store)
    result = updater.apply(event)
    assert result.outcome is Outcome.APPLIED
    online = online_features(paths, user, store=store)
    as_of = max(moment, mine.event_time.max().to_pydatetime()) + timedelta(microseconds=1)
    _append_event(paths, event)
    build(paths, as_of=as_of, snapshots=[])
    for source, row in result.rows.items():
        assert row["event_timestamp"] == as_of
        _assert_rows_equal(row, _export(paths, source.removesuffix("_push")).loc[user])
    interest = (
        duckdb.connect(str(paths.warehouse), read_only=True)
        .execute("select * from user_category_interest where user_id = ?", [user])
        .fetchdf()
        .set_index("category_id")
    )
    state = {c.category_id: c for c in updater.state.categories(user, _us(as_of))}
    assert set(state) == set(interest.index)
    for category, c in state.items():
        assert c.short == pytest.approx(interest.loc[category, "interest_short"], abs=1e-6)
        assert c.long == pytest.approx(interest.loc[category, "interest_long"], abs=1e-6)
    updater.close()
    assert online["user_behavior_funnel__n_view"] == (mine.behavior == "view").sum()
    assert online["user_behavior_funnel__n_cart"] == (mine.behavior == "cart").sum() + 1
    assert online["user_recent_sequence__seq_len"] == CONFIG.recent_sequence_length


def _state_tables(path) -> dict[str, list]:
    con = sqlite3.connect(str(path))
    tables = [name for (name,) in con.execute("select name from sqlite_master where type='table'")]
    dump = {t: con.execute(f"select * from {t} order by 1, 2").fetchall() for t in tables}
    con.close()
    return dump


def test_seeded_state_is_the_replayed_history(history_home, tmp_path):
    """Every user's seeded state gives the rows that replaying all their events gives."""
    paths, events = history_home
    seeded = UserState(paths.feast / "online_state.db", CONFIG)
    replayed, _ = _updater(tmp_path)
    assert {r.outcome for r in replayed.apply_all(_event(r) for r in events.itertuples())} == {
        Outcome.APPLIED
    }
    as_of = seeded.seeded_as_of()
    assert as_of == events.event_time.max().to_pydatetime() + timedelta(microseconds=1)
    for user in sorted(events.user_id.unique().tolist()):
        want = replayed.features_as_of(user, as_of)
        got = user_rows(seeded, user, _us(as_of), CONFIG)
        for source, row in got.items():
            _assert_rows_equal(row, pd.Series(want[source]))
        assert seeded.last_by_behavior(user) == replayed.state.last_by_behavior(user)
    seeded.close()


def test_seeding_is_idempotent_and_keeps_the_events_applied_since(history_home, tmp_path):
    """Reseeding from the same build replaces the state by the build's, then replays the
    event applied since (the build does not count it): the state is the one before the
    reseed, and seeding again changes nothing."""
    paths, events = _copy_home(history_home, tmp_path)
    state_path = paths.feast / "online_state.db"
    first = _state_tables(state_path)
    assert len(first["user_events"]) > 0 and len(first["seed"]) == 1
    updater = OnlineUpdater.for_store(paths, feature_store(paths))
    user, _ = _busiest_user(events)
    after = events.event_time.max().to_pydatetime() + timedelta(hours=1)
    assert updater.apply(Event(user, 1, "buy", after, 3)).outcome is Outcome.APPLIED
    assert updater.apply(Event(user, 1, "click", after)).outcome is Outcome.QUARANTINED
    changed = _state_tables(state_path)
    assert changed["user_item"] != first["user_item"]
    report = seed_state(paths)
    again = _state_tables(state_path)
    assert {t: again[t] for t in again if t != "seed"} == {
        t: changed[t] for t in changed if t != "seed"
    }
    assert report.users == events.user_id.nunique()
    assert report.rows["events"] == len(first["user_events"])
    assert report.replayed == 1
    assert seed_state(paths).replayed == 1
    assert {t: v for t, v in _state_tables(state_path).items() if t != "seed"} == {
        t: again[t] for t in again if t != "seed"
    }
    # The open updater reads the reseeded state, which holds the event already.
    assert updater.apply(Event(user, 1, "buy", after, 3)).outcome is Outcome.DUPLICATE
    updater.close()


def test_events_before_the_seeded_window_are_stale(history_home, tmp_path):
    """A known user's event at or before the oldest seeded event may be one the build already
    counts: reported stale, nothing pushed, nothing changed; duplicates of seeded events and
    late events inside the window are told apart exactly."""
    paths, events = _copy_home(history_home, tmp_path)
    user, mine = _busiest_user(events)
    window = mine.iloc[-CONFIG.recent_sequence_length :]
    oldest = window.iloc[0]
    pushed: list = []
    updater = OnlineUpdater(
        UserState(paths.feast / "online_state.db", CONFIG),
        push=pushed.append,
        catalogue=lambda item_id: None,
        config=CONFIG,
    )
    assert updater.state.horizon_us(user) == _us(oldest.event_time.to_pydatetime())
    before = _state_tables(paths.feast / "online_state.db")
    older = mine.iloc[0]  # counted by the build, outside the window: indistinguishable
    stale = [
        _event(older),
        Event(user, 10**6, "view", oldest.event_time.to_pydatetime(), 1),
        Event(user, 10**6, "view", older.event_time.to_pydatetime() - timedelta(days=1), 1),
    ]
    for event in stale:
        result = updater.apply(event)
        assert (result.outcome, result.rows) == (Outcome.STALE, None)
        assert "waits for the next build" in result.reason
    assert updater.apply(_event(window.iloc[5])).outcome is Outcome.DUPLICATE
    assert _state_tables(paths.feast / "online_state.db") == before and not pushed
    late = Event(user, 10**6, "view", oldest.event_time.to_pydatetime() + timedelta(seconds=1), 1)
    assert updater.apply(late).outcome is Outcome.APPLIED
    new_user = Event(10**7, 10**6, "view", older.event_time.to_pydatetime(), 1)
    assert updater.apply(new_user).outcome is Outcome.APPLIED  # no history: nothing to repeat
    updater.close()


def test_seeding_refuses_a_build_of_another_config_or_time(history_home, tmp_path):
    paths, events = _copy_home(history_home, tmp_path)
    with pytest.raises(SeedError, match="short half-life is 86400.0 but .* says 43200.0"):
        seed_state(paths, config=FeatureConfig(short_half_life_hours=12.0))
    with pytest.raises(SeedError, match="the exports as of"):
        seed_state(paths, expect_as_of=datetime(2020, 1, 1))
    build(paths, as_of=events.event_time.max().to_pydatetime(), export=False)
    with pytest.raises(MaterializationError, match="run `recsys build` again"):
        materialize(paths)
