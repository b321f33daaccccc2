"""Issue 11, finding 4: `recsys features materialize` while the service runs keeps the events
the updater acknowledged after the build's snapshot, in the online features and in the state
that later events continue."""

from __future__ import annotations

import shutil
from datetime import timedelta

import duckdb
import pytest
from feature_helpers import simulated_home

from recsys.features.materialize import materialize
from recsys.features.read import online_features
from recsys.features.repo import feature_store
from recsys.home import resolve_home
from recsys.online.state import Outcome
from recsys.online.updater import Event, OnlineUpdater
from recsys.warehouse.build import build
from recsys.warehouse.connect import EVENT_KEY, connect

NEW_CATEGORY = 999_999


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory):
    """Built and materialised: what the service starts from."""
    paths = resolve_home(tmp_path_factory.mktemp("served"))
    events = simulated_home(paths, users=12, items=60, days=3)
    materialize(paths)
    return paths, events


@pytest.fixture
def home(served_home, tmp_path):
    paths, events = served_home
    copy = resolve_home(tmp_path / "home")
    shutil.copytree(paths.home, copy.home, symlinks=True)
    return copy, events


def _post_three_buys(paths, events) -> tuple[OnlineUpdater, int, list[Event]]:
    """Three buys in a new category, after the build's snapshot, through the updater: they
    move the user's top short-horizon category."""
    user = int(events.groupby("user_id").size().idxmin())  # a light history: 3 buys lead
    item = int(events.item_id.iloc[0])
    after = events.event_time.max().to_pydatetime() + timedelta(hours=1)
    posted = [
        Event(user, item, "buy", after + timedelta(minutes=i), NEW_CATEGORY) for i in range(3)
    ]
    updater = OnlineUpdater.for_store(paths, feature_store(paths))
    before = online_features(paths, user)["user_interest_short__top_categories_short"]
    assert before[0] != NEW_CATEGORY
    assert {updater.apply(e).outcome for e in posted} == {Outcome.APPLIED}
    assert _top_short(paths, user) == NEW_CATEGORY
    return updater, user, posted


def _top_short(paths, user: int) -> int:
    return online_features(paths, user)["user_interest_short__top_categories_short"][0]


def _buys(paths, user: int) -> int:
    return online_features(paths, user)["user_behavior_funnel__n_buy"]


def test_acknowledged_events_survive_materialize_and_later_events(home):
    paths, events = home
    updater, user, posted = _post_three_buys(paths, events)
    buys = _buys(paths, user)
    report = materialize(paths)  # the service (its updater) stays up meanwhile
    assert _top_short(paths, user) == NEW_CATEGORY
    assert _buys(paths, user) == buys
    assert report.seed.replayed == 3
    # A later event continues the state that kept the three buys.
    later = Event(user, posted[0].item_id, "view", posted[-1].event_time + timedelta(minutes=1), 1)
    assert updater.apply(later).outcome is Outcome.APPLIED
    assert _top_short(paths, user) == NEW_CATEGORY
    assert _buys(paths, user) == buys
    updater.close()
    assert materialize(paths).seed.replayed == 4  # still not counted by any build


def test_events_a_new_build_counts_are_not_counted_twice(home):
    """The service drained the events into the warehouse and a build counted them: the replay
    drops them, and the online rows are the build's."""
    paths, events = home
    updater, user, posted = _post_three_buys(paths, events)
    buys = _buys(paths, user)
    updater.close()
    con = connect(paths)
    con.executemany(
        "insert into events by name select ?::bigint as user_id, ?::bigint as item_id, "
        "?::bigint as category_id, ?::varchar as behavior, ?::timestamp as event_time, "
        f"'test' as source_file, now() as ingested_at, {EVENT_KEY} as event_key",
        [[e.user_id, e.item_id, e.category_id, e.behavior, e.event_time] for e in posted],
    )
    con.close()
    build(paths)
    report = materialize(paths)
    assert _top_short(paths, user) == NEW_CATEGORY
    assert _buys(paths, user) == buys
    assert report.seed.replayed == 0
    marts = duckdb.connect(str(paths.warehouse), read_only=True)
    (n_buy,) = marts.execute(
        "select n_buy from user_behavior_funnel where user_id = ?", [user]
    ).fetchone()
    marts.close()
    assert n_buy == buys


def test_a_failed_reseed_changes_nothing(home, monkeypatch):
    """A push that fails while the replayed rows go out rolls the reseed back: the state
    still holds the acknowledged events, and the next materialisation publishes them."""
    from recsys.online import updater as updater_module

    paths, events = home
    updater, user, _ = _post_three_buys(paths, events)
    updater.close()

    def broken(self, rows):
        raise OSError("online store unavailable")

    monkeypatch.setattr(updater_module.FeastPushWriter, "__call__", broken)
    with pytest.raises(OSError, match="unavailable"):
        materialize(paths)
    monkeypatch.undo()
    assert materialize(paths).seed.replayed == 3
    assert _top_short(paths, user) == NEW_CATEGORY
