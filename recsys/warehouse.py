"""The DuckDB warehouse: connection handling and the base tables that ingest writes.

Base tables (written by ``recsys ingest``):

- ``events``: one row per accepted behaviour event, canonical schema plus lineage
  (``source_file``, ``source_line``, ``ingested_at``). Natural key:
  (user_id, item_id, behavior, event_time); re-ingesting a row with that key adds nothing.
  ``event_key`` is DuckDB's ``hash()`` of that key, kept to find duplicates cheaply.
- ``quarantine_events``: one row per rejected source row (source_file, line, raw text, reason).
- ``ingested_files``: one row per ingest call, with its counts.

DuckDB allows one writer process at a time; readers of a file that another process writes
must open it read-only (see ``connect(..., read_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from recsys.config import Paths

BASE_TABLES_DDL = """
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
"""


def connect(
    paths: Paths, *, read_only: bool = False, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """Open the home's warehouse; a writable connection also creates the base tables."""
    if read_only and not paths.warehouse.exists():
        raise FileNotFoundError(
            f"no warehouse at {paths.warehouse}; run `recsys ingest` or `recsys pipeline` first"
        )
    paths.ensure()
    config = {"memory_limit": memory_limit} if memory_limit else {}
    con = duckdb.connect(str(paths.warehouse), read_only=read_only, config=config)
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
