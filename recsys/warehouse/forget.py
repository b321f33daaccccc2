"""Erase one user from the warehouse and from the Parquet files of a home (``recsys forget``).

In the warehouse, in ONE transaction under the write lock every writer takes
(``recsys.warehouse.connect.connect``):

- the user's tombstone goes into ``forgotten_users`` first, so an ingest or an inbox drain that
  runs right after the lock is released skips the user's rows instead of bringing them back;
- the user's rows leave every base table with a ``user_id`` column, found in the catalog:
  ``events``, the marts, the build's materialised ``live`` tables, ``recommendations`` (the
  counts of the runs that listed the user are lowered to match);
- quarantined source rows whose raw text mentions the id (``raw_fields``) are deleted;
- a string id's row of ``dim_users`` is deleted; the tombstone keeps the id (and its key),
  which is what stops the id from coming back.

Parquet files (the Feast exports, the embedding files, simulated logs, ...) are rewritten without
the user's rows, each through a temporary file and an atomic rename.

Aggregates the user contributed to (item popularity, co-visitation edges) keep that share until
the next ``recsys build``. DuckDB leaves deleted values in free blocks of the file until they are
reused; only a copy of the database drops them from the disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from recsys.home import Paths
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S, connect, raw_fields
from recsys.warehouse.ids import DIMS, allocate_sql, key_of, source_text
from recsys.warehouse.schema import SOURCES

USER_COLUMN = "user_id"
TOMBSTONES = "forgotten_users"


def forget_in_warehouse(
    paths: Paths, user: int | str, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> tuple[int, dict[str, int]]:
    """Tombstone the user (an id as in the source) and delete their rows (module doc); returns
    the user's key and the rows deleted per table (``schema.table`` outside ``main``), every
    searched table included. A string id never seen gets a key, tombstoned at once, so that
    no later ingest or post brings it in."""
    con = connect(paths, lock_timeout_s=lock_timeout_s)
    try:
        con.begin()
        try:
            user_id, source_id = _user_key(con, user)
            con.execute(
                f"insert or ignore into {TOMBSTONES} (user_id, forgotten_at, source_id) "
                "values (?, now()::timestamp, ?)",
                [user_id, source_id],
            )
            tables = _user_tables(con)
            if ("main", "recommendations") in tables:
                _uncount_runs(con, user_id)
            removed = {
                name if schema == "main" else f"{schema}.{name}": _deleted(
                    con,
                    f"delete from {_ident(schema)}.{_ident(name)} where {USER_COLUMN} = ?",
                    user_id,
                )
                for schema, name in tables
            }
            fields = raw_fields("raw")
            mentioned = (
                f"list_contains(list_transform({fields}, lambda f: try_cast(f as bigint)), ?)"
                if source_id is None
                else f"list_contains({fields}, ?)"
            )
            removed["quarantine_events"] = _deleted(
                con,
                f"delete from quarantine_events where {mentioned}",
                user_id if source_id is None else source_id,
            )
            removed[DIMS["user_id"]] = _deleted(
                con, f"delete from {DIMS['user_id']} where key = ?", user_id
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.close()
    return user_id, removed


def _user_key(con: duckdb.DuckDBPyConnection, user: int | str) -> tuple[int, str | None]:
    """The user's key and string id (None for an integer id); a string id the dim lacks gets
    its key here (``allocate_sql``), in the caller's transaction."""
    key = key_of(user)
    if key is not None:
        return key, None
    source_id = source_text(user)
    forgotten = con.execute(
        f"select user_id from {TOMBSTONES} where source_id = ?", [source_id]
    ).fetchone()
    if forgotten:
        return forgotten[0], source_id
    con.execute(
        "create or replace temp table new_ids as select ? as source_id, 0 as first", [source_id]
    )
    con.execute(allocate_sql(DIMS["user_id"]), ["recsys forget"])
    (key,) = con.execute(
        f"select key from {DIMS['user_id']} where source_id = ?", [source_id]
    ).fetchone()
    return key, source_id


def _user_tables(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(schema, table) of every base table of the warehouse with a user column, tombstones
    aside, as the catalog names them."""
    return [
        (schema, name)
        for schema, name in con.execute(
            "select c.table_schema, c.table_name from information_schema.columns c "
            "join information_schema.tables t using (table_catalog, table_schema, table_name) "
            "where t.table_type = 'BASE TABLE' and c.table_catalog = current_database() "
            "and c.column_name = ? and c.table_name != ? order by 1, 2",
            [USER_COLUMN, TOMBSTONES],
        ).fetchall()
    ]


def _uncount_runs(con: duckdb.DuckDBPyConnection, user_id: int) -> None:
    """Lower ``recommendation_runs``' user and row counts by the user's rows of each run."""
    present = {row[0] for row in con.execute("describe recommendation_runs").fetchall()}
    # the per-source columns from the fixed list that this warehouse's layout has
    counted = [s for s in SOURCES if f"n_{s}" in present]
    per_source = "".join(f", count(*) filter (where source = '{s}') as n_{s}" for s in counted)
    lowered = "".join(f", n_{s} = r.n_{s} - u.n_{s}" for s in counted)
    con.execute(
        f"update recommendation_runs r set n_users = r.n_users - 1, "
        f"n_rows = r.n_rows - u.n_rows{lowered} "
        f"from (select run_id, count(*) as n_rows{per_source} from recommendations "
        "where user_id = ? group by run_id) u where r.run_id = u.run_id",
        [user_id],
    )


def _deleted(con: duckdb.DuckDBPyConnection, sql: str, user_id: int) -> int:
    (count,) = con.execute(sql, [user_id]).fetchone()
    return int(count)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def forget_in_files(paths: Paths, user_id: int, *, skip: Iterable[Path] = ()) -> dict[str, int]:
    """Drop the user's rows from every Parquet file below the home that has a user column,
    except below the folders ``skip`` (model folders, whose manifests must follow) and in
    hidden files or folders (writes in progress); returns rows dropped per file (path relative
    to the home), every file with a user column included."""
    skipped = [Path(folder).resolve() for folder in skip]
    removed: dict[str, int] = {}
    for path in sorted(paths.home.rglob("*.parquet")):
        relative = path.relative_to(paths.home)
        if any(part.startswith(".") for part in relative.parts) or any(
            path.resolve().is_relative_to(folder) for folder in skipped
        ):
            continue
        dropped = drop_user_rows(path, user_id)
        if dropped is not None:
            removed[relative.as_posix()] = dropped
    return removed


def drop_user_rows(path: Path, user_id: int) -> int | None:
    """Rewrite a Parquet file without the user's rows (temporary file + atomic rename, only when
    it holds some); returns how many went, or None when the file has no user column."""
    if USER_COLUMN not in pl.read_parquet_schema(path):
        return None
    rows = pl.scan_parquet(path)
    dropped = rows.filter(pl.col(USER_COLUMN) == user_id).select(pl.len()).collect().item()
    if dropped:
        fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            # ne_missing: rows without a user id are nobody's and stay
            rows.filter(pl.col(USER_COLUMN).ne_missing(user_id)).sink_parquet(partial)
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    return int(dropped)
