"""Real-time feature updates: one behaviour event in, the user's fresh online features out.

``OnlineUpdater.apply(event)`` updates the user's state and pushes the user's rows of
``user_interest_short``/``_long``, ``user_interest_shift``, ``user_behavior_funnel`` and
``user_recent_sequence`` to the online store through their Feast ``PushSource``\\s with
``PushMode.ONLINE`` (an offline push would rewrite the whole Parquet export on every event).

The updater does **not** write the warehouse: the caller appends the event to DuckDB
(``events``), which stays the durable record that the next ``recsys build`` reads. The updater
keeps its own small durable state in ``<home>/feast/online_state.db`` (SQLite):

- ``user_category``: per (user, category) decayed interest at both half-lives, anchored at
  ``ref_us`` (s <- s * 2^(-dt/h) + w), plus first/last event time; top-N arrays are recomputed
  exactly from all of a user's categories;
- ``user_events``: the user's latest events from the build (the recent sequence) plus every
  event accepted since (the natural key drops duplicates; the recent sequence comes from here);
- ``user_item``: per (user, item) behaviour counts, for the funnel's distinct-item rates;
- ``user_last``: per (user, behaviour) latest event time, for the funnel's recencies;
- ``user_horizon``: for users whose history is longer than the recent sequence, the time of the
  oldest event the state holds (see "Seeding");
- ``seed``: the as_of of the build the state was seeded from;
- ``quarantine``: events that could not be used, with the reason.

Seeding: ``seed_state(paths)`` replaces the whole state (all but ``quarantine``) in one
transaction with the warehouse's marts as of the build's as_of (``recsys_params.as_of``):
``user_category_interest`` (sums at as_of, first/last time, counts), ``edges_user_item``
(behaviour counts per item, latest time per behaviour) and ``user_recent_sequence`` (the
latest events; time = as_of - gap, exact in microseconds). ``recsys.features.store.materialize``
calls it after loading the online store, so both describe the same build, and events applied
later continue each user's history exactly. Nothing else in the state depends on older events:
a decayed sum, a count, a min or a max absorbs any further event, and every event outside the
seeded sequence ranks below all of it, so the latest N of (sequence + new events) is exact.

Definitions match the SQL marts (sql/marts/*.sql) exactly: a row "as of A" uses events strictly
before A. The row pushed after an event at time t is the row as of t + 1 microsecond, i.e. it
includes every accepted event up to and including t, and is stamped with that time.

Out-of-order events (older than the user's latest) are applied exactly: a decayed sum is
order-independent, s(T) = sum w * 2^(-(T - t)/h), so an older event adds w * 2^(-(ref - t)/h)
to the sum anchored at ``ref``; the sequence is rebuilt in time order. Duplicates (same user,
item, behavior, event_time) are dropped. The state can tell a duplicate only among the events it
holds, so an event at or before the user's horizon (older than the seeded sequence) is
``stale``: not applied, because it may already be counted (the warehouse keeps it when it is
new, and the next build and materialisation count it). An event for an item missing from the
catalogue (``item_stats``) is used when it carries its category, else quarantined. Bad input
never raises: it is quarantined with a one-line reason.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd

from recsys.config import FeatureConfig
from recsys.home import Paths
from recsys.warehouse.schema import BEHAVIORS
from recsys.warehouse.writeback import DEFAULT_LOCK_TIMEOUT_S, open_for_read

STATE_FILE = "online_state.db"
# everything but the quarantine, a log of bad input
SEEDED_TABLES = ("user_category", "user_events", "user_item", "user_last", "user_horizon", "seed")
EPOCH = datetime(1970, 1, 1)
US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600_000_000

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


@dataclass(frozen=True)
class Event:
    """One behaviour event; ``category_id`` may be left out when the catalogue knows the item."""

    user_id: int
    item_id: int
    behavior: str
    event_time: datetime
    category_id: int | None = None


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    QUARANTINED = "quarantined"


@dataclass(frozen=True)
class UpdateResult:
    """What happened to one event; ``rows`` are the pushed rows by push source when applied."""

    outcome: Outcome
    reason: str = ""
    rows: dict[str, dict[str, Any]] | None = None


class InvalidEvent(ValueError):
    """An event that cannot be used (the message is the quarantine reason)."""


class SeedError(Exception):
    """The updater's state cannot be seeded from this warehouse (one line: what to run)."""


@dataclass(frozen=True)
class _Category:
    category_id: int
    short: float
    long: float
    first_us: int


class UserState:
    """The updater's durable per-user state in one SQLite file (see the module docstring)."""

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

    def record(self, event: Event, category_id: int, event_us: int) -> Outcome:
        """Add one event to the state: APPLIED, or DUPLICATE / STALE with nothing changed."""
        weight = self.config.behavior_weights[event.behavior]
        con = self.con
        con.execute("begin")
        try:
            inserted = con.execute(
                "insert or ignore into user_events values (?, ?, ?, ?, ?)",
                (event.user_id, event.item_id, event.behavior, event_us, category_id),
            ).rowcount
            if not inserted:
                con.execute("rollback")
                return Outcome.DUPLICATE
            horizon = self.horizon_us(event.user_id)
            if horizon is not None and event_us <= horizon:
                con.execute("rollback")
                return Outcome.STALE
            row = con.execute(
                "select short, long, ref_us from user_category where user_id = ? and "
                "category_id = ?",
                (event.user_id, category_id),
            ).fetchone()
            if row is None:
                short, long, ref_us = weight, weight, event_us
            else:
                short, long, ref_us = _add_decayed(
                    row, weight, event_us, self.short_h_us, self.long_h_us
                )
            con.execute(
                "insert into user_category values (?, ?, ?, ?, ?, ?, ?, 1) "
                "on conflict (user_id, category_id) do update set short = excluded.short, "
                "long = excluded.long, ref_us = excluded.ref_us, "
                "first_us = min(first_us, excluded.first_us), "
                "last_us = max(last_us, excluded.last_us), n_events = n_events + 1",
                (event.user_id, category_id, short, long, ref_us, event_us, event_us),
            )
            column = f"n_{event.behavior}"
            con.execute(
                f"insert into user_item (user_id, item_id, {column}) values (?, ?, 1) "
                f"on conflict (user_id, item_id) do update set {column} = {column} + 1",
                (event.user_id, event.item_id),
            )
            con.execute(
                "insert into user_last values (?, ?, ?) on conflict (user_id, behavior) "
                "do update set last_us = max(last_us, excluded.last_us)",
                (event.user_id, event.behavior, event_us),
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return Outcome.APPLIED

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

    def seed(self, snapshot: Snapshot) -> None:
        """Replace the state (all but the quarantine) by a build's snapshot, in one transaction."""
        con = self.con
        con.execute("begin immediate")
        try:
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
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise

    def latest_us(self, user_id: int) -> int | None:
        (latest,) = self.con.execute(
            "select max(event_us) from user_events where user_id = ?", (user_id,)
        ).fetchone()
        return latest

    def categories(self, user_id: int, as_of_us: int) -> list[_Category]:
        """The user's categories with interest decayed to ``as_of_us`` (events before it)."""
        rows = self.con.execute(
            "select category_id, short, long, ref_us, first_us from user_category "
            "where user_id = ?",
            (user_id,),
        ).fetchall()
        return [
            _Category(
                category_id=c,
                short=short * 2.0 ** (-(as_of_us - ref) / self.short_h_us),
                long=long * 2.0 ** (-(as_of_us - ref) / self.long_h_us),
                first_us=first,
            )
            for c, short, long, ref, first in rows
        ]

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
        fields = [getattr(event, name, None) for name in Event.__dataclass_fields__]
        user_id, item_id, behavior, event_time, category_id = fields
        self.con.execute(
            "insert into quarantine values (?, ?, ?, ?, ?, ?, ?)",
            (
                _plain(user_id),
                _plain(item_id),
                _plain(category_id),
                _plain(behavior),
                _plain(event_time),
                reason,
                datetime.now(UTC).isoformat(),
            ),
        )

    def quarantined(self) -> list[tuple[Any, ...]]:
        return self.con.execute(
            "select user_id, item_id, category_id, behavior, event_time, reason from quarantine"
        ).fetchall()


@dataclass(frozen=True)
class Snapshot:
    """A build's per-user state, as rows of the state tables (see ``read_snapshot``)."""

    as_of_us: int
    categories: list[tuple[int, int, float, float, int, int, int, int]]
    events: list[tuple[int, int, str, int, int]]
    items: list[tuple[int, int, int, int, int, int]]
    last: list[tuple[int, str, int]]
    horizons: list[tuple[int, int]]
    read_seconds: float

    @property
    def as_of(self) -> datetime:
        return from_us(self.as_of_us)


@dataclass(frozen=True)
class SeedReport:
    """What ``seed_state`` wrote: the build's as_of, users, rows per table and seconds."""

    as_of: datetime
    users: int
    rows: dict[str, int]
    read_seconds: float
    write_seconds: float

    def summary(self) -> str:
        return (
            f"seeded the online updater's state for {self.users:,} users as of "
            f"{self.as_of.isoformat()} in {self.read_seconds + self.write_seconds:.1f}s"
        )


# user_item's count columns, in its column order
_ITEM_COUNTS = ", ".join(
    f"coalesce(sum(n_events) filter (where behavior = '{b}'), 0)::bigint"
    for b in ("view", "cart", "fav", "buy")
)
# Rows of the state tables from the marts, as of the build's as_of ($as_of_us). A sequence gap
# is (as_of_us - t_us) / 1e6 in double precision, so rounding gap * 1e6 gives t_us back exactly
# (for gaps under ~30 years).
_SNAPSHOT_SQL = {
    "categories": """
        select user_id, category_id, interest_short, interest_long, $as_of_us,
            epoch_us(first_event_time), epoch_us(last_event_time), n_events
        from user_category_interest order by user_id, category_id""",
    "events": """
        select user_id, item_id, behavior, $as_of_us - round(gap * 1e6)::bigint, category_id
        from (
            select user_id, unnest(seq_item_ids) as item_id, unnest(seq_behaviors) as behavior,
                unnest(seq_gap_seconds) as gap, unnest(seq_category_ids) as category_id
            from user_recent_sequence
        ) order by 1, 2, 3, 4""",
    "items": f"""
        select user_id, item_id, {_ITEM_COUNTS}
        from edges_user_item group by user_id, item_id order by user_id, item_id""",
    "last": """
        select user_id, behavior, epoch_us(max(last_event_time))
        from edges_user_item group by user_id, behavior order by user_id, behavior""",
    # users with more events than their sequence holds: the oldest event it holds
    "horizons": """
        select s.user_id, $as_of_us - round(s.seq_gap_seconds[s.seq_len] * 1e6)::bigint
        from user_recent_sequence s
        inner join (
            select user_id, sum(n_events) as n_events from user_category_interest group by user_id
        ) c on c.user_id = s.user_id
        where c.n_events > s.seq_len order by 1""",
}
_SNAPSHOT_TABLES = (
    "recsys_params",
    "behavior_weights",
    "user_category_interest",
    "user_recent_sequence",
    "edges_user_item",
)


def read_snapshot(
    paths: Paths,
    config: FeatureConfig,
    *,
    expect_as_of: datetime | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> Snapshot:
    """The state tables' rows from the warehouse's marts as of the build's as_of.

    Opens the warehouse read-only for the reads only. Raises ``SeedError`` without a build,
    when the build's parameters differ from ``config`` (the updater continues the marts'
    arithmetic, so both must use the same half-lives, weights and lengths), or when the build's
    as_of is not ``expect_as_of`` (the as_of of the exports in the online store).
    """
    began = time.perf_counter()
    if not paths.warehouse.exists():
        raise SeedError(f"no warehouse at {paths.warehouse}: run `recsys pipeline` first")
    with open_for_read(paths, lock_timeout_s=lock_timeout_s) as con:
        tables = "select table_name from duckdb_tables() where schema_name = 'main'"
        present = {name for (name,) in con.execute(tables).fetchall()}
        missing = [t for t in _SNAPSHOT_TABLES if t not in present]
        if missing:
            raise SeedError(f"the warehouse has no {missing[0]} table: run `recsys build` first")
        _check_build_config(con, config)
        (as_of_us,) = con.execute("select epoch_us(as_of) from recsys_params").fetchone()
        if expect_as_of is not None and from_us(as_of_us) != expect_as_of:
            raise SeedError(
                f"the warehouse's marts are as of {from_us(as_of_us).isoformat()} but the "
                f"exports as of {expect_as_of.isoformat()}: run `recsys build` again"
            )
        rows = {
            name: con.execute(sql, {"as_of_us": as_of_us} if "$as_of_us" in sql else {}).fetchall()
            for name, sql in _SNAPSHOT_SQL.items()
        }
    return Snapshot(as_of_us=as_of_us, **rows, read_seconds=time.perf_counter() - began)


def _check_build_config(con: Any, config: FeatureConfig) -> None:
    """``SeedError`` naming the first parameter where the build and ``config`` differ."""
    params = con.execute(
        "select short_half_life_seconds, long_half_life_seconds, novelty_window_seconds, "
        "recent_sequence_length, top_categories from recsys_params"
    ).fetchone()
    wanted = (
        config.short_half_life_hours * 3600,
        config.long_half_life_hours * 3600,
        config.novelty_window_hours * 3600,
        config.recent_sequence_length,
        config.top_categories,
    )
    names = ("short half-life", "long half-life", "novelty window", "sequence length", "top-N")
    pairs = list(zip(names, params, wanted, strict=True))
    weights = dict(con.execute("select behavior, weight from behavior_weights").fetchall())
    pairs += [(f"{b} weight", weights.get(b), w) for b, w in config.behavior_weights.items()]
    for name, built, want in pairs:
        if built != want:
            raise SeedError(
                f"the build's {name} is {built} but the updater's FeatureConfig says {want}: "
                "build and serve with the same FeatureConfig"
            )


def write_snapshot(paths: Paths, snapshot: Snapshot, config: FeatureConfig) -> SeedReport:
    """Replace ``<home>/feast/online_state.db`` (all but its quarantine) by the snapshot."""
    began = time.perf_counter()
    state = UserState(paths.feast / STATE_FILE, config)
    try:
        state.seed(snapshot)
    finally:
        state.close()
    return SeedReport(
        as_of=snapshot.as_of,
        users=len({row[0] for row in snapshot.categories}),
        rows={name: len(getattr(snapshot, name)) for name in _SNAPSHOT_SQL},
        read_seconds=snapshot.read_seconds,
        write_seconds=time.perf_counter() - began,
    )


def seed_state(
    paths: Paths,
    *,
    config: FeatureConfig | None = None,
    expect_as_of: datetime | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> SeedReport:
    """Seed the updater's state from the warehouse's build: ``read_snapshot`` then
    ``write_snapshot`` (idempotent: the state is replaced wholesale)."""
    config = config or FeatureConfig()
    snapshot = read_snapshot(
        paths, config, expect_as_of=expect_as_of, lock_timeout_s=lock_timeout_s
    )
    return write_snapshot(paths, snapshot, config)


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else str(value)


def _add_decayed(
    row: tuple[float, float, int], weight: float, event_us: int, short_h: float, long_h: float
) -> tuple[float, float, int]:
    """Add weight w at ``event_us`` to sums anchored at ``ref_us``; returns the new anchor."""
    short, long, ref_us = row
    if event_us >= ref_us:
        dt = event_us - ref_us
        return (
            short * 2.0 ** (-dt / short_h) + weight,
            long * 2.0 ** (-dt / long_h) + weight,
            event_us,
        )
    dt = ref_us - event_us
    return short + weight * 2.0 ** (-dt / short_h), long + weight * 2.0 ** (-dt / long_h), ref_us


def user_rows(
    state: UserState, user_id: int, as_of_us: int, config: FeatureConfig
) -> dict[str, dict[str, Any]]:
    """The user's feature rows as of ``as_of_us``, keyed by push source (marts' definitions)."""
    stamp = from_us(as_of_us)
    categories = state.categories(user_id, as_of_us)
    base = {"user_id": user_id, "event_timestamp": stamp}
    return {
        "user_interest_push": base | interest_row(categories, config.top_categories),
        "user_interest_shift_push": base
        | shift_row(categories, as_of_us, round(config.novelty_window_hours * US_PER_HOUR)),
        "user_behavior_funnel_push": base
        | funnel_row(state.funnel_counts(user_id), state.last_by_behavior(user_id), as_of_us),
        "user_recent_sequence_push": base
        | sequence_row(state.recent(user_id, config.recent_sequence_length), as_of_us),
    }


def interest_row(categories: list[_Category], top_n: int) -> dict[str, Any]:
    """Top-N category ids and scores per horizon (ties: smallest category id first)."""
    row: dict[str, Any] = {}
    for horizon in ("short", "long"):
        ranked = sorted(categories, key=lambda c: (-getattr(c, horizon), c.category_id))[:top_n]
        row[f"top_categories_{horizon}"] = [c.category_id for c in ranked]
        row[f"top_scores_{horizon}"] = [getattr(c, horizon) for c in ranked]
        row[f"interest_total_{horizon}"] = math.fsum(getattr(c, horizon) for c in categories)
    return row


def shift_row(categories: list[_Category], as_of_us: int, window_us: int) -> dict[str, Any]:
    """JS divergence, top categories, novel share and entropies (bits), as the shift mart."""
    total_short = sum(c.short for c in categories)
    total_long = sum(c.long for c in categories)
    p = [c.short / total_short if total_short else 0.0 for c in categories]
    q = [c.long / total_long if total_long else 0.0 for c in categories]
    js = 0.0
    for ps, ql in zip(p, q, strict=True):
        mid = (ps + ql) / 2
        js += 0.5 * (ps * math.log2(ps / mid) if ps > 0 else 0.0)
        js += 0.5 * (ql * math.log2(ql / mid) if ql > 0 else 0.0)
    top_short = min(categories, key=lambda c: (-c.short, c.category_id)).category_id
    top_long = min(categories, key=lambda c: (-c.long, c.category_id)).category_id
    return {
        "js_divergence": max(js, 0.0),
        "top_category_short": top_short,
        "top_category_long": top_long,
        "top_category_changed": top_short != top_long,
        "novel_category_share": sum(
            share
            for share, c in zip(p, categories, strict=True)
            if c.first_us >= as_of_us - window_us
        ),
        "entropy_short": max(-sum(x * math.log2(x) for x in p if x > 0), 0.0),
        "entropy_long": max(-sum(x * math.log2(x) for x in q if x > 0), 0.0),
    }


def funnel_row(counts: tuple[int, ...], last: dict[str, int], as_of_us: int) -> dict[str, Any]:
    """Counts, distinct-item rates (None without a base) and hours since each behaviour."""
    n_view, n_cart, n_fav, n_buy, viewed, carted, v_cart, v_fav, v_buy, c_buy = counts

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    def hours(behavior: str) -> float | None:
        return (as_of_us - last[behavior]) / US_PER_HOUR if behavior in last else None

    return {
        "n_view": n_view,
        "n_cart": n_cart,
        "n_fav": n_fav,
        "n_buy": n_buy,
        "cart_rate": ratio(v_cart, viewed),
        "fav_rate": ratio(v_fav, viewed),
        "buy_rate": ratio(v_buy, viewed),
        "cart_to_buy_rate": ratio(c_buy, carted),
        **{f"hours_since_last_{b}": hours(b) for b in BEHAVIORS},
        "hours_since_last_event": (as_of_us - max(last.values())) / US_PER_HOUR,
    }


def sequence_row(recent: list[tuple[int, int, str, int]], as_of_us: int) -> dict[str, Any]:
    """The recent-sequence arrays, most recent first; gaps in seconds before ``as_of_us``."""
    return {
        "seq_item_ids": [r[0] for r in recent],
        "seq_category_ids": [r[1] for r in recent],
        "seq_behaviors": [r[2] for r in recent],
        "seq_gap_seconds": [(as_of_us - r[3]) / US_PER_SECOND for r in recent],
        "seq_len": len(recent),
    }


class FeastPushWriter:
    """Online-only writes of one event's push-source rows, all views in one transaction.

    ``FeatureStore.push`` resolves the push source's views from the registry and converts the
    frame through pandas/arrow on every call, and the provider commits once per view. This
    writer resolves the views of each push source once, encodes each view's row with Feast's
    value converter, and writes all of them at once through ``recsys.features.online_store`` (SQLite:
    one transaction on a WAL connection it keeps open; Redis: one ``HSET``): the same online
    rows that ``push(..., to=PushMode.ONLINE)`` writes. Store settings the direct writer does
    not reproduce go through the provider's ``online_write_batch``, view by view.
    """

    def __init__(self, store: Any) -> None:
        from feast.data_source import PushSource

        from recsys.features import online_store

        self.encode_row = online_store.encode_row
        self.store = store
        self.provider = store._get_provider()
        self.views: dict[str, list[Any]] = {}
        for view in store.list_feature_views():
            if isinstance(view.stream_source, PushSource):
                self.views.setdefault(view.stream_source.name, []).append(view)
        self.writer = online_store.online_writer(store)

    def __call__(self, rows: Mapping[str, dict[str, Any]]) -> None:
        unknown = sorted(set(rows) - set(self.views))
        if unknown:
            raise KeyError(f"no feature view is fed by push source {unknown[0]!r}")
        if self.writer is None:
            for source, row in rows.items():
                self._write_through_provider(source, row)
            return
        self.writer.write(
            [
                self.encode_row(view, row)
                for source, row in rows.items()
                for view in self.views[source]
            ]
        )

    def _write_through_provider(self, source: str, row: dict[str, Any]) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import python_values_to_proto_values

        stamp = row["event_timestamp"].replace(tzinfo=UTC)
        for view in self.views[source]:
            (join_key,) = [c.name for c in view.entity_columns]
            key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=row[join_key])])
            values = {
                f.name: python_values_to_proto_values([row[f.name]], f.dtype.to_value_type())[0]
                for f in view.features
            }
            self.provider.online_write_batch(
                self.store.config, view, [(key, values, stamp, None)], progress=None
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Looks an item's category up in the catalogue; None when the item is unknown.
CategoryLookup = Callable[[int], int | None]


class OnlineUpdater:
    """Applies events one at a time and pushes the user's fresh rows to the online store.

    ``push(rows)`` writes one event's rows, keyed by push source name, in one go (one
    transaction); ``OnlineUpdater.for_store`` wires it to ``FeastPushWriter``.
    """

    def __init__(
        self,
        state: UserState,
        *,
        push: Callable[[Mapping[str, dict[str, Any]]], None],
        catalogue: CategoryLookup,
        config: FeatureConfig,
    ) -> None:
        self.state = state
        self.push = push
        self.catalogue = catalogue
        self.config = config

    @classmethod
    def for_store(
        cls,
        paths: Paths,
        store: Any,
        *,
        config: FeatureConfig | None = None,
        via_push_api: bool = False,
    ) -> OnlineUpdater:
        """An updater for a home whose registry holds the push sources (``recsys features
        apply``); the catalogue is the online ``item_stats`` view.

        By default rows go through ``FeastPushWriter`` (the push sources' views, resolved once;
        one transaction per event); ``via_push_api=True`` calls
        ``FeatureStore.push(..., to=PushMode.ONLINE)`` per source, which writes the same rows
        but re-reads the registry on every call (~100 ms).
        """
        from feast.data_source import PushMode

        config = config or FeatureConfig()
        push: Callable[[Mapping[str, dict[str, Any]]], None]
        if via_push_api:

            def push(rows: Mapping[str, dict[str, Any]]) -> None:
                for source, row in rows.items():
                    store.push(source, pd.DataFrame([row]), to=PushMode.ONLINE)

        else:
            push = FeastPushWriter(store)

        def catalogue(item_id: int) -> int | None:
            values = store.get_online_features(
                features=["item_stats:category_id"], entity_rows=[{"item_id": item_id}]
            ).to_dict()
            return values["category_id"][0]

        return cls(
            UserState(paths.feast / STATE_FILE, config),
            push=push,
            catalogue=catalogue,
            config=config,
        )

    def close(self) -> None:
        self.state.close()
        close_push = getattr(self.push, "close", None)
        if close_push is not None:
            close_push()

    def apply(self, event: Any) -> UpdateResult:
        """Apply one event; never raises on bad input (it is quarantined with a reason)."""
        try:
            category_id, event_us = self._validate(event)
        except InvalidEvent as exc:
            self.state.quarantine(event, str(exc))
            return UpdateResult(Outcome.QUARANTINED, reason=str(exc))
        outcome = self.state.record(event, category_id, event_us)
        if outcome is Outcome.DUPLICATE:
            return UpdateResult(outcome, reason="already applied")
        if outcome is Outcome.STALE:
            horizon = from_us(self.state.horizon_us(event.user_id))
            return UpdateResult(
                outcome,
                reason=f"at or before {horizon.isoformat()}, the oldest event of user "
                f"{event.user_id} the online state holds: it may be counted already, so it "
                "waits for the next build",
            )
        as_of_us = self.state.latest_us(event.user_id) + 1
        rows = user_rows(self.state, event.user_id, as_of_us, self.config)
        self.push(rows)
        return UpdateResult(Outcome.APPLIED, rows=rows)

    def apply_all(self, events: Iterable[Any]) -> list[UpdateResult]:
        return [self.apply(event) for event in events]

    def features_as_of(self, user_id: int, as_of: datetime) -> dict[str, dict[str, Any]]:
        """The user's rows as of any time at or after their latest event (for checks)."""
        return user_rows(self.state, user_id, to_us(as_of), self.config)

    def _validate(self, event: Any) -> tuple[int, int]:
        """The event's category and time in microseconds, or ``InvalidEvent``."""
        if not isinstance(event, Event):
            raise InvalidEvent(f"not an Event: {type(event).__name__}")
        for name in ("user_id", "item_id"):
            if not isinstance(getattr(event, name), int) or isinstance(getattr(event, name), bool):
                raise InvalidEvent(f"{name} must be an integer, got {getattr(event, name)!r}")
        if event.behavior not in self.config.behavior_weights:
            raise InvalidEvent(f"unknown behavior {event.behavior!r}")
        if not isinstance(event.event_time, datetime):
            raise InvalidEvent(f"event_time must be a datetime, got {event.event_time!r}")
        category_id = event.category_id
        if category_id is None:
            category_id = self.catalogue(event.item_id)
            if category_id is None:
                raise InvalidEvent(
                    f"unknown item {event.item_id} without a category_id (not in item_stats)"
                )
        elif not isinstance(category_id, int):
            raise InvalidEvent(f"category_id must be an integer, got {category_id!r}")
        return int(category_id), to_us(event.event_time)
