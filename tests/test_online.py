"""The online updater: equivalence with the SQL marts, pushes, and awkward events."""

from __future__ import annotations

import math
import os
import random
import sqlite3
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest
from feature_helpers import delete_redis_keys, online_snapshot, simulated_home

from recsys import features as F
from recsys.build import build
from recsys.config import FeatureConfig, resolve_home
from recsys.online import Event, OnlineUpdater, Outcome, UserState

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
    from recsys.online import to_us

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
    F.materialize(paths)
    store = F.feature_store(paths)
    updater = OnlineUpdater.for_store(paths, store, via_push_api=via_push_api)
    item = int(events.item_id.iloc[0])
    new_user = int(events.user_id.max()) + 1000
    with pytest.raises(F.UnknownUser):
        F.online_features(paths, new_user, store=store)
    when = events.event_time.max().to_pydatetime() + timedelta(minutes=5)
    result = updater.apply(Event(new_user, item, "cart", when))  # category from item_stats
    assert result.outcome is Outcome.APPLIED
    got = F.online_features(paths, new_user, store=store)
    assert got["user_interest_short__top_categories_short"] == [int(events.category_id.iloc[0])]
    assert got["user_behavior_funnel__n_cart"] == 1
    assert got["user_recent_sequence__seq_item_ids"] == [item]
    assert got["user_interest_shift__top_category_changed"] is False
    assert got["user_interest_long__top_scores_long"] == pytest.approx([3.0], abs=1e-6)
    updater.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_push_writer_writes_what_feast_push_writes(tmp_path, kind):
    """One event's rows, written by FeastPushWriter (one transaction) and, from an empty
    slate, by FeatureStore.push(..., ONLINE): the same stored records and online features."""
    from feast import ValueType
    from feast.data_source import PushMode

    from recsys.online_store import entity_keys

    settings = F.SQLITE
    if kind == "redis":
        if not os.environ.get("REDIS_URL"):
            pytest.skip("REDIS_URL is not set (start redis-server and export REDIS_URL)")
        settings = F.OnlineStoreSettings.redis(os.environ["REDIS_URL"])
    paths = resolve_home(tmp_path)
    events = simulated_home(paths, users=10, items=50, days=2)
    F.materialize(paths, online=settings)
    store = F.feature_store(paths, settings)
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
