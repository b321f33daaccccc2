"""The DuckDB warehouse: connection handling and the base tables that ingest writes.

Base tables (written by ``recsys ingest``):

- ``events``: one row per accepted behaviour event, canonical schema plus lineage
  (``source_file``, ``source_line``, ``ingested_at``). Natural key:
  (user_id, item_id, behavior, event_time); re-ingesting a row with that key adds nothing.
  ``event_key`` is DuckDB's ``hash()`` of that key (``EVENT_KEY``), kept to find duplicates
  cheaply; every writer of ``events`` computes it with ``EVENT_KEY``.
- ``quarantine_events``: one row per rejected source row (source_file, line, raw text, reason).
- ``ingested_files``: one row per ingest call, with its counts.
- ``forgotten_users``: the tombstones of users whose data was erased (``recsys forget``), by key
  and, for a string id, by ``source_id``. Every writer of ``events`` and ``quarantine_events``
  skips their rows (``FORGOTTEN_USER``, ``FORGOTTEN_SOURCE``, ``mentions_forgotten``), so
  re-ingesting a source file does not bring them back.
- ``dim_users``, ``dim_items``, ``dim_categories``: string source ids and their keys
  (``recsys.warehouse.ids``).

DuckDB allows one writer process at a time, and a reader locks writers out of the file while
it is open. ``connect`` therefore waits for a lock held by another process (up to
``lock_timeout_s``, with jittered backoff) and then raises :class:`WarehouseBusyError`, which
names the holder.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from time import monotonic, sleep
from typing import TypeVar

import duckdb
import polars as pl

from recsys.home import Paths
from recsys.warehouse.ids import DIMS_DDL

DEFAULT_LOCK_TIMEOUT_S = 30.0
_LOCK_CONFLICT = "Could not set lock on file"
_LOCK_HOLDER = re.compile(r"held in (.*?\(PID \d+\))")
T = TypeVar("T")
# The events' natural key, and the SQL of its hash over those columns (``events.event_key``).
NATURAL_KEY = ("user_id", "item_id", "behavior", "event_time")
EVENT_KEY = f"hash({', '.join(NATURAL_KEY)})"

BASE_TABLES_DDL = (
    """
create table if not exists events (
    user_id bigint not null,
    item_id bigint not null,
    category_id bigint not null,
    behavior varchar not null,
    event_time timestamp not null,
    session_id varchar,
    source_file varchar not null,
    source_line bigint,
    ingested_at timestamp not null,
    event_key ubigint not null
);
create table if not exists quarantine_events (
    source_file varchar not null,
    source_sha256 varchar not null,
    line bigint,
    raw varchar,
    reason varchar not null,
    quarantined_at timestamp not null
);
create table if not exists ingested_files (
    source_file varchar not null,
    source_sha256 varchar not null,
    format varchar not null,
    rows_read bigint not null,
    loaded bigint not null,
    duplicates bigint not null,
    quarantined bigint not null,
    ingested_at timestamp not null
);
create table if not exists forgotten_users (
    user_id bigint primary key,
    forgotten_at timestamp not null,
    source_id varchar
);
-- warehouses created before string ids
alter table forgotten_users add column if not exists source_id varchar;
"""
    + DIMS_DDL
)
# SQL conditions on a ``user_id`` key column / a ``user_id_sid`` string id column: the user has
# been forgotten.
FORGOTTEN_USER = "user_id in (select user_id from forgotten_users)"
FORGOTTEN_SOURCE = (
    "user_id_sid in (select source_id from forgotten_users where source_id is not null)"
)


def raw_fields(raw: str) -> str:
    """SQL: the comma-separated fields of the text column ``raw`` (a source row as quarantined),
    spaces and quotes trimmed; a row mentions a user when a field is the user's id. The user
    column's position is not known for every format, so any field counts."""
    return f"list_transform(string_split({raw}, ','), lambda f: trim(f, ' \"'))"


def mentions_forgotten(raw: str) -> str:
    """SQL condition: the quarantined row ``raw`` mentions a forgotten user (``raw_fields``)."""
    return (
        f"exists (select 1 from unnest({raw_fields(raw)}) as f(field), forgotten_users u "
        "where try_cast(f.field as bigint) = u.user_id or f.field = u.source_id)"
    )


class WarehouseBusyError(RuntimeError):
    """Another process kept the warehouse locked past the timeout (one line)."""


def retry_on_lock(open_: Callable[[], T], path: Path, timeout_s: float) -> T:
    """Call ``open_`` until DuckDB stops refusing it for a file lock held by another process."""
    deadline = monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            return open_()
        except duckdb.IOException as exc:
            if _LOCK_CONFLICT not in str(exc):
                raise
            remaining = deadline - monotonic()
            if remaining <= 0:
                found = _LOCK_HOLDER.search(str(exc))
                holder = found.group(1) if found else "another process"
                raise WarehouseBusyError(
                    f"{path} stayed locked by {holder} for {timeout_s:g} s; "
                    "close long-lived connections to it (SQLAlchemy: use NullPool)"
                ) from None
            # Jitter keeps several waiting processes from retrying in lockstep.
            sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 0.25)


def connect(
    paths: Paths,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> duckdb.DuckDBPyConnection:
    """Open the home's warehouse (waiting for another process's lock, see the module doc); a
    writable connection also creates the base tables."""
    if read_only and not paths.warehouse.exists():
        raise FileNotFoundError(
            f"no warehouse at {paths.warehouse}; run `recsys ingest` or `recsys pipeline` first"
        )
    paths.ensure()
    config = {"memory_limit": memory_limit} if memory_limit else {}
    con = retry_on_lock(
        lambda: duckdb.connect(str(paths.warehouse), read_only=read_only, config=config),
        paths.warehouse,
        lock_timeout_s,
    )
    # Timestamps in the warehouse are UTC; make DuckDB's own clock agree.
    con.execute("set timezone = 'UTC'")
    if not read_only:
        con.execute(BASE_TABLES_DDL)
    return con


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "select count(*) from information_schema.tables where table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def warehouse_path(paths: Paths) -> Path:
    return paths.warehouse


def load_events(paths: Paths) -> pl.DataFrame:
    """The warehouse's events in canonical columns (the frame every model fits on)."""
    con = connect(paths, read_only=True)
    try:
        return con.sql(
            "select user_id, item_id, category_id, behavior, event_time from events"
        ).pl()
    finally:
        con.close()
