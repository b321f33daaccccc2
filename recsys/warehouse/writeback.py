"""Write-back of top-k recommendations into the warehouse, where analysts query them.

Tables in ``DIR/warehouse.duckdb``:

- ``recommendation_runs``: one row per run: run_id (1, 2, ... in write order), model_version,
  features_as_of, generated_at, status ('complete'), n_users, n_rows, rows per first source
  (n_repeat, n_transition, n_category, n_next_category, n_ann, n_popular), ranker (the policy
  that ranked, chosen on a validation window), validation (JSON: the figures of every policy
  on that window) and metrics (JSON of the run's evaluation metrics).
- ``recommendations``: one row per (run_id, user_id, rank): item_id, score (the ranker's),
  category_id, source (the first of ``sources``), sources (every source that proposed the item,
  ``recsys.warehouse.schema.SOURCES``), reason (short, for people), model_version,
  generated_at.
- ``latest_recommendations``: a view of the rows of the newest complete run.
- ``source_ids.recommendations``, ``source_ids.latest_recommendations``: the same, with every
  id as it was in the source (``recsys.warehouse.ids.create_source_id_views``).

A run is written in one transaction: its rows, its ``recommendation_runs`` row and the pruning
of runs beyond the newest ``retention`` commit together or not at all, so a crash mid-write
leaves the previous run intact and visible. Input is validated (and spooled to Parquet in a
temporary folder of the home) before the warehouse is opened.

Concurrency. DuckDB locks the database file per process (measured with duckdb 2.0.1 on Linux):
a read-write open fails while any other process has the file open, read-only or not; a
read-only open fails while another process has it open read-write; any number of processes may
hold it read-only together. A refused open raises ``duckdb.IOException`` ("Could not set lock on
file ... Conflicting lock is held in ... (PID n)") at once; it never waits. Hence nobody keeps
the warehouse open for long:

- writers (this module, and the service's event flushes) use :func:`open_for_write` for one short
  transaction and close the file; a lock conflict is retried with jittered backoff (as every
  ``recsys.warehouse.connect.connect`` does), then ``WarehouseBusyError`` names the holder. Spooling
  first means the lock is held only for the insert, never while a slow iterator of batches is
  being produced;
- analysts open the file read-only and close it when done: plain
  ``duckdb.connect(path, read_only=True)``, :func:`open_for_read` (same retry), or
  :func:`read_engine` for SQLAlchemy. SQLAlchemy's default ``QueuePool`` keeps the file open,
  and so locked against writers, after ``with engine.connect()`` ends; ``NullPool`` does not.

A reader holds the file alone with other readers, so it sees the state after the last commit
and never half a run. A plain ``duckdb.connect`` that lands inside a write gets the lock error
and should simply retry; a reader that stays open (a notebook) holds writers back until it
closes, and past ``lock_timeout_s`` they fail with the reader's PID in the message. Rejected
alternatives: a read-only snapshot file published by atomic rename (analysts would query a
stale copy, not ``warehouse.duckdb``, and each publish copies the marts) and an SQL endpoint in
the service (analysts lose plain DuckDB and SQLAlchemy).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import duckdb
import polars as pl
import pyarrow as pa

from recsys.home import Paths
from recsys.warehouse import connect as warehouse
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S, retry_on_lock
from recsys.warehouse.ids import create_source_id_views
from recsys.warehouse.schema import SOURCES

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


INPUT_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "rank": pl.Int32(),
    "item_id": pl.Int64(),
    "score": pl.Float64(),
    "category_id": pl.Int64(),
    "source": pl.String(),
    "sources": pl.List(pl.String()),
    "reason": pl.String(),
}


_SOURCE_LIST = ", ".join(f"'{source}'" for source in SOURCES)
# Rows per source (of ``source``, the item's first source) in each run.
_COUNT_COLUMNS = "\n".join(f"    n_{source} bigint not null," for source in SOURCES)

WRITEBACK_DDL = f"""
create table if not exists recommendation_runs (
    run_id bigint primary key,
    model_version varchar not null,
    features_as_of timestamp not null,
    generated_at timestamp not null,
    status varchar not null,
    n_users bigint not null,
    n_rows bigint not null,
{_COUNT_COLUMNS}
    ranker varchar not null,
    validation json not null,
    metrics json not null
);
create table if not exists recommendations (
    run_id bigint not null,
    user_id bigint not null,
    rank integer not null,
    item_id bigint not null,
    score double not null,
    category_id bigint not null,
    source varchar not null check (source in ({_SOURCE_LIST})),
    sources varchar[] not null,
    reason varchar not null,
    model_version varchar not null,
    generated_at timestamp not null
);
create or replace view latest_recommendations as
select * from recommendations
where run_id = (select max(run_id) from recommendation_runs where status = 'complete');
"""


Batch: TypeAlias = pl.DataFrame | pa.Table | pa.RecordBatch
_BATCH_TYPES = (pl.DataFrame, pa.Table, pa.RecordBatch)


class WritebackError(ValueError):
    """Bad recommendations or run settings, found before anything is written (one line)."""


@dataclass(frozen=True)
class RunInfo:
    """One row of ``recommendation_runs``; ``counts`` maps each source to its number of rows."""

    run_id: int
    model_version: str
    features_as_of: datetime
    generated_at: datetime
    n_users: int
    n_rows: int
    counts: dict[str, int]
    ranker: str
    validation: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class RunReport:
    """What :func:`write_run` committed: the new run and the run ids that retention pruned."""

    run: RunInfo
    pruned_run_ids: tuple[int, ...]


@contextmanager
def _opened(
    paths: Paths, *, read_only: bool, lock_timeout_s: float
) -> Iterator[duckdb.DuckDBPyConnection]:
    con = warehouse.connect(paths, read_only=read_only, lock_timeout_s=lock_timeout_s)
    try:
        yield con
    finally:
        con.close()


def open_for_write(
    paths: Paths, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """A read-write warehouse connection for one short piece of work, closed on exit."""
    return _opened(paths, read_only=False, lock_timeout_s=lock_timeout_s)


def open_for_read(
    paths: Paths, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """A read-only warehouse connection, closed on exit so that writers can get in."""
    return _opened(paths, read_only=True, lock_timeout_s=lock_timeout_s)


def read_engine(paths: Paths, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Engine:
    """A read-only SQLAlchemy engine on the warehouse that never keeps the file open between uses.

    ``NullPool`` closes the DuckDB connection when ``with engine.connect()`` ends; each new
    connection retries a lock conflict like :func:`open_for_read`.
    """
    from sqlalchemy import URL, create_engine, event
    from sqlalchemy.pool import NullPool

    # URL.create escapes the path (a home may hold '?', '#' or quotes)
    url = URL.create("duckdb", database=str(paths.warehouse))
    engine = create_engine(url, connect_args={"read_only": True}, poolclass=NullPool)

    @event.listens_for(engine, "do_connect")
    def _connect_with_retry(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        return retry_on_lock(
            lambda: dialect.connect(*cargs, **cparams), paths.warehouse, lock_timeout_s
        )

    return engine


def _accepts(target: pl.DataType, dtype: pl.DataType) -> bool:
    if isinstance(target, pl.List):
        return isinstance(dtype, pl.List) and _accepts(target.inner, dtype.inner)
    if target.is_integer():
        return dtype.is_integer()
    if target.is_float():
        return dtype.is_numeric()
    return isinstance(dtype, pl.String | pl.Categorical | pl.Enum)


def _canonical_batch(batch: object, index: int) -> pl.DataFrame:
    """One input batch with exactly the columns and types of :data:`INPUT_COLUMNS`."""
    if isinstance(batch, pa.Table | pa.RecordBatch):
        frame = pl.from_arrow(batch)
    elif isinstance(batch, pl.DataFrame):
        frame = batch
    else:
        raise WritebackError(
            f"batch {index}: expected a polars DataFrame or Arrow table, got {type(batch).__name__}"
        )
    assert isinstance(frame, pl.DataFrame)
    missing = [name for name in INPUT_COLUMNS if name not in frame.columns]
    unexpected = [name for name in frame.columns if name not in INPUT_COLUMNS]
    if missing or unexpected:
        raise WritebackError(
            f"batch {index}: columns must be {', '.join(INPUT_COLUMNS)}; "
            f"missing {missing}, unexpected {unexpected}"
        )
    columns = []
    for name, target in INPUT_COLUMNS.items():
        if not _accepts(target, frame.schema[name]):
            raise WritebackError(
                f"batch {index}: column {name} has type {frame.schema[name]}, expected {target}"
            )
        try:
            columns.append(frame[name].cast(target))
        except pl.exceptions.InvalidOperationError:
            raise WritebackError(
                f"batch {index}: column {name} has values that do not fit {target}"
            ) from None
    return pl.DataFrame(columns)


def _spool(recs: Batch | Iterable[Batch], folder: Path) -> None:
    """Write the input's batches as Parquet files into ``folder``; at least one row is required."""
    batches = [recs] if isinstance(recs, _BATCH_TYPES) else recs
    n_rows = 0
    for index, batch in enumerate(batches):
        frame = _canonical_batch(batch, index)
        frame.write_parquet(folder / f"part-{index:06d}.parquet")
        n_rows += frame.height
    if n_rows == 0:
        raise WritebackError("no recommendations to write: the input has no rows")


_VALUE_CHECKS: tuple[tuple[str, str], ...] = (
    *((f"{name} is null", f"have a null {name}") for name in INPUT_COLUMNS),
    (f"source not in ({_SOURCE_LIST})", f"have a source outside {_SOURCE_LIST}"),
    ("rank < 1", "have a rank below 1"),
    ("not isfinite(score)", "have a NaN or infinite score"),
    ("trim(reason) = ''", "have an empty reason"),
    ("len(sources) = 0 or sources[1] != source", "have sources that do not start with source"),
    (
        f"not list_has_all([{_SOURCE_LIST}], sources)",
        f"have sources outside {_SOURCE_LIST}",
    ),
)


def _validated_counts(glob: str) -> tuple[int, int, dict[str, int]]:
    """Check the spooled rows' values; return (n_rows, n_users, rows per source)."""
    with duckdb.connect() as con:
        spool = {"glob": glob}
        for condition, problem in _VALUE_CHECKS:
            bad = con.execute(
                "select count(*) over (), user_id, rank from read_parquet($glob) "
                f"where {condition} limit 1",
                spool,
            ).fetchone()
            if bad:
                raise WritebackError(
                    f"{bad[0]} rows {problem}, e.g. user_id {bad[1]} rank {bad[2]}"
                )
        dup = con.execute(
            "select user_id, rank, count(*) from read_parquet($glob) "
            "group by all having count(*) > 1 limit 1",
            spool,
        ).fetchone()
        if dup:
            raise WritebackError(
                f"(user_id, rank) must be unique: user_id {dup[0]} rank {dup[1]} "
                f"appears {dup[2]} times"
            )
        totals = ", ".join(f"count(*) filter (where source = '{source}')" for source in SOURCES)
        row = con.execute(
            f"select count(*), count(distinct user_id), {totals} from read_parquet($glob)", spool
        ).fetchone()
    assert row is not None
    return row[0], row[1], dict(zip(SOURCES, row[2:], strict=True))


def _metrics_json(metrics: dict[str, Any]) -> str:
    def numpy_scalar(value: Any) -> Any:
        if hasattr(value, "item"):
            return value.item()
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

    if not isinstance(metrics, dict):
        raise WritebackError(f"metrics must be a dict, got {type(metrics).__name__}")
    try:
        return json.dumps(metrics, sort_keys=True, allow_nan=False, default=numpy_scalar)
    except (TypeError, ValueError) as exc:
        raise WritebackError(f"metrics must be JSON with finite numbers: {exc}") from None


def _naive_utc(moment: datetime) -> datetime:
    if not isinstance(moment, datetime):
        raise WritebackError(f"features_as_of must be a datetime, got {type(moment).__name__}")
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _upgrade(con: duckdb.DuckDBPyConnection) -> None:
    """Bring run tables written before every source was kept (no ``sources`` column, a check
    constraint on the old three sources) to the current layout, rows included."""
    if not warehouse.table_exists(con, "recommendations"):
        return
    columns = {row[0] for row in con.execute("describe recommendations").fetchall()}
    if "sources" in columns:
        return
    con.begin()
    try:
        con.execute("drop view if exists latest_recommendations")
        con.execute("alter table recommendations rename to recommendations_old")
        con.execute("alter table recommendation_runs rename to recommendation_runs_old")
        con.execute(WRITEBACK_DDL)
        con.execute(
            "insert into recommendations select run_id, user_id, rank, item_id, score, "
            "category_id, source, [source], reason, model_version, generated_at "
            "from recommendations_old"
        )
        counts = ", ".join(f"n_{s}" if s in ("repeat", "ann", "popular") else "0" for s in SOURCES)
        con.execute(
            "insert into recommendation_runs select run_id, model_version, features_as_of, "
            f"generated_at, status, n_users, n_rows, {counts}, 'unknown', '{{}}', metrics "
            "from recommendation_runs_old"
        )
        con.execute("drop table recommendations_old")
        con.execute("drop table recommendation_runs_old")
        con.commit()
    except BaseException:
        con.rollback()
        raise


def prune_runs(con: duckdb.DuckDBPyConnection, keep: int) -> tuple[int, ...]:
    """Delete all but the newest ``keep`` complete runs; return the deleted run ids, ascending.

    Call it inside the caller's transaction so that a run and its rows go together.
    """
    if keep < 1:
        raise WritebackError(f"retention must keep at least 1 run, got {keep}")
    doomed = [
        run_id
        for (run_id,) in con.execute(
            "select run_id from recommendation_runs where status = 'complete' "
            "order by run_id desc offset ?",
            [keep],
        ).fetchall()
    ]
    for table in ("recommendation_runs", "recommendations"):
        con.execute(f"delete from {table} where list_contains(?::bigint[], run_id)", [doomed])
    return tuple(sorted(doomed))


def write_run(
    paths: Paths,
    recs: Batch | Iterable[Batch],
    *,
    model_version: str,
    features_as_of: datetime,
    metrics: dict[str, Any],
    ranker: str = "unknown",
    validation: dict[str, Any] | None = None,
    retention: int = 5,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> RunReport:
    """Validate ``recs`` and commit them as the newest complete run, in one transaction.

    ``recs``: a polars DataFrame or Arrow table, or an iterable of them, with columns
    user_id, rank, item_id, score, category_id, source, sources, reason (one row per user and
    rank). ``ranker`` names the policy that ranked them and ``validation`` holds the figures it
    was chosen on (``recsys.ranking.select``).
    Runs beyond the newest ``retention`` complete ones are pruned in the same transaction.
    """
    if retention < 1:
        raise WritebackError(f"retention must keep at least 1 run, got {retention}")
    if not isinstance(model_version, str) or not model_version.strip():
        raise WritebackError(f"model_version must be a non-empty string, got {model_version!r}")
    as_of = _naive_utc(features_as_of)
    metrics_json = _metrics_json(metrics)
    validation_json = _metrics_json(validation or {})
    with tempfile.TemporaryDirectory(dir=paths.ensure().home, prefix=".writeback-") as spool:
        _spool(recs, Path(spool))
        glob = str(Path(spool) / "*.parquet")
        n_rows, n_users, counts = _validated_counts(glob)
        generated_at = datetime.now(UTC).replace(tzinfo=None)
        with open_for_write(paths, lock_timeout_s=lock_timeout_s) as con:
            _upgrade(con)
            con.execute(WRITEBACK_DDL)
            con.begin()
            try:
                (run_id,) = con.execute(  # type: ignore[misc]
                    "select coalesce(max(run_id), 0) + 1 from recommendation_runs"
                ).fetchone()
                con.execute(
                    "insert into recommendations select $run_id, user_id, rank, item_id, score, "
                    "category_id, source, sources, reason, $model_version, $generated_at "
                    "from read_parquet($glob) order by user_id, rank",
                    {
                        "run_id": run_id,
                        "model_version": model_version,
                        "generated_at": generated_at,
                        "glob": glob,
                    },
                )
                con.execute(
                    "insert into recommendation_runs values "
                    f"(?, ?, ?, ?, 'complete', ?, ?, {', '.join('?' for _ in SOURCES)}, ?, ?, ?)",
                    [run_id, model_version, as_of, generated_at, n_users, n_rows]
                    + [counts[source] for source in SOURCES]
                    + [ranker, validation_json, metrics_json],
                )
                pruned = prune_runs(con, retention)
                create_source_id_views(con)
                con.commit()
            except BaseException:
                con.rollback()
                raise
    run = RunInfo(
        run_id=run_id,
        model_version=model_version,
        features_as_of=as_of,
        generated_at=generated_at,
        n_users=n_users,
        n_rows=n_rows,
        counts=counts,
        ranker=ranker,
        validation=json.loads(validation_json),
        metrics=json.loads(metrics_json),
    )
    return RunReport(run=run, pruned_run_ids=pruned)


def latest_run(paths: Paths, *, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> RunInfo | None:
    """The newest complete run, or None when the warehouse holds none."""
    if not paths.warehouse.exists():
        return None
    with open_for_read(paths, lock_timeout_s=lock_timeout_s) as con:
        if not warehouse.table_exists(con, "recommendation_runs"):
            return None
        row = con.execute(
            "select run_id, model_version, features_as_of, generated_at, n_users, n_rows, "
            f"{', '.join(f'n_{source}' for source in SOURCES)}, ranker, validation, metrics "
            "from recommendation_runs where status = 'complete' order by run_id desc limit 1"
        ).fetchone()
    if row is None:
        return None
    return RunInfo(
        run_id=row[0],
        model_version=row[1],
        features_as_of=row[2],
        generated_at=row[3],
        n_users=row[4],
        n_rows=row[5],
        counts=dict(zip(SOURCES, row[6 : 6 + len(SOURCES)], strict=True)),
        ranker=row[-3],
        validation=json.loads(row[-2]),
        metrics=json.loads(row[-1]),
    )
