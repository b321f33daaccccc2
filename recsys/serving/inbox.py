"""The durable event inbox: events are acknowledged once they are here, and drained into the
warehouse's ``events`` table in batches.

Why not write the warehouse per request: DuckDB admits one writer process and refuses a
read-write open while any analyst holds the file read-only, and an open + insert + close costs
tens of milliseconds. So POST /v1/events commits each request's events in ONE SQLite
transaction (WAL, ``synchronous = FULL``: fsync'ed before the commit returns) to
``<home>/serving/inbox.db`` and only then answers. ``InboxDrainer`` moves them into the
warehouse in a background thread (every ``interval_s``, short ``writeback.open_for_write``
transactions), on startup and on shutdown:

1. read up to ``batch`` inbox rows (in sequence order, only those the service has applied);
2. in one DuckDB transaction write the service's new string ids (``source_keys``, below) into
   the dims, then insert the events not already in ``events`` (natural key, via the same
   ``event_key`` as ingest: ``recsys.warehouse.connect.EVENT_KEY``), with
   ``source_file = 'service:/v1/events'`` and ``source_line = inbox seq``; events of forgotten
   users (``forgotten_users``, ``recsys forget``) are dropped, as ingest drops them;
3. delete them from the inbox.

A crash between 2 and 3 re-drains the rows on the next start; step 2's anti-join makes that a
no-op, so every acknowledged event reaches the warehouse exactly once. When the warehouse stays
locked (an analyst's long read), the rows simply wait for the next round.

String ids (``recsys.warehouse.ids``): a user, item or category id the service has not seen
gets a key of the service's range from ``EventInbox.allocate`` (table ``source_keys``, one
SQLite transaction, committed before the events that use it), so the event is applied online at
once. The drain writes those keys into the warehouse's dims; a source id the warehouse already
knows under another key (a file brought it meanwhile) or has tombstoned keeps the warehouse's
key, the events are moved onto it, and ``InboxDrainer.on_remap`` tells the service.

Client event ids: an event posted with an ``event_id`` is stored only when the id is new. The
ids live in the inbox's ``event_ids`` table, written in the same transaction as the events and
kept after the drain (for ``retention_s``, pruned by the drainer), so a retry is recognised
after a restart too. Events without an id have only the natural key: a retry of one without an
``event_time`` gets a new server time, and is stored twice.

Replicas (``recsys.serving.replicas``): each replica has its own inbox file and drains it as
above; the warehouse's lock takes their drains one at a time, and the anti-join drops an event
that two inboxes hold. The rows keep their ``event_id``, so that a row whose event id another
replica applied (a client's retry there) is discarded instead of drained; string ids' keys come
from Redis and are recorded here (``adopt``) for the drain.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from recsys.home import Paths
from recsys.online.state import from_us
from recsys.warehouse.connect import EVENT_KEY, FORGOTTEN_USER, WarehouseBusyError
from recsys.warehouse.ids import DIMS, SERVICE_BASE
from recsys.warehouse.writeback import open_for_write

log = logging.getLogger(__name__)

SOURCE_FILE = "service:/v1/events"

INBOX_DDL = """
create table if not exists inbox (
    seq integer primary key autoincrement,
    user_id integer not null, item_id integer not null, category_id integer not null,
    behavior text not null, event_us integer not null, session_id text,
    received_at text not null, event_id text
);
create table if not exists event_ids (
    event_id text primary key, user_id integer not null, received_us integer not null
) without rowid;
create index if not exists event_ids_by_time on event_ids (received_us);
create table if not exists source_keys (
    dim text not null, source_id text not null, key integer not null,
    drained integer not null default 0,
    primary key (dim, source_id)
) without rowid;
"""

# The service's new string ids go into the warehouse's dims; a source id the warehouse knows
# already (a file brought it meanwhile), or has tombstoned, keeps the warehouse's key, and the
# events are moved onto it (``remap``).
_DIM_SQL = f"""
insert into {{dim}}
select k.key, k.source_id, now()::timestamp, '{SOURCE_FILE}'
from incoming_keys k
anti join {{dim}} d on d.source_id = k.source_id
anti join {{dim}} used on used.key = k.key
where k.dim = '{{dim}}' {{kept}}
"""
_REMAP_SQL = """
create or replace temp table remap as
select k.dim, k.key as from_key, d.key as to_key
from incoming_keys k
join (
    select 'dim_users' as dim, key, source_id from dim_users
    union all select 'dim_items', key, source_id from dim_items
    union all select 'dim_categories', key, source_id from dim_categories
    union all select 'dim_users', user_id, source_id from forgotten_users
    where source_id is not null
) d on d.dim = k.dim and d.source_id = k.source_id
where d.key != k.key
"""
_REMAPPED = ", ".join(f"coalesce(r_{name}.to_key, n.{name}) as {name}" for name in DIMS)
_REMAP_JOINS = " ".join(
    f"left join remap r_{name} on r_{name}.dim = '{dim}' and r_{name}.from_key = n.{name}"
    for name, dim in DIMS.items()
)
_DRAIN_SQL = f"""
insert into events
select n.user_id, n.item_id, n.category_id, n.behavior, n.event_time, n.session_id,
       '{SOURCE_FILE}', n.seq, now()::timestamp, n.event_key
from (
    select *, {EVENT_KEY} as event_key
    from (select n.* replace ({_REMAPPED}) from incoming n {_REMAP_JOINS})
    qualify row_number() over (
        partition by user_id, item_id, behavior, event_time order by seq
    ) = 1
) n
where not exists (
    select 1 from events e
    where e.event_key = n.event_key and e.user_id = n.user_id and e.item_id = n.item_id
      and e.behavior = n.behavior and e.event_time = n.event_time
)
and not {FORGOTTEN_USER}
"""


@dataclass(frozen=True)
class InboxEvent:
    """One validated event with its category resolved; ``event_us`` = microseconds since 1970."""

    user_id: int
    item_id: int
    category_id: int
    behavior: str
    event_us: int
    session_id: str | None = None
    event_id: str | None = None


class EventInbox:
    """One connection to the inbox file (use one per thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.con.execute("pragma journal_mode = wal")
        # FULL: the WAL is fsync'ed at every commit, so an acknowledged event survives a crash
        # of the machine, not only of the process.
        self.con.execute("pragma synchronous = full")
        self.con.execute("pragma busy_timeout = 10000")
        self.con.executescript(INBOX_DDL)
        columns = {row[1] for row in self.con.execute("pragma table_info(inbox)")}
        if "event_id" not in columns:  # an inbox written before replicas kept event ids
            self.con.execute("alter table inbox add column event_id text")

    def close(self) -> None:
        self.con.close()

    def append(self, events: list[InboxEvent]) -> list[int | None]:
        """Commit the events in one transaction; returns each event's sequence number, or None
        for an event whose ``event_id`` was stored before (it is not stored again)."""
        received = datetime.now(UTC)
        received_us = round(received.timestamp() * 1e6)
        con = self.con
        seqs: list[int | None] = []
        con.execute("begin immediate")
        try:
            for e in events:
                if e.event_id is not None:
                    known = not con.execute(
                        "insert or ignore into event_ids values (?, ?, ?)",
                        (e.event_id, e.user_id, received_us),
                    ).rowcount
                    if known:
                        seqs.append(None)
                        continue
                seqs.append(
                    con.execute(
                        "insert into inbox (user_id, item_id, category_id, behavior, event_us, "
                        "session_id, received_at, event_id) values (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.user_id,
                            e.item_id,
                            e.category_id,
                            e.behavior,
                            e.event_us,
                            e.session_id,
                            received.isoformat(),
                            e.event_id,
                        ),
                    ).lastrowid
                )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return seqs

    def allocate(self, dim: str, source_ids: list[str], floor: int) -> dict[str, int]:
        """Keys of the service's range (``recsys.warehouse.ids``) for string ids of ``dim``,
        in one transaction: a source id allocated before keeps its key, new ones get the next
        keys above every key this inbox gave and above ``floor`` (the warehouse's highest key of
        the range)."""
        con = self.con
        con.execute("begin immediate")
        try:
            for source_id in source_ids:
                con.execute(
                    "insert or ignore into source_keys (dim, source_id, key) "
                    "select ?, ?, max(coalesce(max(key), ?), ?) + 1 from source_keys "
                    "where dim = ? and key >= ?",
                    (dim, source_id, SERVICE_BASE - 1, floor, dim, SERVICE_BASE),
                )
            keys = dict(
                con.execute(
                    "select source_id, key from source_keys where dim = ? "
                    "and source_id in (select value from json_each(?))",
                    (dim, json.dumps(source_ids)),
                ).fetchall()
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return keys

    def adopt(self, dim: str, keys: dict[str, int]) -> None:
        """Record keys another replica gave string ids (``recsys.serving.replicas``), so that
        this inbox's drain writes them into the dims with the events that use them."""
        self.con.executemany(
            "insert or ignore into source_keys (dim, source_id, key) values (?, ?, ?)",
            [(dim, source_id, key) for source_id, key in keys.items()],
        )

    def keys_to_drain(self, rows: list[tuple]) -> list[tuple]:
        """(dim, source_id, key) of the service's keys not drained yet or used by ``rows``
        (inbox rows about to be drained)."""
        used = sorted({k for row in rows for k in row[1:4] if k >= SERVICE_BASE})
        return self.con.execute(
            "select dim, source_id, key from source_keys "
            "where not drained or key in (select value from json_each(?))",
            (json.dumps(used),),
        ).fetchall()

    def mark_drained(self, keys: list[tuple]) -> None:
        self.con.executemany(
            "update source_keys set drained = 1 where dim = ? and source_id = ?",
            [(dim, source_id) for dim, source_id, _ in keys],
        )

    def pending(self, *, up_to: int | None = None, limit: int | None = None) -> list[tuple]:
        """Rows (seq, user_id, item_id, category_id, behavior, event_us, session_id, event_id)
        in order."""
        return self.con.execute(
            "select seq, user_id, item_id, category_id, behavior, event_us, session_id, event_id "
            "from inbox where seq <= ? order by seq limit ?",
            (up_to if up_to is not None else 2**62, limit if limit is not None else -1),
        ).fetchall()

    def remove(self, up_to: int) -> None:
        self.con.execute("delete from inbox where seq <= ?", (up_to,))

    def discard(self, seq: int) -> None:
        """Delete one row: its event reaches the warehouse from another replica's inbox."""
        self.con.execute("delete from inbox where seq = ?", (seq,))

    def forget(self, user_id: int) -> int:
        """Delete the user's events not drained yet, their event ids and the string id the
        service gave a key; returns the number of events deleted."""
        con = self.con
        con.execute("begin immediate")
        try:
            deleted = con.execute("delete from inbox where user_id = ?", (user_id,)).rowcount
            con.execute("delete from event_ids where user_id = ?", (user_id,))
            con.execute(
                "delete from source_keys where dim = ? and key = ?", (DIMS["user_id"], user_id)
            )
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        return deleted

    def prune_event_ids(self, older_than_s: float) -> None:
        """Forget event ids received more than ``older_than_s`` seconds ago."""
        cutoff_us = round((time.time() - older_than_s) * 1e6)
        self.con.execute("delete from event_ids where received_us < ?", (cutoff_us,))

    def __len__(self) -> int:
        return self.con.execute("select count(*) from inbox").fetchone()[0]


_FORGOTTEN_ID = "k.source_id in (select source_id from forgotten_users where source_id is not null)"


def _keys_arrow(keys: list[tuple]) -> pa.Table:
    dim, source_id, key = zip(*keys, strict=True) if keys else ((), (), ())
    return pa.table(
        {
            "dim": pa.array(dim, pa.string()),
            "source_id": pa.array(source_id, pa.string()),
            "key": pa.array(key, pa.int64()),
        }
    )


def _as_arrow(rows: list[tuple]) -> pa.Table:
    seq, user, item, category, behavior, event_us, session, _ = zip(*rows, strict=True)
    return pa.table(
        {
            "seq": pa.array(seq, pa.int64()),
            "user_id": pa.array(user, pa.int64()),
            "item_id": pa.array(item, pa.int64()),
            "category_id": pa.array(category, pa.int64()),
            "behavior": pa.array(behavior, pa.string()),
            "event_time": pa.array([from_us(us) for us in event_us], pa.timestamp("us")),
            "session_id": pa.array(session, pa.string()),
        }
    )


class InboxDrainer:
    """Moves inbox rows into the warehouse (see the module docstring).

    Only rows with ``seq <= applied`` are drained, i.e. events whose online update has run:
    after a crash, the rows still in the inbox are replayed through the online updater (its
    natural key drops the ones it already has) before they are drained. Each round also prunes
    event ids older than ``retention_s``. ``paused()`` holds the rounds off (forgetting a user
    must not race a drain that carries the user's events).
    """

    def __init__(
        self,
        paths: Paths,
        inbox_path: Path,
        *,
        interval_s: float,
        batch: int,
        lock_timeout_s: float,
        retention_s: float,
    ) -> None:
        self.paths = paths
        self.inbox_path = inbox_path
        self.interval_s = interval_s
        self.batch = batch
        self.lock_timeout_s = lock_timeout_s
        self.retention_s = retention_s
        self.applied = 0
        self.drained = 0
        # called with (dim, source_id, key) when the warehouse kept its own key for a string id
        self.on_remap: Callable[[str, str, int], None] = lambda dim, source_id, key: None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()

    def drain(self, inbox: EventInbox) -> int:
        """Drain everything applied so far; returns the number of rows moved. Raises
        ``WarehouseBusyError`` when the warehouse stays locked (the rows stay in the inbox)."""
        moved = 0
        with self._round:
            while rows := inbox.pending(up_to=self.applied, limit=self.batch):
                keys = inbox.keys_to_drain(rows)
                with open_for_write(self.paths, lock_timeout_s=self.lock_timeout_s) as con:
                    con.register("incoming", _as_arrow(rows))
                    con.register("incoming_keys", _keys_arrow(keys))
                    con.begin()
                    try:
                        for dim in DIMS.values():
                            kept = f"and not ({_FORGOTTEN_ID})" if dim == "dim_users" else ""
                            con.execute(_DIM_SQL.format(dim=dim, kept=kept))
                        con.execute(_REMAP_SQL)
                        remapped = con.execute(
                            "select r.dim, k.source_id, r.to_key from remap r join incoming_keys k "
                            "on k.dim = r.dim and k.key = r.from_key"
                        ).fetchall()
                        con.execute(_DRAIN_SQL)
                        con.commit()
                    except BaseException:
                        con.rollback()
                        raise
                inbox.mark_drained(keys)
                for dim, source_id, key in remapped:
                    self.on_remap(dim, source_id, key)
                inbox.remove(rows[-1][0])
                moved += len(rows)
            inbox.prune_event_ids(self.retention_s)
        self.drained += moved
        return moved

    def paused(self) -> threading.Lock:
        """``with drainer.paused():`` no round runs inside the block."""
        return self._round

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inbox-drainer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current round) and drain what is left, once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        inbox = EventInbox(self.inbox_path)
        try:
            self.drain(inbox)
        finally:
            inbox.close()

    def _run(self) -> None:
        inbox = EventInbox(self.inbox_path)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.drain(inbox)
                    self.last_error = None
                except WarehouseBusyError as exc:
                    self.last_error = str(exc)
                    log.warning("inbox drain postponed: %s", exc)
                except Exception as exc:  # keep draining later; the rows stay in the inbox
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("inbox drain failed")
        finally:
            inbox.close()
