"""The online updater's per-user state in Redis, shared by every replica of a home's service.

The same state as ``recsys.online.state.UserState`` (same outcomes, same arithmetic, same rows),
kept in the Redis database that holds the home's online features, so that any number of
``recsys serve`` processes apply events to one state. Keys (``g`` = the seed's generation):

- ``recsys:state:gen``: the current generation; ``recsys:state:next``: the generation counter;
- ``recsys:state:{g}:meta`` (hash): ``as_of_us`` of the seeded build, ``home`` that seeded it;
- ``recsys:state:{g}:u:{user}`` (hash): ``c:{category}`` -> "short|long|ref_us|first_us|
  last_us|n_events", ``l:{behavior}`` -> latest time, ``f`` -> the ten funnel counts
  (``UserState.funnel_counts``' order), ``h`` -> the horizon (see ``UserState.horizon_us``);
- ``recsys:state:{g}:e:{user}`` (sorted set): the user's events, member
  "event_us:item:behavior:category", score event_us (the seeded sequence and every event since);
- ``recsys:state:{g}:i:{user}`` (hash): item -> "n_view|n_cart|n_fav|n_buy";
- ``recsys:state:{g}:applied`` (list): the events applied since the seed, for the next reseed;
- ``recsys:state:quarantine`` (list of JSON objects): bad input, with the reason;
- ``recsys:event:{event_id}``: a client's event id, once its event is applied (or stale), kept
  for ``event_id_ttl_s``.

Applying an event is one optimistic transaction (``WATCH`` / ``MULTI`` / ``EXEC``, redis-py's
``Redis.transaction``): the user's keys, the generation and the event id are watched, the
duplicate and horizon checks read them, and the state's writes, the log entry, the event id and
the user's fresh online-feature rows (``publish`` queues them) commit together or not at all;
a replica whose keys changed meanwhile retries on the new values. So an event is applied once
whichever replica, or how many, receive it, and the rows in the online store always describe a
state that was committed: a replica killed at any point leaves either all of it or none.

Reseeding writes the build's snapshot under a new generation, switches ``gen`` (which fails
every transaction still watching the old one, so it retries on the new), replays the previous
generation's log onto it and deletes the old keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from recsys.config import FeatureConfig
from recsys.features.online_settings import OnlineStoreSettings
from recsys.features.redis_claim import home_id
from recsys.home import Paths
from recsys.online.rows import US_PER_HOUR, Category, add_decayed
from recsys.online.state import (
    EVENT_FIELDS,
    STATE_FILE,
    Outcome,
    Publish,
    UserState,
    decayed,
    from_us,
    plain,
)

if TYPE_CHECKING:
    import redis

    from recsys.online.seed import Snapshot

PREFIX = "recsys:state"
GEN_KEY = f"{PREFIX}:gen"
NEXT_KEY = f"{PREFIX}:next"
QUARANTINE_KEY = f"{PREFIX}:quarantine"
EVENT_ID_PREFIX = "recsys:event"
# user_item's count columns (``UserState``), in order
COUNTED = ("view", "cart", "fav", "buy")
# writes per pipeline round trip while seeding
CHUNK = 2_000


def _member(event_us: int, item_id: int, behavior: str, category_id: int) -> str:
    return f"{event_us}:{item_id}:{behavior}:{category_id}"


def _event(member: bytes) -> tuple[int, int, str, int]:
    """(item_id, category_id, behavior, event_us) of a sorted-set member (``recent``'s row)."""
    event_us, item, behavior, category = member.decode().split(":")
    return int(item), int(category), behavior, int(event_us)


def _recent_order(row: tuple[int, int, str, int]) -> tuple[int, str, int, int]:
    """The marts' total order of recent events (event time, behavior, item, category)."""
    item, category, behavior, event_us = row
    return event_us, behavior, item, category


def funnel(counts: Iterable[tuple[int, int, int, int]]) -> list[int]:
    """The ten funnel counts of ``UserState.funnel_counts`` from per-item behaviour counts."""
    totals = [0] * 10
    for item_counts in counts:
        for i, n in enumerate(_funnel_terms(item_counts)):
            totals[i] += n
    return totals


def _funnel_terms(counts: tuple[int, int, int, int]) -> tuple[int, ...]:
    view, cart, fav, buy = counts
    return (
        view,
        cart,
        fav,
        buy,
        view > 0,
        cart > 0,
        view > 0 and cart > 0,
        view > 0 and fav > 0,
        view > 0 and buy > 0,
        cart > 0 and buy > 0,
    )


def _counts(raw: bytes | None) -> tuple[int, int, int, int]:
    if raw is None:
        return 0, 0, 0, 0
    view, cart, fav, buy = (int(n) for n in raw.split(b"|"))
    return view, cart, fav, buy


def _join(values: Iterable[Any]) -> str:
    # repr: a float written and parsed back is the same float
    return "|".join(repr(v) for v in values)


class UserView:
    """One user's state as read inside a transaction, with an event added in memory: what
    ``recsys.online.updater.user_rows`` reads (the same methods as ``UserState``).

    ``recent_rows`` holds the user's latest events (at least the recent sequence's length,
    when the user has that many, plus any tied with the last of them).
    """

    def __init__(
        self,
        fields: dict[bytes, bytes],
        recent_rows: list[tuple[int, int, str, int]],
        config: FeatureConfig,
    ) -> None:
        self.config = config
        self.categories_: dict[int, list[Any]] = {}
        self.last: dict[str, int] = {}
        self.funnel = [0] * 10
        self.horizon: int | None = None
        for name, value in fields.items():
            kind, _, key = name.decode().partition(":")
            if kind == "c":
                short, long, ref, first, last, n = value.decode().split("|")
                self.categories_[int(key)] = [
                    float(short),
                    float(long),
                    int(ref),
                    int(first),
                    int(last),
                    int(n),
                ]
            elif kind == "l":
                self.last[key] = int(value)
            elif kind == "f":
                self.funnel = [int(n) for n in value.split(b"|")]
            elif kind == "h":
                self.horizon = int(value)
        self.recent_rows = recent_rows

    def add(
        self,
        item_id: int,
        behavior: str,
        category_id: int,
        event_us: int,
        item_counts: bytes | None,
    ) -> tuple[dict[str, str | int], str]:
        """Add an event (not a duplicate, not stale) as ``UserState.record`` does; returns the
        user hash's changed fields and the item's new counts."""
        config = self.config
        weight = config.behavior_weights[behavior]
        row = self.categories_.get(category_id)
        if row is None:
            row = [weight, weight, event_us, event_us, event_us, 1]
        else:
            short, long, ref = add_decayed(
                (row[0], row[1], row[2]),
                weight,
                event_us,
                config.short_half_life_hours * US_PER_HOUR,
                config.long_half_life_hours * US_PER_HOUR,
            )
            row = [short, long, ref, min(row[3], event_us), max(row[4], event_us), row[5] + 1]
        self.categories_[category_id] = row
        before = _counts(item_counts)
        after = tuple(n + (b == behavior) for n, b in zip(before, COUNTED, strict=True))
        self.funnel = [
            total + new - old
            for total, new, old in zip(
                self.funnel, _funnel_terms(after), _funnel_terms(before), strict=True
            )
        ]
        self.last[behavior] = max(self.last.get(behavior, event_us), event_us)
        self.recent_rows.append((item_id, category_id, behavior, event_us))
        changed: dict[str, str | int] = {
            f"c:{category_id}": _join(row),
            f"l:{behavior}": self.last[behavior],
            "f": _join(self.funnel),
        }
        return changed, _join(after)

    def latest_us(self, user_id: int) -> int | None:
        return max((row[3] for row in self.recent_rows), default=None)

    def horizon_us(self, user_id: int) -> int | None:
        return self.horizon

    def categories(self, user_id: int, as_of_us: int) -> list[Category]:
        rows = [(c, r[0], r[1], r[2], r[3]) for c, r in self.categories_.items()]
        return decayed(rows, as_of_us, self.config)

    def funnel_counts(self, user_id: int) -> tuple[int, ...]:
        return tuple(self.funnel)

    def last_by_behavior(self, user_id: int) -> dict[str, int]:
        return dict(self.last)

    def recent(self, user_id: int, limit: int) -> list[tuple[int, int, str, int]]:
        return sorted(self.recent_rows, key=_recent_order, reverse=True)[:limit]


class RedisUserState:
    """The updater's per-user state in Redis (see the module docstring); the interface of
    ``recsys.online.state.UserState``.

    ``home`` names the home that owns the database (``recsys.features.redis_claim.home_id``):
    a reseed replays only the log its own home wrote. ``event_id_ttl_s``: how long an applied
    event id is remembered.
    """

    def __init__(
        self,
        client: redis.Redis,
        config: FeatureConfig,
        *,
        home: str,
        event_id_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.config = config
        self.home = home
        self.event_id_ttl_s = event_id_ttl_s

    def close(self) -> None:
        """Nothing to release: the client's connections are the caller's."""

    # --- keys ---

    def _generation(self, reader: Any) -> int:
        return int(reader.get(GEN_KEY) or 0)

    @staticmethod
    def _keys(generation: int, user_id: int) -> tuple[str, str, str]:
        base = f"{PREFIX}:{generation}"
        return f"{base}:u:{user_id}", f"{base}:e:{user_id}", f"{base}:i:{user_id}"

    # --- applying events ---

    def apply(
        self,
        user_id: int,
        item_id: int,
        behavior: str,
        category_id: int,
        event_us: int,
        publish: Publish | None,
        event_id: str | None = None,
        source: str = "",
    ) -> tuple[Outcome, Any]:
        """Apply one event in one transaction (see the module docstring); returns the outcome
        and, when APPLIED, what ``publish(view, user_id, pipeline)`` returned (it queues the
        user's rows on the transaction's pipeline). DUPLICATE: the same (user, item, behavior,
        time) or the same ``event_id`` was applied before, by any replica. ``source`` (where
        the event is stored, see ``recsys.serving.replicas``) is kept under the event id."""

        def attempt(pipe: Any) -> tuple[Outcome, Any]:
            generation = self._generation(pipe)
            user_key, events_key, items_key = self._keys(generation, user_id)
            id_key = None if event_id is None else f"{EVENT_ID_PREFIX}:{event_id}"
            pipe.watch(user_key, events_key, items_key, *([id_key] if id_key else []))
            if id_key is not None and pipe.exists(id_key):
                return Outcome.DUPLICATE, None
            same_time = pipe.zrangebyscore(events_key, event_us, event_us)
            if any(_event(m)[0] == item_id and _event(m)[2] == behavior for m in same_time):
                return Outcome.DUPLICATE, None
            fields = pipe.hgetall(user_key)
            horizon = fields.get(b"h")
            if horizon is not None and event_us <= int(horizon):
                if id_key is not None:  # a retry elsewhere is the same stale event
                    pipe.multi()
                    pipe.set(id_key, source, ex=self.event_id_ttl_s)
                return Outcome.STALE, None
            view = UserView(fields, self._recent(pipe, events_key), self.config)
            changed, counts = view.add(
                item_id, behavior, category_id, event_us, pipe.hget(items_key, item_id)
            )
            pipe.multi()
            pipe.hset(user_key, mapping=changed)
            pipe.zadd(events_key, {_member(event_us, item_id, behavior, category_id): event_us})
            pipe.hset(items_key, item_id, counts)
            pipe.rpush(
                f"{PREFIX}:{generation}:applied",
                json.dumps([user_id, item_id, behavior, category_id, event_us]),
            )
            if id_key is not None:
                pipe.set(id_key, source, ex=self.event_id_ttl_s)
            published = None if publish is None else publish(view, user_id, pipe)
            return Outcome.APPLIED, published

        return self.client.transaction(attempt, GEN_KEY, value_from_callable=True)

    def record(
        self, user_id: int, item_id: int, behavior: str, category_id: int, event_us: int
    ) -> Outcome:
        """Add one event to the state, pushing nothing (``apply`` without ``publish``)."""
        return self.apply(user_id, item_id, behavior, category_id, event_us, None)[0]

    def _recent(self, reader: Any, events_key: str) -> list[tuple[int, int, str, int]]:
        """The user's latest events: the sequence's length of them, plus any tied with the
        last (the sorted set orders ties by member, not by the marts' order)."""
        limit = self.config.recent_sequence_length
        latest = reader.zrevrange(events_key, 0, limit - 1, withscores=True)
        members = {m for m, _ in latest}
        if len(latest) == limit:
            lowest = latest[-1][1]
            members.update(reader.zrangebyscore(events_key, lowest, lowest))
        return [_event(m) for m in members]

    # --- reading one user ---

    def view(self, user_id: int) -> UserView:
        """The user's state as it is now."""
        generation = self._generation(self.client)
        user_key, events_key, _ = self._keys(generation, user_id)
        return UserView(
            self.client.hgetall(user_key), self._recent(self.client, events_key), self.config
        )

    def horizon_us(self, user_id: int) -> int | None:
        return self.view(user_id).horizon

    def latest_us(self, user_id: int) -> int | None:
        return self.view(user_id).latest_us(user_id)

    def categories(self, user_id: int, as_of_us: int) -> list[Category]:
        return self.view(user_id).categories(user_id, as_of_us)

    def funnel_counts(self, user_id: int) -> tuple[int, ...]:
        return self.view(user_id).funnel_counts(user_id)

    def last_by_behavior(self, user_id: int) -> dict[str, int]:
        return self.view(user_id).last_by_behavior(user_id)

    def recent(self, user_id: int, limit: int) -> list[tuple[int, int, str, int]]:
        return self.view(user_id).recent(user_id, limit)

    def applied_count(self, user_id: int) -> int:
        """How many of the user's events the current generation applied (checks)."""
        log = self.client.lrange(f"{PREFIX}:{self._generation(self.client)}:applied", 0, -1)
        return sum(json.loads(entry)[0] == user_id for entry in log)

    # --- seeding ---

    def seeded_as_of(self) -> datetime | None:
        """The as_of of the build the state was seeded from (None: never seeded)."""
        generation = self._generation(self.client)
        as_of = self.client.hget(f"{PREFIX}:{generation}:meta", "as_of_us")
        return None if as_of is None else from_us(int(as_of))

    def seed(self, snapshot: Snapshot, publish: Any = None) -> int:
        """Replace the state by a build's snapshot and replay onto it the events applied since
        the previous seed of this home; returns how many of them were applied again, and gives
        ``publish`` (as ``UserState.seed``'s) the users they belong to. Events applied before
        the first seed (generation 0, of no home) are not replayed."""
        client = self.client
        generation = int(client.incr(NEXT_KEY))
        self._write_snapshot(generation, snapshot)

        def switch(pipe: Any) -> int:
            previous = self._generation(pipe)
            pipe.multi()
            pipe.set(GEN_KEY, generation)
            return previous

        previous = client.transaction(switch, GEN_KEY, value_from_callable=True)
        base = f"{PREFIX}:{previous}"
        pending = []
        if client.hget(f"{base}:meta", "home") == self.home.encode():
            pending = [json.loads(entry) for entry in client.lrange(f"{base}:applied", 0, -1)]
        replayed = [event for event in pending if self.record(*event) is Outcome.APPLIED]
        if publish is not None and replayed:
            publish(sorted({event[0] for event in replayed}))
        self._delete(f"{base}:*")
        return len(replayed)

    def _write_snapshot(self, generation: int, snapshot: Snapshot) -> None:
        """The snapshot's rows under ``generation`` (not read before ``gen`` names it)."""
        users: dict[int, dict[str, Any]] = {}
        for user, category, short, long, ref, first, last, n in snapshot.categories:
            users.setdefault(user, {})[f"c:{category}"] = _join((short, long, ref, first, last, n))
        per_user_items: dict[int, list[tuple[int, int, int, int]]] = {}
        items: dict[int, dict[int, str]] = {}
        for user, item, *counts in snapshot.items:
            per_user_items.setdefault(user, []).append(tuple(counts))
            items.setdefault(user, {})[item] = _join(counts)
        for user, counts in per_user_items.items():
            users.setdefault(user, {})["f"] = _join(funnel(counts))
        for user, behavior, last_us in snapshot.last:
            users.setdefault(user, {})[f"l:{behavior}"] = last_us
        for user, horizon in snapshot.horizons:
            users.setdefault(user, {})["h"] = horizon
        events: dict[int, dict[str, int]] = {}
        for user, item, behavior, event_us, category in snapshot.events:
            events.setdefault(user, {})[_member(event_us, item, behavior, category)] = event_us
        writes: list[tuple[str, str, Any]] = []
        for user, fields in users.items():
            user_key, events_key, items_key = self._keys(generation, user)
            writes.append(("hset", user_key, fields))
            if user in events:
                writes.append(("zadd", events_key, events[user]))
            if user in items:
                writes.append(("hset", items_key, items[user]))
        writes.append(
            (
                "hset",
                f"{PREFIX}:{generation}:meta",
                {
                    "as_of_us": snapshot.as_of_us,
                    "home": self.home,
                    "seeded_at": datetime.now(UTC).isoformat(),
                },
            )
        )
        for start in range(0, len(writes), CHUNK):
            with self.client.pipeline(transaction=False) as pipe:
                for command, key, mapping in writes[start : start + CHUNK]:
                    if command == "hset":
                        pipe.hset(key, mapping=mapping)
                    else:
                        pipe.zadd(key, mapping)
                pipe.execute()

    def _delete(self, pattern: str) -> None:
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=CHUNK):
            batch.append(key)
            if len(batch) == CHUNK:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)

    # --- bad input and erasure ---

    def quarantine(self, event: Any, reason: str) -> None:
        """Keep whatever of ``EVENT_FIELDS`` the bad input has, with the reason."""
        fields = {name: plain(getattr(event, name, None)) for name in EVENT_FIELDS}
        fields |= {"reason": reason, "quarantined_at": datetime.now(UTC).isoformat()}
        self.client.rpush(QUARANTINE_KEY, json.dumps(fields, default=str))

    def quarantined(self) -> list[tuple[Any, ...]]:
        rows = [json.loads(raw) for raw in self.client.lrange(QUARANTINE_KEY, 0, -1)]
        return [
            tuple(row[name] for name in ("user_id", "item_id", "category_id", "behavior"))
            + (row["event_time"], row["reason"])
            for row in rows
        ]

    def forget(self, user_id: int) -> dict[str, int]:
        """Delete the user's keys, log entries and quarantined input; returns what went, per
        part."""
        client = self.client
        generation = self._generation(client)
        removed = {"user_state": int(client.delete(*self._keys(generation, user_id)))}
        for name, key in (
            ("applied_events", f"{PREFIX}:{generation}:applied"),
            ("quarantine", QUARANTINE_KEY),
        ):
            theirs = [
                raw
                for raw in client.lrange(key, 0, -1)
                if _user_of(json.loads(raw)) in (user_id, str(user_id))
            ]
            removed[name] = sum(int(client.lrem(key, 0, raw)) for raw in theirs)
        return removed


def _user_of(entry: Any) -> Any:
    """The user of a log entry (a list) or of a quarantined input (an object)."""
    return entry[0] if isinstance(entry, list) else entry.get("user_id")


def open_state(
    paths: Paths, config: FeatureConfig, online: OnlineStoreSettings | None = None
) -> UserState | RedisUserState:
    """The home's updater state: in the Redis database of a Redis online store, else the
    SQLite file ``<home>/feast/online_state.db``. ``online`` None: the store the home's
    ``feature_store.yaml`` names."""
    online = online or OnlineStoreSettings.of_home(paths)
    if online.kind == "sqlite":
        return UserState(paths.feast / STATE_FILE, config)
    import redis

    return RedisUserState(
        redis.Redis.from_url(online.redis_url, socket_connect_timeout=5),
        config,
        home=home_id(paths),
    )
