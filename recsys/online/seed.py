"""Seeding the online updater's state from a build of the warehouse.

``seed_state(paths)`` replaces the whole state (all but ``quarantine``) at once (SQLite: one
transaction; Redis: a new generation, ``recsys.online.redis_state``) with the warehouse's marts
as of the build's as_of (``recsys_params.as_of``), then replays onto it the events the updater
applied since the previous seed (``recsys.online.state.UserState.seed``): those the build counts
are dropped as duplicates, the others stay, so that reseeding while the service runs loses no
acknowledged event. The marts are ``user_category_interest`` (sums at as_of, first/last time,
counts), ``edges_user_item`` (behaviour counts per item, latest time per behaviour) and
``user_recent_sequence`` (the latest events; time = as_of - gap, exact in microseconds).
``recsys.features.materialize`` calls it after loading the online store, so both describe the
same build, and events applied later continue each user's history exactly. Nothing else in the
state depends on older events: a decayed sum, a count, a min or a max absorbs any further event,
and every event outside the seeded sequence ranks below all of it, so the latest N of
(sequence + new events) is exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from recsys.config import FeatureConfig
from recsys.features.online_settings import OnlineStoreSettings
from recsys.home import Paths
from recsys.online.redis_state import RedisUserState, open_state
from recsys.online.state import UserState, from_us
from recsys.online.updater import user_rows
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S
from recsys.warehouse.writeback import open_for_read


class SeedError(Exception):
    """The updater's state cannot be seeded from this warehouse (one line: what to run)."""


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
    """What ``seed_state`` wrote: the build's as_of, users, rows per table, the events
    applied since the previous seed that were replayed onto it, and seconds."""

    as_of: datetime
    users: int
    rows: dict[str, int]
    replayed: int
    read_seconds: float
    write_seconds: float

    def summary(self) -> str:
        return (
            f"seeded the online updater's state for {self.users:,} users as of "
            f"{self.as_of.isoformat()} (+{self.replayed:,} later events replayed) in "
            f"{self.read_seconds + self.write_seconds:.1f}s"
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


def write_snapshot(
    paths: Paths,
    snapshot: Snapshot,
    config: FeatureConfig,
    *,
    push: Callable[[Mapping[str, dict[str, Any]]], None] | None = None,
    online: OnlineStoreSettings | None = None,
) -> SeedReport:
    """Replace the home's updater state (``recsys.online.redis_state.open_state``; all but its
    quarantine) by the snapshot and replay the events applied since the previous seed; ``push``
    (as ``OnlineUpdater``'s) then gets the fresh rows of every user with replayed events, the
    online store having been loaded with the build's older rows."""
    began = time.perf_counter()
    state = open_state(paths, config, online)
    publish = None if push is None else partial(_push_rows, state, config, push)
    try:
        replayed = state.seed(snapshot, publish)
    finally:
        state.close()
    return SeedReport(
        as_of=snapshot.as_of,
        users=len({row[0] for row in snapshot.categories}),
        rows={name: len(getattr(snapshot, name)) for name in _SNAPSHOT_SQL},
        replayed=replayed,
        read_seconds=snapshot.read_seconds,
        write_seconds=time.perf_counter() - began,
    )


def _push_rows(
    state: UserState | RedisUserState,
    config: FeatureConfig,
    push: Callable[[Mapping[str, dict[str, Any]]], None],
    users: list[int],
) -> None:
    """Push each user's rows as of just after their latest event, as the updater does."""
    for user in users:
        push(user_rows(state, user, state.latest_us(user) + 1, config))


def seed_state(
    paths: Paths,
    *,
    config: FeatureConfig | None = None,
    expect_as_of: datetime | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    online: OnlineStoreSettings | None = None,
) -> SeedReport:
    """Seed the updater's state (in ``online``'s store; None: the home's) from the warehouse's
    build: ``read_snapshot`` then ``write_snapshot`` (idempotent: the state is replaced
    wholesale)."""
    config = config or FeatureConfig()
    snapshot = read_snapshot(
        paths, config, expect_as_of=expect_as_of, lock_timeout_s=lock_timeout_s
    )
    return write_snapshot(paths, snapshot, config, online=online)
