"""The online updater's durable per-user state: one SQLite file, ``<home>/feast/online_state.db``
(with a Redis online store the same state lives in Redis: ``recsys.online.redis_state``).

The updater does **not** write the warehouse: the caller appends the event to DuckDB
(``events``), which stays the durable record that the next ``recsys build`` reads. Times are
microseconds since the epoch (naive UTC). Tables:

- ``user_category``: per (user, category) decayed interest at both half-lives, anchored at
  ``ref_us`` (s <- s * 2^(-dt/h) + w, ``recsys.online.rows``), plus first/last event time;
  top-N arrays are recomputed exactly from all of a user's categories;
- ``user_events``: the user's latest events from the build (the recent sequence) plus every
  event accepted since (the natural key drops duplicates; the recent sequence comes from here);
- ``user_item``: per (user, item) behaviour counts, for the funnel's distinct-item rates;
- ``user_last``: per (user, behaviour) latest event time, for the funnel's recencies;
- ``user_horizon``: for users whose history is longer than the recent sequence, the time of the
  oldest event the state holds (see ``recsys.online.seed``);
- ``seed``: the as_of of the build the state was seeded from;
- ``applied_events``: the events applied since that seed. The build did not count them, so a
  reseed (``recsys features materialize``, possibly while the service runs) replays them onto
  the new build's state instead of dropping acknowledged events (see ``UserState.seed``);
- ``quarantine``: events that could not be used, with the reason.

Duplicates (same user, item, behavior, event_time) are dropped. The state can tell a duplicate
only among the events it holds, so an event at or before the user's horizon (older than the
seeded sequence) is ``stale``: not applied, because it may already be counted (the warehouse
keeps it when it is new, and the next build and materialisation count it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.config import FeatureConfig
from recsys.online.rows import US_PER_HOUR, Category, add_decayed, decay

if TYPE_CHECKING:
    from recsys.online.seed import Snapshot

STATE_FILE = "online_state.db"
# everything but the quarantine, a log of bad input
SEEDED_TABLES = (
    "user_category",
    "user_events",
    "user_item",
    "user_last",
    "user_horizon",
    "seed",
    "applied_events",
)
# the tables with a user_id column (``forget``)
USER_TABLES = (
    "user_category",
    "user_events",
    "user_item",
    "user_last",
    "user_horizon",
    "applied_events",
    "quarantine",
)
EPOCH = datetime(1970, 1, 1)
# ``publish(state, user_id, pipeline)``: push the user's rows after an applied event (into the
# Redis transaction ``pipeline`` that records it, or after the commit when None); see ``apply``.
Publish = Callable[[Any, int, Any], Any]
# the fields of an event, as the quarantine stores whatever of them bad input has
EVENT_FIELDS = ("user_id", "item_id", "behavior", "event_time", "category_id")

STATE_DDL = """
create table if not exists user_category (
    user_id integer not null, category_id integer not null,
    short real not null, long real not null, ref_us integer not null,
    first_us integer not null, last_us integer not null, n_events integer not null,
    primary key (user_id, category_id)
) without rowid;
create table if not exists user_events (
    user_id integer not null, item_id integer not null, behavior text not null,
    event_us integer not null, category_id integer not null,
    primary key (user_id, item_id, behavior, event_us)
) without rowid;
create index if not exists user_events_by_time on user_events (user_id, event_us);
create table if not exists user_item (
    user_id integer not null, item_id integer not null,
    n_view integer not null default 0, n_cart integer not null default 0,
    n_fav integer not null default 0, n_buy integer not null default 0,
    primary key (user_id, item_id)
) without rowid;
create table if not exists user_last (
    user_id integer not null, behavior text not null, last_us integer not null,
    primary key (user_id, behavior)
) without rowid;
create table if not exists user_horizon (
    user_id integer primary key, horizon_us integer not null
);
create table if not exists seed (
    as_of_us integer not null, seeded_at text not null
);
create table if not exists applied_events (
    user_id integer not null, item_id integer not null, behavior text not null,
    category_id integer not null, event_us integer not null,
    primary key (user_id, item_id, behavior, event_us)
) without rowid;
create table if not exists quarantine (
    user_id, item_id, category_id, behavior, event_time, reason text not null,
    quarantined_at text not null
);
"""


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of a naive-UTC (or aware) datetime, exactly."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


class Outcome(Enum):
    """What happened to one event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    QUARANTINED = "quarantined"


class UserState:
    """The updater's durable per-user state (see the module docstring)."""

    def __init__(self, path: Path, config: FeatureConfig) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.con.execute("pragma journal_mode = wal")
        self.con.execute("pragma synchronous = normal")
        # a reseed (``recsys features materialize``) holds the write lock for a few seconds
        self.con.execute("pragma busy_timeout = 30000")
        self.con.executescript(STATE_DDL)
        self.config = config
        self.short_h_us = config.short_half_life_hours * US_PER_HOUR
        self.long_h_us = config.long_half_life_hours * US_PER_HOUR

    def close(self) -> None:
        self.con.close()

    def record(
        self, user_id: int, item_id: int, behavior: str, category_id: int, event_us: int
    ) -> Outcome:
        """Add one event to the state: APPLIED (and logged in ``applied_events``), or
        DUPLICATE / STALE with nothing changed. Inside a transaction (a reseed) it nests."""
        weight = self.config.behavior_weights[behavior]
        con = self.con
        con.execute("savepoint record")
        try:
            inserted = con.execute(
                "insert or ignore into user_events values (?, ?, ?, ?, ?)",
                (user_id, item_id, behavior, event_us, category_id),
            ).rowcount
            horizon = self.horizon_us(user_id)
            if not inserted or (horizon is not None and event_us <= horizon):
                con.execute("rollback to record")
                con.execute("release record")
                return Outcome.STALE if inserted else Outcome.DUPLICATE
            row = con.execute(
                "select short, long, ref_us from user_category where user_id = ? and "
                "category_id = ?",
                (user_id, category_id),
            ).fetchone()
            if row is None:
                short, long, ref_us = weight, weight, event_us
            else:
                short, long, ref_us = add_decayed(
                    row, weight, event_us, self.short_h_us, self.long_h_us
                )
            con.execute(
                "insert into user_category values (?, ?, ?, ?, ?, ?, ?, 1) "
                "on conflict (user_id, category_id) do update set short = excluded.short, "
                "long = excluded.long, ref_us = excluded.ref_us, "
                "first_us = min(first_us, excluded.first_us), "
                "last_us = max(last_us, excluded.last_us), n_events = n_events + 1",
                (user_id, category_id, short, long, ref_us, event_us, event_us),
            )
            column = f"n_{behavior}"
            con.execute(
                f"insert into user_item (user_id, item_id, {column}) values (?, ?, 1) "
                f"on conflict (user_id, item_id) do update set {column} = {column} + 1",
                (user_id, item_id),
            )
            con.execute(
                "insert into user_last values (?, ?, ?) on conflict (user_id, behavior) "
                "do update set last_us = max(last_us, excluded.last_us)",
                (user_id, behavior, event_us),
            )
            con.execute(
                "insert into applied_events values (?, ?, ?, ?, ?)",
                (user_id, item_id, behavior, category_id, event_us),
            )
            con.execute("release record")
        except BaseException:
            con.execute("rollback to record")
            con.execute("release record")
            raise
        return Outcome.APPLIED

    def apply(
        self,
        user_id: int,
        item_id: int,
        behavior: str,
        category_id: int,
        event_us: int,
        publish: Publish,
        event_id: str | None = None,
        source: str = "",
    ) -> tuple[Outcome, Any]:
        """``record`` the event, then, when APPLIED, ``publish(self, user_id, None)`` (the
        user's rows pushed after the commit); returns the outcome and what ``publish``
        returned. ``event_id`` and ``source`` are not looked at: this state serves one
        process, whose inbox already drops an event id seen before (``RedisUserState`` checks
        them, for replicas)."""
        del event_id, source
        outcome = self.record(user_id, item_id, behavior, category_id, event_us)
        return outcome, publish(self, user_id, None) if outcome is Outcome.APPLIED else None

    def horizon_us(self, user_id: int) -> int | None:
        """The time of the oldest event the state holds of a user whose history is longer
        than that (None: the state holds all of the user's events)."""
        row = self.con.execute(
            "select horizon_us from user_horizon where user_id = ?", (user_id,)
        ).fetchone()
        return row[0] if row else None

    def seeded_as_of(self) -> datetime | None:
        """The as_of of the build the state was seeded from (None: never seeded)."""
        row = self.con.execute("select as_of_us from seed").fetchone()
        return from_us(row[0]) if row else None

    def seed(self, snapshot: Snapshot, publish: Callable[[list[int]], None] | None = None) -> int:
        """Replace the state (all but the quarantine) by a build's snapshot and replay onto it
        the events applied since the previous seed, in one transaction; returns how many of
        them were applied again.

        A replayed event that the build counts is in the seeded sequence or older than it, so
        it comes back DUPLICATE or STALE and is dropped; the others are applied again and stay
        logged. Replaying the whole log is therefore exact, whatever the build saw. ``publish``
        is given the users with events applied again while the transaction still holds the
        write lock, so that no event of theirs is applied before their rows are pushed.
        """
        con = self.con
        con.execute("begin immediate")
        try:
            pending = con.execute(
                "select user_id, item_id, behavior, category_id, event_us from applied_events"
            ).fetchall()
            for table in SEEDED_TABLES:
                con.execute(f"delete from {table}")
            con.executemany(
                "insert into user_category values (?, ?, ?, ?, ?, ?, ?, ?)", snapshot.categories
            )
            con.executemany("insert into user_events values (?, ?, ?, ?, ?)", snapshot.events)
            con.executemany("insert into user_item values (?, ?, ?, ?, ?, ?)", snapshot.items)
            con.executemany("insert into user_last values (?, ?, ?)", snapshot.last)
            con.executemany("insert into user_horizon values (?, ?)", snapshot.horizons)
            con.execute(
                "insert into seed values (?, ?)",
                (snapshot.as_of_us, datetime.now(UTC).isoformat()),
            )
            replayed = [event for event in pending if self.record(*event) is Outcome.APPLIED]
            if publish is not None and replayed:
                publish(sorted({event[0] for event in replayed}))
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return len(replayed)

    def latest_us(self, user_id: int) -> int | None:
        (latest,) = self.con.execute(
            "select max(event_us) from user_events where user_id = ?", (user_id,)
        ).fetchone()
        return latest

    def categories(self, user_id: int, as_of_us: int) -> list[Category]:
        """The user's categories with interest decayed to ``as_of_us`` (events before it)."""
        rows = self.con.execute(
            "select category_id, short, long, ref_us, first_us from user_category "
            "where user_id = ?",
            (user_id,),
        ).fetchall()
        return decayed(rows, as_of_us, self.config)

    def funnel_counts(self, user_id: int) -> tuple[int, ...]:
        """Event counts and distinct-item counts behind the funnel rates."""
        return self.con.execute(
            "select coalesce(sum(n_view), 0), coalesce(sum(n_cart), 0), "
            "coalesce(sum(n_fav), 0), coalesce(sum(n_buy), 0), "
            "count(*) filter (where n_view > 0), count(*) filter (where n_cart > 0), "
            "count(*) filter (where n_view > 0 and n_cart > 0), "
            "count(*) filter (where n_view > 0 and n_fav > 0), "
            "count(*) filter (where n_view > 0 and n_buy > 0), "
            "count(*) filter (where n_cart > 0 and n_buy > 0) "
            "from user_item where user_id = ?",
            (user_id,),
        ).fetchone()

    def last_by_behavior(self, user_id: int) -> dict[str, int]:
        return dict(
            self.con.execute(
                "select behavior, last_us from user_last where user_id = ?", (user_id,)
            ).fetchall()
        )

    def recent(self, user_id: int, limit: int) -> list[tuple[int, int, str, int]]:
        """The most recent events, most recent first, in the marts' total order."""
        return self.con.execute(
            "select item_id, category_id, behavior, event_us from user_events "
            "where user_id = ? order by event_us desc, behavior desc, item_id desc, "
            "category_id desc limit ?",
            (user_id, limit),
        ).fetchall()

    def quarantine(self, event: Any, reason: str) -> None:
        """Keep whatever of ``EVENT_FIELDS`` the bad input has, with the reason."""
        fields = [getattr(event, name, None) for name in EVENT_FIELDS]
        user_id, item_id, behavior, event_time, category_id = fields
        self.con.execute(
            "insert into quarantine values (?, ?, ?, ?, ?, ?, ?)",
            (
                plain(user_id),
                plain(item_id),
                plain(category_id),
                plain(behavior),
                plain(event_time),
                reason,
                datetime.now(UTC).isoformat(),
            ),
        )

    def forget(self, user_id: int) -> dict[str, int]:
        """Delete the user's rows from every table, the quarantine included; returns the rows
        deleted per table."""
        con = self.con
        (secure,) = con.execute("pragma secure_delete").fetchone()
        # zeroed, not left in free pages; then checkpointed, so the WAL keeps no old page either
        con.execute("pragma secure_delete = on")
        con.execute("begin immediate")
        try:
            # the quarantine keeps bad input as given: an id may be stored as text
            removed = {
                table: con.execute(
                    f"delete from {table} where user_id in (?, ?)", (user_id, str(user_id))
                ).rowcount
                for table in USER_TABLES
            }
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        finally:
            con.execute("pragma secure_delete = on" if secure else "pragma secure_delete = off")
        con.execute("pragma wal_checkpoint(truncate)")
        return removed

    def quarantined(self) -> list[tuple[Any, ...]]:
        return self.con.execute(
            "select user_id, item_id, category_id, behavior, event_time, reason from quarantine"
        ).fetchall()


def decayed(
    rows: Iterable[tuple[int, float, float, int, int]], as_of_us: int, config: FeatureConfig
) -> list[Category]:
    """Categories from (category_id, short, long, ref_us, first_us) rows, their interest
    decayed to ``as_of_us``."""
    short_h = config.short_half_life_hours * US_PER_HOUR
    long_h = config.long_half_life_hours * US_PER_HOUR
    return [
        Category(
            category_id=c,
            short=decay(short, as_of_us - ref, short_h),
            long=decay(long, as_of_us - ref, long_h),
            first_us=first,
        )
        for c, short, long, ref, first in rows
    ]


def plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)
