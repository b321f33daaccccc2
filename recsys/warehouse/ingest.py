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
- Ids: an id that reads as an integer from -1 to 2^52 - 1 is its own key; any other id (a SKU
  code, a UUID, a name) is a string id, keyed through ``dim_users``, ``dim_items`` or
  ``dim_categories`` (``recsys.warehouse.ids``): the keys of new ids are allocated in the
  transaction that writes the events, and an id seen before keeps its key.
- A row that cannot be parsed or fails validation is kept in ``quarantine_events`` with the
  source file, its line (CSV: physical line number, header included; Parquet: 1-based row
  number), the raw text and a reason; ingest goes on.
- The natural key is (user_id, item_id, behavior, event_time): a row whose key is already in
  the warehouse, or repeats an earlier row of the same file, is counted as a duplicate and
  skipped. Re-ingesting a file therefore adds nothing; a newer file appends.
- Rows of forgotten users (``forgotten_users``, ``recsys forget``) are skipped and counted as
  ``forgotten``; a bad row whose raw text mentions one is not quarantined either.
- Everything is staged in a separate in-memory database and written in ONE transaction, so a
  missing file, an unknown format, a wrong mapping or any failure leaves the warehouse as it
  was.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from recsys.home import Paths
from recsys.warehouse.connect import (
    BASE_TABLES_DDL,
    DEFAULT_LOCK_TIMEOUT_S,
    EVENT_KEY,
    FORGOTTEN_SOURCE,
    FORGOTTEN_USER,
    mentions_forgotten,
    retry_on_lock,
    table_exists,
)
from recsys.warehouse.ids import (
    DIMS,
    INTEGER_ID,
    KEY_BASE,
    MAX_ID_LENGTH,
    allocate_sql,
    create_source_id_views,
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
    forgotten: int = 0

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
        if self.forgotten:
            lines.append(f"  forgotten    {self.forgotten:,} (rows of forgotten users, skipped)")
        if self.rows_read and self.quarantined + self.already_quarantined > self.rows_read / 2:
            lines.append(
                "[yellow]warning:[/] most rows were rejected; is --format or --map right? "
                "See: select reason, count(*) from quarantine_events group by all"
            )
        return "\n".join(lines)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ``["user_id=uid", ...]`` (``--map`` values) into ``{"user_id": "uid"}``, checked by
    ``check_mapping``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        canonical, sep, source = pair.partition("=")
        canonical, source = canonical.strip(), source.strip()
        if not sep or not canonical or not source:
            raise IngestError(f"--map takes canonical=source, got {pair!r}")
        mapping[canonical] = source
    return check_mapping(mapping, where="--map")


def check_mapping(mapping: Mapping[str, object], *, where: str) -> dict[str, str]:
    """``mapping`` (canonical -> source column) if every canonical name is known and every
    source a non-empty column name; else an ``IngestError`` whose message starts with ``where``
    (the option or config table the mapping came from)."""
    for canonical, source in mapping.items():
        if canonical not in EVENT_COLUMNS:
            raise IngestError(
                f"{where}: unknown canonical column {canonical!r}; "
                f"expected one of {', '.join(EVENT_COLUMNS)}"
            )
        if not isinstance(source, str) or not source.strip():
            raise IngestError(f"{where}: {canonical} must name a source column, got {source!r}")
    return {canonical: str(source).strip() for canonical, source in mapping.items()}


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
# each canonical column, and for a record's raw text (see `_concat`). CSV columns are read as
# text (DuckDB's reader would round an id of 1.7 to 2); checking converts them exactly.


@dataclass(frozen=True)
class Column:
    """SQL for a source value, and its DuckDB type."""

    sql: str
    type: str = "VARCHAR"


@dataclass(frozen=True)
class Staging:
    header_lines: int  # lines before the first record
    user_id: Column  # ids as in the source; checking makes them keys or string ids
    item_id: Column
    category_id: Column
    behavior: str  # as written in the source; aliases are resolved when checking
    parsed_time: str  # a TIMESTAMP in UTC from a non-numeric time, else NULL
    epoch_us: str  # a numeric time as microseconds since 1970 (DOUBLE), else NULL
    session_id: str
    raw_time: str  # the source's time as text, quoted in the quarantine reason
    raw: str


def _read_taobao(con, source: Path, _mapping, _props) -> Staging:
    columns = ("user_id", "item_id", "category_id", "behavior", "ts")
    _source_csv(con, source, columns=columns, header=False)
    return Staging(
        header_lines=0,
        user_id=Column("s.user_id"),
        item_id=Column("s.item_id"),
        category_id=Column("s.category_id"),
        behavior="s.behavior",
        parsed_time="null::timestamp",
        epoch_us="try_cast(s.ts as double) * 1e6",
        session_id="null::varchar",
        raw_time="s.ts",
        raw=_concat(columns),
    )


def _read_retailrocket(con, source: Path, _mapping, props: list[Path]) -> Staging:
    columns = ("timestamp", "visitorid", "event", "itemid", "transactionid")
    _require_header(con, source, list(columns))
    _source_csv(
        con, source, columns=columns, header=True, name="source_events" if props else "source"
    )
    epoch_us = "try_cast({}timestamp as double) * 1e3"
    staging = Staging(
        header_lines=1,
        user_id=Column("s.visitorid"),
        item_id=Column("s.itemid"),
        category_id=Column(str(UNKNOWN_CATEGORY), "BIGINT"),
        behavior="s.event",
        parsed_time="null::timestamp",
        epoch_us=epoch_us.format("s."),
        session_id="null::varchar",
        raw_time="s.timestamp",
        raw=_concat(columns),
    )
    if not props:
        return staging
    # Snapshot rows whose item, time or category is unusable are skipped: they name no
    # category an event could be given. Items match by their integer (`42.0` is `42`) or,
    # for string ids, their text; categories are ids like any other (checked with the events).
    item_key = f"coalesce({_integer(Column('itemid'))}::varchar, itemid)"
    con.execute(
        f"""
        create temp table item_category as
        select * from (
            select {item_key} as item_id,
                   {_from_epoch_us(epoch_us.format(""))} as valid_from,
                   nullif(value, '') as category_id
            from read_csv(?, header=true, auto_detect=false,
                          columns={{'timestamp': 'VARCHAR', 'itemid': 'VARCHAR',
                                    'property': 'VARCHAR', 'value': 'VARCHAR'}})
            where property = 'categoryid'
        ) where item_id is not null and valid_from is not null and category_id is not null
        """,
        [[str(p) for p in props]],
    )
    # The category in force at the event's time; before the first snapshot, the earliest.
    # The joins do not keep the file's order, so the events are first stored in it (a table's
    # rowid is its insertion order) and sorted back by rowid.
    con.execute("create temp table events_in_order as select * from source_events")
    con.execute(
        f"""
        create temp view source as
        select s.* exclude (ordinal, item_key, event_at),
               coalesce(c.category_id, f.category_id, '{UNKNOWN_CATEGORY}') as resolved_category
        from (
            select *, rowid as ordinal, {item_key} as item_key,
                   {_from_epoch_us(epoch_us.format(""))} as event_at
            from events_in_order
        ) s
        asof left join item_category c on s.item_key = c.item_id and s.event_at >= c.valid_from
        left join (select item_id, arg_min(category_id, valid_from) as category_id
                   from item_category group by all) f on s.item_key = f.item_id
        order by s.ordinal
        """
    )
    return replace(staging, category_id=Column("s.resolved_category"))


def _read_csv_mapped(con, source: Path, mapping: dict[str, str], _props) -> Staging:
    header = _header(source)
    select = _mapped_columns(header, mapping, source)
    _source_csv(con, source, columns=header, header=True)
    return _stage_mapped(con, select, header_lines=1, raw=_concat(header))


def _read_parquet(con, source: Path, mapping: dict[str, str], _props) -> Staging:
    relation = con.read_parquet(str(source))
    select = _mapped_columns(relation.columns, mapping, source)
    relation.create_view("source")
    return _stage_mapped(con, select, header_lines=0, raw=_concat(relation.columns))


_READERS = {
    "taobao": _read_taobao,
    "retailrocket": _read_retailrocket,
    "csv": _read_csv_mapped,
    "parquet": _read_parquet,
}


def _source_csv(
    con, source: Path, *, columns: Sequence[str], header: bool, name: str = "source"
) -> None:
    """View a CSV's columns, as text, as temp view `name`; when scanned, rows DuckDB cannot
    parse go to temp table `csv_rejects`."""
    relation = con.read_csv(
        str(source),
        header=header,
        auto_detect=False,
        sep=",",
        quotechar='"',
        escapechar='"',
        columns=dict.fromkeys(columns, "VARCHAR"),
        store_rejects=True,
        rejects_table="csv_rejects",
        rejects_scan="csv_scans",
    )
    relation.create_view(name)


def _stage_mapped(con, select: dict[str, str], *, header_lines: int, raw: str) -> Staging:
    """Stage a header-bearing source (CSV text or Parquet types) through a column mapping."""
    types = {row[0]: row[1] for row in con.execute("describe source").fetchall()}

    def column(name: str, cast: str) -> Column:
        if name not in select:
            return Column(f"null::{cast}", cast.upper())
        return Column("s." + _ident(select[name]), types[select[name]])

    def text(name: str) -> str:
        value = column(name, "varchar")
        return value.sql if value.type == "VARCHAR" else f"try_cast({value.sql} as varchar)"

    time = column("event_time", "varchar")
    has_category = "category_id" in select
    return Staging(
        header_lines=header_lines,
        user_id=column("user_id", "bigint"),
        item_id=column("item_id", "bigint"),
        category_id=column("category_id", "bigint")
        if has_category
        else Column(str(UNKNOWN_CATEGORY), "BIGINT"),
        behavior=text("behavior"),
        parsed_time=_parsed_time(time),
        epoch_us=_epoch_us(time),
        session_id=text("session_id"),
        raw_time=f"{time.sql}::varchar",
        raw=raw,
    )


# Zone-less ISO layouts, the common case: strptime parses them 3x faster than the zone-aware
# cast and, unlike a plain cast to TIMESTAMP, fails on an offset or zone name (rather than
# dropping it), so those still reach the zone-aware cast.
_NAIVE_ISO = (
    "['%Y-%m-%dT%H:%M:%S.%f', '%Y-%m-%dT%H:%M:%S', '%Y-%m-%d %H:%M:%S.%f', "
    "'%Y-%m-%d %H:%M:%S', '%Y-%m-%d']"
)
_TEXT_TYPES = ("VARCHAR",)
_INTEGER_TYPES = (
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
)  # fmt: skip
_FRACTIONAL_TYPES = ("FLOAT", "DOUBLE", "DECIMAL")
# Microseconds of 0001-01-01 and of 9999-12-31 23:59:59.999999: the times a source may state;
# beyond them DuckDB's conversions raise for the whole file instead of failing one row.
_MIN_US = -62_135_596_800_000_000
_MAX_US = 253_402_300_799_999_999


def _parsed_time(time: Column) -> str:
    """SQL: a non-numeric source time as a UTC TIMESTAMP (NULL when numeric or unparseable).

    Text is an ISO timestamp whose explicit offset or zone is honoured (a missing offset means
    UTC, the session time zone); numeric text is left to ``_epoch_us``, so that ``inf`` is not
    read as the infinite timestamp."""
    if time.type.startswith(("TIMESTAMP", "DATE")):
        return f"{time.sql}::timestamp"
    if time.type in _TEXT_TYPES:
        return (
            f"case when try_cast({time.sql} as double) is null then coalesce("
            f"try_strptime({time.sql}, {_NAIVE_ISO}), "
            f"try_cast({time.sql} as timestamptz)::timestamp) end"
        )
    return "null::timestamp"


def _epoch_us(time: Column) -> str:
    """SQL: a numeric source time (numbers, and text that is a number: Unix seconds) in
    microseconds as a DOUBLE, which may be out of range or not finite; else NULL."""
    if time.type in _TEXT_TYPES:
        return f"try_cast({time.sql} as double) * 1e6"
    if time.type.startswith(_INTEGER_TYPES + _FRACTIONAL_TYPES):
        return f"{time.sql}::double * 1e6"
    return "null::double"


def _from_epoch_us(us: str) -> str:
    """SQL: microseconds since 1970 (a DOUBLE) as a TIMESTAMP, NULL when out of range."""
    return (
        f"case when {us} between {_MIN_US} and {_MAX_US} "
        f"then make_timestamp(round({us})::bigint) end"
    )


def _integer_id(value: Column) -> str:
    """SQL: the id as an integer when it is written as ``INTEGER_ID`` or held by a numeric
    column (a float only when whole); else NULL."""
    if value.type in _TEXT_TYPES:
        return (
            f"case when regexp_matches({value.sql}, '{INTEGER_ID}') "
            f"then try_cast({value.sql} as bigint) end"
        )
    if value.type.startswith(_INTEGER_TYPES + _FRACTIONAL_TYPES):
        return _integer(value)
    return "null::bigint"


def _own_key(integer: str) -> str:
    """SQL condition: the integer id ``integer`` is its own key (``recsys.warehouse.ids``)."""
    return f"{integer} between -1 and {KEY_BASE - 1}"


def _string_id(value: Column, integer: str) -> str:
    """SQL: the id as a string id, exactly as written, when it is not its own key (its integer:
    ``integer``); NULL when blank, or a float (a fractional id is a data error, not a code)."""
    if value.type.startswith(_FRACTIONAL_TYPES):
        return "null::varchar"
    text = f"{value.sql}::varchar"
    # ascii() reads one byte: only the rare id that starts with a space or a control character
    # pays for the blank check
    return (
        f"case when coalesce({_own_key(integer)}, false) or {text} = '' then null "
        f"when ascii({text}) > 32 or not regexp_matches({text}, '^\\s*$') then {text} end"
    )


def _integer(value: Column) -> str:
    """SQL: the value as an exact BIGINT; NULL unless it is an integer within BIGINT's range.

    DuckDB's own casts round 1.7 to 2 and read text such as ``1e3``, ``0x10`` or ``1_000``;
    here text must be decimal digits (with a sign, spaces around, and zeros after a point, as
    tools write integers stored as floats) and a number must be whole."""
    if value.type in _TEXT_TYPES:
        digits = r"'^\s*[+-]?[0-9]+(\.0*)?\s*$'"
        return (
            f"case when regexp_matches({value.sql}, {digits}) "
            f"then try_cast({value.sql} as bigint) end"
        )
    if value.type.startswith(_INTEGER_TYPES):
        return f"try_cast({value.sql} as bigint)"
    if value.type.startswith(_FRACTIONAL_TYPES):
        return (
            f"case when {value.sql} = trunc({value.sql}) then try_cast({value.sql} as bigint) end"
        )
    return "null::bigint"


# While checking, the source's own columns are carried under this prefix (not packed into a
# struct, which costs 4x more), to rebuild the raw text of bad records.
_SRC = "src_"


def _concat(columns: Iterable[str]) -> str:
    """SQL rebuilding a record's raw text from the source columns carried while checking."""
    return "concat_ws(',', " + ", ".join(f"{_ident(_SRC + c)}::varchar" for c in columns) + ")"


# --- validation, de-duplication and the single write ---------------------------------------


def _id_reason(name: str) -> str:
    """Reason clauses for an id that is neither its own key nor a string id (its source value:
    `{name}_src`), or too long."""
    text = f"{name}_src::varchar"
    return (
        f"when {name} is null and {name}_sid is null and coalesce(trim({text}), '') = '' "
        f"then '{name} is missing' "
        f"when {name} is null and {name}_sid is null "
        f"then '{name} is a float, not an exact integer id: ''' || {text} || '''' "
        f"when length({name}_sid) > {MAX_ID_LENGTH} "
        f"then '{name} is longer than {MAX_ID_LENGTH} characters' "
    )


_REASON = f"""
    case
      {_id_reason("user_id")}
      {_id_reason("item_id")}
      {_id_reason("category_id")}
      when source_behavior is null then 'behavior is missing'
      when behavior is null then 'unknown behavior ''' || source_behavior || ''''
      when event_time is null and not isfinite(epoch_us)
           then 'event_time is not a finite number: ''' || raw_time || ''''
      when event_time is null and epoch_us is not null
           then 'event_time out of range: ''' || raw_time || ''''
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
    a record's rowid is its ordinal): its own keys or string ids (``{name}_sid``), the hash
    of its natural key in source ids (``source_key``) and, when invalid, a
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
    ids = {name: replace(getattr(staging, name), sql=f"{name}_src") for name in DIMS}
    integers = ", ".join(f"{_integer_id(value)} as {name}_int" for name, value in ids.items())
    keys = ", ".join(
        f"case when {_own_key(f'{name}_int')} then {name}_int end as {name}, "
        f"{_string_id(value, f'{name}_int')} as {name}_sid"
        for name, value in ids.items()
    )
    con.execute(
        f"""
        create temp table checked as
        with sourced as (
            select {staging.user_id.sql} as user_id_src, {staging.item_id.sql} as item_id_src,
                   {staging.category_id.sql} as category_id_src,
                   {staging.behavior} as source_behavior, {staging.parsed_time} as parsed_time,
                   {staging.epoch_us} as epoch_us, {staging.session_id} as session_id,
                   {staging.raw_time} as raw_time, columns('(.*)') as '{_SRC}\\1'
            from source s
        ),
        typed as (
            select *, {integers},
                   coalesce(parsed_time, {_from_epoch_us("epoch_us")}) as event_time
            from sourced
        ),
        canonical as (
            select
                *, {keys},
                coalesce(
                    {aliases}[source_behavior], {aliases}[lower(trim(source_behavior))]
                ) as behavior
            from typed
        ),
        reasoned as (
            select *, {_REASON} as reason from canonical
        ),
        final as (
            select user_id, user_id_sid, item_id, item_id_sid, category_id, category_id_sid,
                   behavior, event_time, session_id,
                   hash(user_id, user_id_sid, item_id, item_id_sid, behavior, event_time)
                       as source_key,
                   reason,
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
                   string_agg(error_type || ': ' || error_message, '; ' order by column_idx)
                       as reason
            from (
                -- DuckDB files a short (long) record once per missing (extra) column,
                -- counting up: the record's own count is in the first missing, or the last
                -- extra, one.
                select * from csv_rejects
                qualify row_number() over (
                    partition by line, error_type,
                        case when error_type in ('MISSING COLUMNS', 'TOO MANY COLUMNS')
                             then -1 else column_idx end
                    order by case when error_type = 'TOO MANY COLUMNS'
                                  then -column_idx::bigint else column_idx end
                ) = 1
            )
            group by line
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
    # Within the file the key is in source ids (one source id is one key).
    con.execute("create temp view staged as select * from numbered where reason is null")
    valid = _scalar(con, "select count(*) from staged")
    con.execute(
        """
        create temp table duplicate_ordinals as
        select ordinal from (
            select ordinal, row_number() over (
                partition by user_id, user_id_sid, item_id, item_id_sid, behavior, event_time
                order by ordinal
            ) as occurrence
            from staged
            where source_key in (select source_key from staged group by 1 having count(*) > 1)
        ) where occurrence > 1
        """
    )
    string_ids = [
        name
        for name in DIMS
        if _scalar(con, f"select exists (select 1 from staged where {name}_sid is not null)")
    ]
    retry_on_lock(
        lambda: con.execute("attach ? as wh", [str(paths.warehouse)]),
        paths.warehouse,
        lock_timeout_s,
    )
    con.execute("use wh")
    con.execute("begin transaction")
    try:
        con.execute(BASE_TABLES_DDL)
        _resolve(con, source, string_ids)
        create_source_id_views(con)
        con.execute(
            """
            insert into temp.duplicate_ordinals
            select n.ordinal from temp.resolved n join events e on e.event_key = n.event_key
            where e.user_id = n.user_id and e.item_id = n.item_id
              and e.behavior = n.behavior and e.event_time = n.event_time
            """
        )
        # Forgotten users stay forgotten: their rows are not loaded, and bad rows that mention
        # one are not quarantined with their raw text.
        forgotten_valid = _scalar(
            con,
            f"select count(*) from temp.staged where {FORGOTTEN_USER} or {FORGOTTEN_SOURCE}",
        )
        con.execute(
            f"""
            create temp table forgotten_lines as
            select distinct line from temp.bad where {mentions_forgotten("raw")}
            """
        )
        forgotten_bad = _scalar(con, "select count(*) from temp.forgotten_lines")
        before = _scalar(con, "select count(*) from events")
        con.execute(
            f"""
            insert into events
            select n.user_id, n.item_id, n.category_id, n.behavior, n.event_time,
                   n.session_id, ?, n.line, now()::timestamp, n.event_key
            from temp.resolved n anti join temp.duplicate_ordinals d on d.ordinal = n.ordinal
            where not {FORGOTTEN_USER}
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
            anti join temp.forgotten_lines f on f.line = b.line
            """,
            [str(source), digest, digest],
        )
        quarantined = _scalar(con, "select count(*) from quarantine_events") - q_before
        duplicates = valid - forgotten_valid - loaded
        counts = {
            "rows_read": valid + failed + rejected,
            "loaded": loaded,
            "duplicates": duplicates,
            "quarantined": quarantined,
            "already_quarantined": failed + rejected - forgotten_bad - quarantined,
            "forgotten": forgotten_valid + forgotten_bad,
        }
        con.execute(
            "insert into ingested_files values (?, ?, ?, ?, ?, ?, ?, now()::timestamp)",
            [str(source), digest, fmt, counts["rows_read"], loaded, duplicates, quarantined],
        )
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise
    finally:
        con.execute("use memory")
        con.execute("detach wh")
    return counts


def _resolve(con, source: Path, string_ids: list[str]) -> None:
    """Inside the warehouse's transaction: give the new string ids of the columns
    ``string_ids`` their keys (in file order), then create temp view `resolved`: `staged` with
    every id a key, and ``event_key``; rows of forgotten string users are left out (their ids
    get no key). Only the columns with string ids join their keys: integer sources pay nothing
    for the dims. A view, not a table: copying every row once more costs more than its two
    reads (the duplicate check and the insert)."""
    joins, keyed = [], []
    for name in string_ids:
        forgotten = f"and not {FORGOTTEN_SOURCE}" if name == "user_id" else ""
        con.execute(
            f"""
            create or replace temp table new_ids as
            select {name}_sid as source_id, min(ordinal) as first
            from temp.staged where {name}_sid is not null {forgotten} group by 1
            """
        )
        con.execute(allocate_sql(DIMS[name]), [str(source)])
        con.execute(
            f"""
            create temp table keys_{name} as
            select d.key, d.source_id from {DIMS[name]} d
            semi join temp.new_ids n on n.source_id = d.source_id
            """
        )
        joins.append(f"left join temp.keys_{name} k_{name} on k_{name}.source_id = s.{name}_sid")
        keyed.append(f"coalesce(s.{name}, k_{name}.key) as {name}")
    kept = (
        f"where s.user_id_sid is null or not {FORGOTTEN_SOURCE}" if "user_id" in string_ids else ""
    )
    replaced = f" replace ({', '.join(keyed)})" if keyed else ""
    con.execute(
        f"""
        create temp view resolved as
        select *, {EVENT_KEY} as event_key
        from (select s.*{replaced} from temp.staged s {" ".join(joins)} {kept})
        """
    )


# --- helpers --------------------------------------------------------------------------------


def _header(source: Path) -> list[str]:
    with source.open(newline="", encoding="utf-8", errors="replace") as handle:
        try:
            first = next(csv.reader(handle), None)
        except csv.Error as exc:
            raise IngestError(
                f"{source.name}: cannot read its header line ({exc}); is it a CSV with a header?"
            ) from None
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
            f"(columns: {', '.join(header)}); map them with --map canonical=source "
            "(a pipeline config: [source.map])"
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
