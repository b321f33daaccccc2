"""Load raw behaviour logs into the warehouse's canonical ``events`` table.

Formats:

- ``taobao``: Taobao UserBehavior, no header: ``user_id,item_id,category_id,behavior,timestamp``
  with Unix seconds and ``pv`` meaning ``view``.
- ``retailrocket``: RetailRocket ``events.csv`` (``timestamp`` in ms, ``visitorid``, ``event``
  in view/addtocart/transaction, ``itemid``). Categories come from ``item_properties`` files
  when given (the ``categoryid`` value in force at the event's time, else the item's earliest
  known one), otherwise ``-1``.
- ``csv`` / ``parquet``: any file with a header; ``--map canonical=source`` renames columns.

Rules:

- Rows are read by DuckDB in bounded memory (spilling under the home's ``tmp/``).
- A row that cannot be parsed or fails validation is kept in ``quarantine_events`` with the
  source file, its line (CSV: physical line number, header included; Parquet: 1-based row
  number), the raw text and a reason; ingest goes on.
- The natural key is (user_id, item_id, behavior, event_time): a row whose key is already in
  the warehouse, or repeats an earlier row of the same file, is counted as a duplicate and
  skipped. Re-ingesting a file therefore adds nothing; a newer file appends.
- Everything is staged in a separate in-memory database and written in ONE transaction, so a
  missing file, an unknown format, a wrong mapping or any failure leaves the warehouse as it
  was.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from recsys.home import Paths
from recsys.warehouse.connect import (
    BASE_TABLES_DDL,
    DEFAULT_LOCK_TIMEOUT_S,
    EVENT_KEY,
    retry_on_lock,
    table_exists,
)
from recsys.warehouse.schema import (
    BEHAVIOR_ALIASES,
    EVENT_COLUMNS,
    REQUIRED_COLUMNS,
    UNKNOWN_CATEGORY,
)

FORMATS = ("taobao", "retailrocket", "csv", "parquet")
# Events later than this after the ingest time are rejected as clock errors.
MAX_FUTURE = "interval 1 day"
MIN_EVENT_TIME = "timestamp '1995-01-01'"
# DuckDB spills past this; with Python around it, a 10M-row file stays under 2 GB of RAM.
STAGE_MEMORY_LIMIT = "1536MB"


class IngestError(Exception):
    """A problem with the ingest request itself (file, format, mapping): nothing was written."""


@dataclass(frozen=True)
class IngestReport:
    """What one ingest call did."""

    source: Path
    format: str
    rows_read: int
    loaded: int
    duplicates: int
    quarantined: int
    already_quarantined: int
    seconds: float

    def summary(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds > 0 else float("inf")
        lines = [
            f"[bold]ingested[/] {self.source.name} ({self.format}): {self.rows_read:,} rows read "
            f"in {self.seconds:.2f}s ({rate:,.0f} rows/s)",
            f"  loaded       {self.loaded:,}",
            f"  duplicates   {self.duplicates:,}",
            f"  quarantined  {self.quarantined:,}"
            + (
                f" (+{self.already_quarantined:,} already quarantined)"
                if self.already_quarantined
                else ""
            ),
        ]
        if self.rows_read and self.quarantined + self.already_quarantined > self.rows_read / 2:
            lines.append(
                "[yellow]warning:[/] most rows were rejected; is --format or --map right? "
                "See: select reason, count(*) from quarantine_events group by all"
            )
        return "\n".join(lines)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ``["user_id=uid", ...]`` into ``{"user_id": "uid"}``, rejecting unknown names."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        canonical, sep, source = pair.partition("=")
        canonical, source = canonical.strip(), source.strip()
        if not sep or not canonical or not source:
            raise IngestError(f"--map takes canonical=source, got {pair!r}")
        if canonical not in EVENT_COLUMNS:
            raise IngestError(
                f"--map: unknown canonical column {canonical!r}; "
                f"expected one of {', '.join(EVENT_COLUMNS)}"
            )
        mapping[canonical] = source
    return mapping


def ingest_file(
    paths: Paths,
    path: str | Path,
    *,
    fmt: str,
    mapping: dict[str, str] | None = None,
    item_properties: str | Path | Sequence[str | Path] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> IngestReport:
    """Load one event file into ``paths.warehouse``; see the module docstring for the rules.

    The warehouse is opened only for the final write, waiting up to ``lock_timeout_s`` for
    another process's lock (then ``WarehouseBusyError``)."""
    started = time.perf_counter()
    source = Path(path).expanduser().resolve()
    if fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not source.is_file():
        raise IngestError(f"no such file: {source}")
    props = _as_paths(item_properties)
    for prop in props:
        if not prop.is_file():
            raise IngestError(f"no such item_properties file: {prop}")
    if props and fmt != "retailrocket":
        raise IngestError("--item-properties applies to --format retailrocket only")
    if mapping and fmt in ("taobao", "retailrocket"):
        raise IngestError(f"--map applies to --format csv or parquet, not {fmt}")

    paths.ensure()
    spill = paths.home / "tmp"
    spill.mkdir(exist_ok=True)
    con = duckdb.connect(config={"memory_limit": STAGE_MEMORY_LIMIT, "temp_directory": str(spill)})
    # hashlib releases the GIL, so the file's digest is computed while DuckDB reads it.
    hashing = ThreadPoolExecutor(max_workers=1)
    digest = hashing.submit(_sha256, source)
    try:
        con.execute("set timezone = 'UTC'")
        # `checked` keeps the file's order, so a record's rowid there is its ordinal (DuckDB's
        # default, stated because line numbers depend on it)
        con.execute("set preserve_insertion_order = true")
        reader = _READERS[fmt]
        failed = _validate(con, reader(con, source, mapping or {}, props))
        counts = _commit(con, paths, source, digest.result(), fmt, failed, lock_timeout_s)
    except duckdb.Error as exc:
        raise IngestError(f"could not read {source.name} as {fmt}: {_first_line(exc)}") from exc
    finally:
        con.close()
        hashing.shutdown(cancel_futures=True)
    return IngestReport(source=source, format=fmt, seconds=time.perf_counter() - started, **counts)


# --- readers ---------------------------------------------------------------------------------
#
# Each reader creates temp view `source`: the records as read, in file order, so that checking
# streams from the file in one pass. It returns a Staging: SQL over `source` (aliased `s`) for
# each canonical column, and for a record's raw text (see `_concat`).


@dataclass(frozen=True)
class Staging:
    header_lines: int  # lines before the first record
    user_id: str
    item_id: str
    category_id: str
    behavior: str  # as written in the source; aliases are resolved when checking
    event_time: str  # a TIMESTAMP in UTC, NULL when unparseable
    session_id: str
    raw_time: str  # the source's time as text, quoted in the quarantine reason
    raw: str


def _read_taobao(con, source: Path, _mapping, _props) -> Staging:
    columns = {
        "user_id": "BIGINT",
        "item_id": "BIGINT",
        "category_id": "BIGINT",
        "behavior": "VARCHAR",
        "ts": "BIGINT",
    }
    _source_csv(con, source, columns=columns, header=False)
    return Staging(
        header_lines=0,
        user_id="s.user_id",
        item_id="s.item_id",
        category_id="s.category_id",
        behavior="s.behavior",
        event_time="to_timestamp(s.ts)::timestamp",
        session_id="null::varchar",
        raw_time="s.ts::varchar",
        raw=_concat(columns),
    )


def _read_retailrocket(con, source: Path, _mapping, props: list[Path]) -> Staging:
    columns = {
        "timestamp": "BIGINT",
        "visitorid": "BIGINT",
        "event": "VARCHAR",
        "itemid": "BIGINT",
        "transactionid": "VARCHAR",
    }
    _require_header(con, source, list(columns))
    _source_csv(
        con, source, columns=columns, header=True, name="source_events" if props else "source"
    )
    staging = Staging(
        header_lines=1,
        user_id="s.visitorid",
        item_id="s.itemid",
        category_id=f"{UNKNOWN_CATEGORY}::bigint",
        behavior="s.event",
        event_time="make_timestamp(s.timestamp * 1000)",
        session_id="null::varchar",
        raw_time="s.timestamp::varchar",
        raw=_concat(columns),
    )
    if not props:
        return staging
    files = ", ".join(_sql_str(p) for p in props)
    con.execute(
        f"""
        create temp table item_category as
        select itemid as item_id, make_timestamp(timestamp * 1000) as valid_from,
               try_cast(value as bigint) as category_id
        from read_csv([{files}], header=true, auto_detect=false,
                      columns={{'timestamp': 'BIGINT', 'itemid': 'BIGINT',
                                'property': 'VARCHAR', 'value': 'VARCHAR'}})
        where property = 'categoryid' and try_cast(value as bigint) is not null
        """
    )
    # The category in force at the event's time; before the first snapshot, the earliest.
    # The joins do not keep the file's order, so the events are first stored in it (a table's
    # rowid is its insertion order) and sorted back by rowid.
    con.execute("create temp table events_in_order as select * from source_events")
    con.execute(
        f"""
        create temp view source as
        select s.* exclude (ordinal),
               coalesce(c.category_id, f.category_id, {UNKNOWN_CATEGORY}) as resolved_category
        from (select *, rowid as ordinal from events_in_order) s
        asof left join item_category c
          on s.itemid = c.item_id and make_timestamp(s.timestamp * 1000) >= c.valid_from
        left join (select item_id, arg_min(category_id, valid_from) as category_id
                   from item_category group by all) f on s.itemid = f.item_id
        order by s.ordinal
        """
    )
    return replace(staging, category_id="s.resolved_category")


def _read_csv_mapped(con, source: Path, mapping: dict[str, str], _props) -> Staging:
    header = _header(source)
    select = _mapped_columns(header, mapping, source)
    # Typed ids let DuckDB's reader reject non-integers itself, with their line numbers.
    integer_sources = {select[c] for c in ("user_id", "item_id", "category_id") if c in select}
    columns = {name: "BIGINT" if name in integer_sources else "VARCHAR" for name in header}
    _source_csv(con, source, columns=columns, header=True)
    return _stage_mapped(con, select, header_lines=1, raw=_concat(columns))


def _read_parquet(con, source: Path, mapping: dict[str, str], _props) -> Staging:
    relation = f"read_parquet({_sql_str(source)})"
    header = [row[0] for row in con.execute(f"describe select * from {relation}").fetchall()]
    select = _mapped_columns(header, mapping, source)
    con.execute(f"create temp view source as select * from {relation}")
    return _stage_mapped(con, select, header_lines=0, raw=_concat(dict.fromkeys(header)))


_READERS = {
    "taobao": _read_taobao,
    "retailrocket": _read_retailrocket,
    "csv": _read_csv_mapped,
    "parquet": _read_parquet,
}


def _source_csv(
    con, source: Path, *, columns: dict[str, str], header: bool, name: str = "source"
) -> None:
    """View a CSV as temp view `name`; when scanned, rows DuckDB cannot parse go to
    temp table `csv_rejects`."""
    spec = ", ".join(f"{_sql_str(k)}: {_sql_str(v)}" for k, v in columns.items())
    con.execute(
        f"""
        create temp view {name} as
        select * from read_csv({_sql_str(source)}, header={str(header).lower()},
            auto_detect=false, delim=',', quote='"', escape='"', columns={{{spec}}},
            store_rejects=true, rejects_table='csv_rejects', rejects_scan='csv_scans')
        """
    )


def _stage_mapped(con, select: dict[str, str], *, header_lines: int, raw: str) -> Staging:
    """Stage a header-bearing source (CSV text or Parquet types) through a column mapping."""
    types = {row[0]: row[1] for row in con.execute("describe source").fetchall()}

    def col(name: str, cast: str) -> str:
        if name not in select:
            return f"null::{cast}"
        column = "s." + _ident(select[name])
        return column if types[select[name]] == cast.upper() else f"try_cast({column} as {cast})"

    time_column = "s." + _ident(select["event_time"])
    has_category = "category_id" in select
    return Staging(
        header_lines=header_lines,
        user_id=col("user_id", "bigint"),
        item_id=col("item_id", "bigint"),
        category_id=col("category_id", "bigint") if has_category else f"{UNKNOWN_CATEGORY}::bigint",
        behavior=col("behavior", "varchar"),
        event_time=_time_expr(time_column, types[select["event_time"]]),
        session_id=col("session_id", "varchar"),
        raw_time=f"{time_column}::varchar",
        raw=raw,
    )


# Zone-less ISO layouts, the common case: strptime parses them 3x faster than the zone-aware
# cast and, unlike a plain cast to TIMESTAMP, fails on an offset or zone name (rather than
# dropping it), so those still reach the zone-aware cast.
_NAIVE_ISO = (
    "['%Y-%m-%dT%H:%M:%S.%f', '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M:%S.%f', "
    "'%Y-%m-%d %H:%M:%S', '%Y-%m-%d']"
)


def _time_expr(column: str, duckdb_type: str) -> str:
    """SQL turning a source time column into a UTC TIMESTAMP (NULL when unparseable).

    Numbers are Unix seconds. Text is Unix seconds when numeric, else an ISO timestamp whose
    explicit offset or zone is honoured (a missing offset means UTC, the session time zone).
    """
    if duckdb_type.startswith(("TIMESTAMP", "DATE")):
        return f"{column}::timestamp"
    if duckdb_type in ("VARCHAR", "BLOB"):
        return (
            f"coalesce(try_strptime({column}, {_NAIVE_ISO}), "
            f"to_timestamp(try_cast({column} as double))::timestamp, "
            f"try_cast({column} as timestamptz)::timestamp)"
        )
    return f"to_timestamp({column}::double)::timestamp"


# While checking, the source's own columns are carried under this prefix (not packed into a
# struct, which costs 4x more), to rebuild the raw text of bad records.
_SRC = "src_"


def _concat(columns: dict[str, object]) -> str:
    """SQL rebuilding a record's raw text from the source columns carried while checking."""
    return "concat_ws(',', " + ", ".join(f"{_ident(_SRC + c)}::varchar" for c in columns) + ")"


# --- validation, de-duplication and the single write ---------------------------------------

_REASON = f"""
    case
      when user_id is null then 'user_id is missing or not an integer'
      when item_id is null then 'item_id is missing or not an integer'
      when category_id is null then 'category_id is missing or not an integer'
      when source_behavior is null then 'behavior is missing'
      when behavior is null then 'unknown behavior ''' || source_behavior || ''''
      when event_time is null then 'event_time is missing or unparseable: '
           || coalesce('''' || raw_time || '''', 'null')
      when event_time < {MIN_EVENT_TIME} then 'event_time before 1995: ' || event_time::varchar
      when event_time > now()::timestamp + {MAX_FUTURE}
           then 'event_time in the future: ' || event_time::varchar
    end
"""


def _validate(con, staging: Staging) -> int:
    """Check every record, reading the source once.

    Creates temp table `checked`: every record in file order (DuckDB keeps insertion order, so
    a record's rowid is its ordinal), with the hash of its natural key and, when invalid, a
    reason and its raw text (built for bad records only). Then temp table `raw_rejects` (line,
    raw, reason: records the reader itself could not parse), temp view `numbered` (`checked`
    with each record's physical line) and temp table `bad` (line, raw, reason) for the
    quarantine. Returns how many records failed the checks here, the reader's rejects not
    counted.
    """
    # The exact spelling first: the case-folding lookup runs only for the few rows it misses.
    aliases = (
        "MAP {"
        + ", ".join(f"{_sql_str(k)}: {_sql_str(v)}" for k, v in BEHAVIOR_ALIASES.items())
        + "}"
    )
    con.execute(
        f"""
        create temp table checked as
        with typed as (
            select {staging.user_id} as user_id, {staging.item_id} as item_id,
                   {staging.category_id} as category_id, {staging.behavior} as source_behavior,
                   {staging.event_time} as event_time, {staging.session_id} as session_id,
                   {staging.raw_time} as raw_time, columns('(.*)') as '{_SRC}\\1'
            from source s
        ),
        canonical as (
            select
                *,
                coalesce(
                    {aliases}[source_behavior], {aliases}[lower(trim(source_behavior))]
                ) as behavior
            from typed
        ),
        reasoned as (
            select *, {_REASON} as reason from canonical
        ),
        final as (
            select user_id, item_id, category_id, behavior, event_time, session_id,
                   {EVENT_KEY} as event_key, reason,
                   case when reason is not null then {staging.raw} end as raw
            from reasoned
        )
        select * from final
        """
    )
    if table_exists(con, "csv_rejects"):
        con.execute(
            """
            create temp table raw_rejects as
            select line, any_value(csv_line) as raw,
                   string_agg(distinct error_type || ': ' || error_message, '; ') as reason
            from csv_rejects group by line
            """
        )
    else:
        con.execute("create temp table raw_rejects (line bigint, raw varchar, reason varchar)")
    header = staging.header_lines
    if _scalar(con, "select count(*) from raw_rejects"):
        # The accepted record of 1-based rank a sits at line header + a + (rejected records
        # above it); the k-th rejected record (in line order) has line - header - k accepted
        # records above it.
        con.execute(
            f"""
            create temp table reject_gaps as
            select gap, max(k) as k from (
                select line - {header} - row_number() over (order by line) as gap,
                       row_number() over (order by line) as k
                from raw_rejects
            ) group by gap
            """
        )
        con.execute(
            f"""
            create temp view numbered as
            select c.*, {header} + c.ordinal + 1 + coalesce(g.k, 0) as line
            from (select rowid as ordinal, * from checked) c
            asof left join reject_gaps g on c.ordinal + 1 > g.gap
            """
        )
    else:
        con.execute(
            f"create temp view numbered as "
            f"select rowid as ordinal, *, {header} + rowid + 1 as line from checked"
        )
    con.execute(
        "create temp table bad as select line, raw, reason from numbered where reason is not null"
    )
    failed = _scalar(con, "select count(*) from bad")
    con.execute("insert into bad select line, raw, reason from raw_rejects")
    return failed


def _commit(
    con, paths: Paths, source: Path, digest: str, fmt: str, failed: int, lock_timeout_s: float
) -> dict[str, int]:
    """Attach the warehouse and write events, quarantine and the file record in one go."""
    rejected = _scalar(con, "select count(*) from raw_rejects")
    # Duplicates are found through a 64-bit hash of the natural key; rows whose hashes match
    # are then compared on the full key, so a hash collision never drops a distinct event.
    con.execute("create temp view staged as select * from numbered where reason is null")
    valid = _scalar(con, "select count(*) from staged")
    con.execute(
        """
        create temp table duplicate_ordinals as
        select ordinal from (
            select ordinal, row_number() over (
                partition by user_id, item_id, behavior, event_time order by ordinal
            ) as occurrence
            from staged
            where event_key in (select event_key from staged group by 1 having count(*) > 1)
        ) where occurrence > 1
        """
    )
    retry_on_lock(
        lambda: con.execute(f"attach {_sql_str(paths.warehouse)} as wh"),
        paths.warehouse,
        lock_timeout_s,
    )
    con.execute("use wh")
    con.execute("begin transaction")
    try:
        con.execute(BASE_TABLES_DDL)
        con.execute(
            """
            insert into temp.duplicate_ordinals
            select n.ordinal from temp.staged n join events e on e.event_key = n.event_key
            where e.user_id = n.user_id and e.item_id = n.item_id
              and e.behavior = n.behavior and e.event_time = n.event_time
            """
        )
        before = _scalar(con, "select count(*) from events")
        con.execute(
            """
            insert into events
            select n.user_id, n.item_id, n.category_id, n.behavior, n.event_time,
                   n.session_id, ?, n.line, now()::timestamp, n.event_key
            from temp.staged n anti join temp.duplicate_ordinals d on d.ordinal = n.ordinal
            """,
            [str(source)],
        )
        loaded = _scalar(con, "select count(*) from events") - before
        q_before = _scalar(con, "select count(*) from quarantine_events")
        con.execute(
            """
            insert into quarantine_events
            select ?, ?, b.line, b.raw, b.reason, now()::timestamp
            from temp.bad b
            anti join quarantine_events q on q.source_sha256 = ? and q.line = b.line
            """,
            [str(source), digest, digest],
        )
        quarantined = _scalar(con, "select count(*) from quarantine_events") - q_before
        counts = {
            "rows_read": valid + failed + rejected,
            "loaded": loaded,
            "duplicates": valid - loaded,
            "quarantined": quarantined,
            "already_quarantined": failed + rejected - quarantined,
        }
        con.execute(
            "insert into ingested_files values (?, ?, ?, ?, ?, ?, ?, now()::timestamp)",
            [str(source), digest, fmt, counts["rows_read"], loaded, valid - loaded, quarantined],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.execute("use memory")
        con.execute("detach wh")
    return counts


# --- helpers --------------------------------------------------------------------------------


def _header(source: Path) -> list[str]:
    with source.open(newline="", encoding="utf-8", errors="replace") as handle:
        first = next(csv.reader(handle), None)
    if not first:
        raise IngestError(f"{source.name} is empty; a header line is expected")
    return [name.strip() for name in first]


def _require_header(con, source: Path, expected: list[str]) -> None:
    found = _header(source)
    if found != expected:
        raise IngestError(
            f"{source.name} does not look like RetailRocket events.csv: header is "
            f"{','.join(found)}, expected {','.join(expected)}"
        )


def _mapped_columns(header: list[str], mapping: dict[str, str], source: Path) -> dict[str, str]:
    """canonical -> source column, checked against the file's header."""
    select: dict[str, str] = {}
    for canonical in EVENT_COLUMNS:
        name = mapping.get(canonical, canonical)
        if name in header:
            select[canonical] = name
        elif canonical in mapping:
            raise IngestError(
                f"--map {canonical}={name}: {source.name} has no column {name!r} "
                f"(columns: {', '.join(header)})"
            )
    missing = [c for c in REQUIRED_COLUMNS if c not in select and c != "category_id"]
    if missing:
        raise IngestError(
            f"{source.name} lacks required column(s) {', '.join(missing)} "
            f"(columns: {', '.join(header)}); map them with --map canonical=source"
        )
    return select


def _as_paths(value: str | Path | Sequence[str | Path] | None) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, str | Path) else list(value)
    return [Path(v).expanduser().resolve() for v in items]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scalar(con, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0])


def _sql_str(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


__all__ = ["FORMATS", "IngestError", "IngestReport", "ingest_file", "parse_mapping"]
