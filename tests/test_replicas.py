"""Service replicas (issue 13, part 4): two ``recsys serve`` processes on one home share the
online features and the updater's state in Redis; an event posted to one shows in the other's
next answer, and a replica killed mid-stream loses no acknowledged event and applies none twice.

Each replica is a real uvicorn process (``recsys.serving.replicas.start_replica``) on a socket
this test binds and listens on before starting it, so requests queue in the kernel until the
replica accepts them: no polling for "started".
"""

from __future__ import annotations

import math
import random
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import duckdb
import httpx
import pytest
import redis

from recsys.config import FeatureConfig
from recsys.features.materialize import materialize
from recsys.features.read import OnlineReader
from recsys.features.repo import feature_store
from recsys.online.redis_state import RedisUserState
from recsys.online.seed import read_snapshot
from recsys.online.state import STATE_FILE, Outcome, UserState, to_us
from recsys.online.updater import user_rows
from recsys.serving.replicas import start_replica
from recsys.serving.settings import ServiceSettings

pytestmark = [pytest.mark.redis, pytest.mark.slow]
CONFIG = FeatureConfig()

# The replicas' Redis database: $REDIS_URL's number + this (other tests take 0, 4 and 5).
DB_OFFSET = 6
# A replica's first answer waits for its start (imports, catalogue, Feast registry).
TIMEOUT_S = 120.0


@dataclass
class Replica:
    """A replica process and the address its clients use."""

    replica: str
    process: subprocess.Popen
    url: str


@pytest.fixture
def shared(home, redis_store):
    """The home materialised into its own, emptied, Redis database: (paths, events, online)."""
    paths, events = home
    online = redis_store(paths, DB_OFFSET)
    redis.Redis.from_url(online.redis_url).flushdb()  # earlier runs' event ids and keys
    materialize(paths, online=online)
    return paths, events, online


@contextmanager
def replica(paths, online, name: str) -> Iterator[Replica]:
    """Replica ``name`` in a child process on a loopback socket bound here; stopped with
    SIGTERM (its inbox drained) unless the test killed it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        process = start_replica(paths.home, online.redis_url, name, sock, drain_interval_s=3600)
        try:
            yield Replica(name, process, f"http://127.0.0.1:{sock.getsockname()[1]}")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=TIMEOUT_S)


def recommended(client: httpx.Client, base: str, user: int) -> dict:
    response = client.get(f"{base}/v1/users/{user}/recommendations", params={"k": 10})
    assert response.status_code == 200, response.text
    return response.json()


def state_of(paths, online) -> RedisUserState:
    return RedisUserState(redis.Redis.from_url(online.redis_url), CONFIG, home="")


def close(got, want) -> bool:
    """Equal, floats to 1e-12 relative (sums over categories run in another order)."""
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return len(got) == len(want) and all(close(g, w) for g, w in zip(got, want, strict=True))
    return got == want


def test_the_redis_state_applies_events_as_the_sqlite_state_does(shared):
    """Both seeded from the same build, two users given a horizon (as users with more events
    than the recent sequence have), then the same stream: new, repeated, out-of-order and
    too-old events of the build's users and of a new one. Same outcomes, and after each applied
    event the same rows, the Redis one as committed with the event."""
    paths, events, online = shared
    sqlite_state = UserState(paths.feast / STATE_FILE, CONFIG)
    redis_state = state_of(paths, online)
    assert redis_state.seeded_as_of() == sqlite_state.seeded_as_of()
    end = to_us(events.event_time.max().to_pydatetime())
    users = [int(u) for u in events.user_id.unique()[:6]] + [10**9 + 1]
    snapshot = read_snapshot(paths, CONFIG)
    snapshot = replace(snapshot, horizons=[(u, end - 86_400_000_000) for u in users[:2]])
    for state in (sqlite_state, redis_state):
        assert state.seed(snapshot) == 0
    rng = random.Random(3)
    seeded = [(u, i, b, c, t) for u, i, b, t, c in snapshot.events]
    stream = []
    for n in range(300):
        if n % 10 == 9:  # an event of the seeded sequence: a duplicate
            stream.append(rng.choice(seeded))
            continue
        when = end + rng.randrange(-3 * 86_400, 3_600) * 1_000_000
        behavior = rng.choice(list(CONFIG.behavior_weights))
        category = int(rng.choice(events.category_id.tolist()))
        stream.append((rng.choice(users), rng.randrange(1, 500), behavior, category, when))
    stream += stream[:20]  # repeats

    def rows_of(state, user, pipe):
        return user_rows(state, user, state.latest_us(user) + 1, CONFIG)

    outcomes = []
    for event in stream:
        want = sqlite_state.apply(*event, rows_of)
        got = redis_state.apply(*event, rows_of)
        assert got[0] is want[0], event
        assert close(got[1], want[1]), event
        outcomes.append(want[0])
    assert set(outcomes) == {Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE}
    for user in users:
        assert close(
            user_rows(redis_state, user, end, CONFIG), user_rows(sqlite_state, user, end, CONFIG)
        )
    sqlite_state.close()


def test_an_event_posted_to_one_replica_changes_the_others_recommendations(shared):
    paths, events, online = shared
    user = int(events.user_id.iloc[0])
    seen = set(events.item_id[events.user_id == user].astype(int))
    item = int(next(i for i in events.item_id.astype(int) if i not in seen))
    when = events.event_time.max().to_pydatetime() + timedelta(minutes=1)
    with (
        replica(paths, online, "a") as a,
        replica(paths, online, "b") as b,
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        before = recommended(client, b.url, user)
        posted = client.post(
            f"{a.url}/v1/events",
            json={"user_id": user, "item_id": item, "behavior": "buy", "event_time": str(when)},
        )
        assert posted.status_code == 200, posted.text
        assert posted.json()["results"][0]["outcome"] == "applied"
        after = recommended(client, b.url, user)
    assert after["features_as_of"] > before["features_as_of"]
    assert after["items"] != before["items"]
    # the bought item went into the user's state, which both replicas read from Redis
    assert any(row[0] == item for row in state_of(paths, online).recent(user, 5))


def post_until_killed(
    client: httpx.Client, first: Replica, second: Replica, batches: list[list[dict]], kill_at: int
) -> list[str]:
    """Post ``batches`` to ``first``, SIGKILLing it once ``kill_at`` batches are acknowledged
    (while the next is on its way), then to ``second``, retrying there whatever ``first`` did
    not answer; returns the replica that acknowledged each batch."""
    acknowledged: list[str] = []
    sent = threading.Event()

    def kill() -> None:
        sent.wait(TIMEOUT_S)
        first.process.kill()

    killer = threading.Thread(target=kill)
    killer.start()
    target = first
    for index, batch in enumerate(batches):
        if index == kill_at:
            sent.set()
        while True:
            try:
                response = client.post(f"{target.url}/v1/events", json={"events": batch})
            except httpx.TransportError:
                target = second
                continue
            assert response.status_code == 200, response.text
            outcomes = {r["outcome"] for r in response.json()["results"]}
            assert outcomes <= {"applied", "duplicate"}, response.text
            acknowledged.append(target.replica)
            break
    killer.join()
    return acknowledged


def test_a_replica_killed_mid_stream_loses_no_event_and_applies_none_twice(shared):
    """Views of new items by a few users, each with an event id; half carry no event_time (the
    server's time: only the event id tells a retry). Replica a is SIGKILLed mid-stream, the
    client retries on b; afterwards each event is counted exactly once in the per-user state,
    the online features and, once b has stopped and a restarted (its inbox replayed and
    drained), in the warehouse."""
    paths, events, online = shared
    users = [int(u) for u in events.user_id.drop_duplicates().iloc[:4]]
    last = events.event_time.max().to_pydatetime()
    item_base = int(events.item_id.max()) + 1_000
    batches = [
        [
            {
                "user_id": users[(n + i) % len(users)],
                "item_id": item_base + n * 3 + i,
                "category_id": int(events.category_id.iloc[0]),
                "behavior": "view",
                "event_id": f"kill-test-{n}-{i}",
            }
            | ({"event_time": str(last + timedelta(seconds=n * 3 + i + 1))} if n % 2 else {})
            for i in range(3)
        ]
        for n in range(40)
    ]
    posted = [e for batch in batches for e in batch]
    per_user = {u: sum(e["user_id"] == u for e in posted) for u in users}
    store = feature_store(paths, online)
    reader = OnlineReader(store)
    state = state_of(paths, online)
    views_before = {u: reader.read(u).get("n_view", 0) for u in users}
    funnel_before = {u: state.funnel_counts(u)[0] for u in users}

    with (
        replica(paths, online, "a") as a,
        replica(paths, online, "b") as b,
        httpx.Client(timeout=TIMEOUT_S) as client,
    ):
        recommended(client, b.url, users[0])  # b is up before a goes down
        acknowledged = post_until_killed(client, a, b, batches, kill_at=15)
        assert a.process.wait(TIMEOUT_S) == -signal.SIGKILL
        # a may have answered the batch on its way when it was killed
        assert len(acknowledged) == len(batches)
        assert acknowledged.count("a") in (15, 16)
        # a client's retry elsewhere of batches a answered (the first has no event_time)
        for batch in batches[:2]:
            retried = client.post(f"{b.url}/v1/events", json={"events": batch}).json()
            assert {r["outcome"] for r in retried["results"]} == {"duplicate"}
        for u in users:  # the survivor has applied each event once
            assert state.funnel_counts(u)[0] - funnel_before[u] == per_user[u]
            assert state.applied_count(u) == per_user[u]
            assert reader.read(u).get("n_view") - views_before[u] == per_user[u]
    # b stopped cleanly (its inbox drained); a restarts on its own inbox, replays and drains it
    with replica(paths, online, "a") as a, httpx.Client(timeout=TIMEOUT_S) as client:
        recommended(client, a.url, users[0])
    for u in users:  # the replay applied nothing twice
        assert state.applied_count(u) == per_user[u]
        assert reader.read(u).get("n_view") - views_before[u] == per_user[u]
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        rows = con.execute(
            "select user_id, item_id from events where source_file = ? and item_id >= ?",
            ["service:/v1/events", item_base],
        ).fetchall()
    assert sorted(rows) == sorted((e["user_id"], e["item_id"]) for e in posted)
    inboxes = [ServiceSettings(paths=paths, online=online, replica=r).inbox for r in "ab"]
    assert all(path.exists() for path in inboxes)
