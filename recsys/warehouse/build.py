"""Build the SQL feature layer: views from sql/, mart tables, and the Feast Parquet exports.

Layers, in order: ``sql/staging`` -> ``sql/intermediate`` -> ``sql/marts`` -> ``sql/exports``.
Every file holds one view named after the file. The views live in the ``live`` schema and compute
everything as of ``stg_params.as_of``: the ``as_of`` DuckDB variable when set, else the build's
as_of stored in ``recsys_params``. A build then

1. writes ``recsys_params`` and ``behavior_weights`` from :class:`FeatureConfig` (Python is the
   single source of truth; the online updater reads the same config),
2. (re)creates the views and materialises every mart as a table of the same name in ``main``,
   all in one transaction, so readers see either the old or the new build,
3. exports the Feast files: the ``exports`` views evaluated at each snapshot time T (``set
   variable as_of = T``), stacked with ``event_timestamp = T``, into a new folder sealed with a
   manifest, before the marts commit; right after the commit the folder is published as
   ``features/`` by one rename (``recsys.warehouse.exports``). A build killed before its
   commit leaves the previous marts and exports; killed between the commit and that rename, it
   leaves new marts beside the previous exports, which ``recsys features materialize`` refuses
   (their as_of differ) until ``recsys build`` runs again.

Snapshots are the 00:00 UTC boundaries after days that have events, plus the final as_of. A
snapshot row is written for an entity only when it has events in the day before T (its features
changed); the final as_of has a row for every entity. Feast's point-in-time join thus always finds
the entity's latest snapshot, computed from exactly the events before its event_timestamp.

The default as_of is the last event time plus one microsecond, so every event counts.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from recsys.config import FeatureConfig
from recsys.home import Paths
from recsys.warehouse import exports
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S, connect
from recsys.warehouse.ids import create_source_id_views
from recsys.warehouse.schema import BEHAVIORS

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
LAYERS: tuple[str, ...] = ("staging", "intermediate", "marts", "exports")
VIEW_SCHEMA = "live"
MEMORY_LIMIT = "4GB"
MATERIALIZED_MARK = "-- materialized: table"

# Feast export file -> (exports view, entity key)
EXPORTS: dict[str, tuple[str, str]] = {
    "user_interest.parquet": ("feast_user_interest", "user_id"),
    "user_interest_shift.parquet": ("feast_user_interest_shift", "user_id"),
    "user_behavior_funnel.parquet": ("feast_user_behavior_funnel", "user_id"),
    "user_recent_sequence.parquet": ("feast_user_recent_sequence", "user_id"),
    "item_stats.parquet": ("feast_item_stats", "item_id"),
}


class BuildError(Exception):
    """The feature layer cannot be built from this warehouse or sql/ folder."""


@dataclass(frozen=True)
class MigrationRule:
    """Thresholds of the interest-migration detector (sql/marts/interest_migrations.sql).

    Defaults were chosen on simulated data (precision and recall above 0.8 against the
    planted migrations, see tests/test_sql.py).
    """

    # the user must have this many events before first touching the new category ...
    min_history_events: int = 20
    # ... the category must be new: first touched at most this long before the detection ...
    max_category_age_hours: float = 48.0
    # ... and not established: under this share of long-horizon interest just before ...
    max_long_share: float = 0.2
    # ... with at least this many events in it ...
    min_category_events: int = 5
    # ... making up at least this share of the user's events since it was first touched.
    min_purity: float = 0.9
    # Detections of the same user and category closer than this are one migration.
    cooldown_hours: float = 7 * 24.0


@dataclass(frozen=True)
class SqlModel:
    """One view: sql/<layer>/<name>.sql."""

    name: str
    layer: str
    sql: str
    depends_on: frozenset[str]
    # a `-- materialized: table` line makes it a table computed once per build (it must not
    # depend on as_of), which the views then read instead of recomputing it
    materialized: bool = False


@dataclass(frozen=True)
class BuildReport:
    """What a build produced: rows per mart and per export file, and seconds per step."""

    as_of: datetime
    events: int
    mart_rows: dict[str, int]
    export_rows: dict[str, int]
    snapshots: int
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self):  # -> rich renderable; rich is imported lazily like the CLI does
        from rich.table import Table

        table = Table(title=f"recsys build as of {self.as_of.isoformat()} ({self.events:,} events)")
        table.add_column("output")
        table.add_column("rows", justify="right")
        for name, rows in self.mart_rows.items():
            table.add_row(f"mart {name}", f"{rows:,}")
        for name, rows in self.export_rows.items():
            table.add_row(f"features/{name}", f"{rows:,}")
        steps = ", ".join(f"{step} {secs:.1f}s" for step, secs in self.seconds.items())
        table.caption = f"{self.snapshots} snapshot(s); {steps}"
        return table


def sql_dir() -> Path:
    """The repository's sql/ folder (the package is installed editable from the repository)."""
    if not SQL_DIR.is_dir():
        raise BuildError(f"sql/ folder not found at {SQL_DIR}; install recsys editable (pip -e .)")
    return SQL_DIR


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def load_models(directory: Path | None = None) -> list[SqlModel]:
    """All views of sql/, ordered so that each comes after the views it reads."""
    directory = directory or sql_dir()
    paths = [
        (layer, path) for layer in LAYERS for path in sorted((directory / layer).glob("*.sql"))
    ]
    files = {path.stem: (layer, path.read_text()) for layer, path in paths}
    if len(files) != len(paths):
        raise BuildError(f"two sql/ files share a view name in {directory}")
    models = {
        name: SqlModel(
            name=name,
            layer=layer,
            sql=sql,
            depends_on=frozenset(
                other
                for other in files
                if other != name and re.search(rf"\b{other}\b", _strip_comments(sql))
            ),
            materialized=MATERIALIZED_MARK in sql.splitlines(),
        )
        for name, (layer, sql) in files.items()
    }
    ordered: list[SqlModel] = []
    done: set[str] = set()
    pending = sorted(models.values(), key=lambda m: (LAYERS.index(m.layer), m.name))
    while pending:
        ready = [m for m in pending if m.depends_on <= done]
        if not ready:
            raise BuildError(f"circular references among {', '.join(m.name for m in pending)}")
        for model in ready:
            late = [
                d
                for d in model.depends_on
                if LAYERS.index(models[d].layer) > LAYERS.index(model.layer)
            ]
            if late:
                raise BuildError(f"{model.layer} model {model.name} reads later-layer {late}")
        ordered.extend(ready)
        done.update(m.name for m in ready)
        pending = [m for m in pending if m.name not in done]
    return ordered


def load_data_tests(directory: Path | None = None) -> dict[str, str]:
    """sql/tests/<name>.sql -> query returning the offending rows (none means pass)."""
    directory = directory or sql_dir()
    return {path.stem: path.read_text() for path in sorted((directory / "tests").glob("*.sql"))}


def run_data_tests(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Offending-row count per data test, run against the materialised marts."""
    return {
        name: con.execute(f"select count(*) from ({sql})").fetchone()[0]
        for name, sql in load_data_tests().items()
    }


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def write_params(
    con: duckdb.DuckDBPyConnection, *, as_of: datetime, config: FeatureConfig, rule: MigrationRule
) -> None:
    """Store the config as the one-row ``recsys_params`` and the ``behavior_weights`` tables."""
    missing = sorted(set(BEHAVIORS) - set(config.behavior_weights))
    if missing:
        raise BuildError(f"FeatureConfig.behavior_weights has no weight for {missing}")
    con.execute(
        """
        create or replace table recsys_params as select
            ?::timestamp as as_of,
            ?::double as short_half_life_seconds,
            ?::double as long_half_life_seconds,
            ?::double as session_gap_seconds,
            ?::double as novelty_window_seconds,
            ?::integer as recent_sequence_length,
            ?::integer as top_categories,
            ?::integer as migration_min_history_events,
            ?::double as migration_max_category_age_seconds,
            ?::double as migration_max_long_share,
            ?::integer as migration_min_category_events,
            ?::double as migration_min_purity,
            ?::double as migration_cooldown_seconds
        """,
        [
            as_of,
            config.short_half_life_hours * 3600,
            config.long_half_life_hours * 3600,
            config.session_gap_minutes * 60,
            config.novelty_window_hours * 3600,
            config.recent_sequence_length,
            config.top_categories,
            rule.min_history_events,
            rule.max_category_age_hours * 3600,
            rule.max_long_share,
            rule.min_category_events,
            rule.min_purity,
            rule.cooldown_hours * 3600,
        ],
    )
    con.execute("create or replace table behavior_weights (behavior varchar, weight double)")
    con.executemany(
        "insert into behavior_weights values (?, ?)", list(config.behavior_weights.items())
    )


def snapshot_times(con: duckdb.DuckDBPyConnection, as_of: datetime) -> list[datetime]:
    """00:00 UTC boundaries closing a day with events, before as_of, then as_of itself."""
    rows = con.execute(
        """
        select distinct date_trunc('day', event_time) + interval 1 day as t
        from events where event_time < ? and date_trunc('day', event_time) + interval 1 day < ?
        order by t
        """,
        [as_of, as_of],
    ).fetchall()
    return [row[0] for row in rows] + [as_of]


@contextmanager
def _as_of_variable(con: duckdb.DuckDBPyConnection, moment: datetime) -> Iterator[None]:
    con.execute("set variable as_of = ?::timestamp", [moment])
    try:
        yield
    finally:
        con.execute("reset variable as_of")


def _write_parquet(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> None:
    """COPY a query to a Parquet file (in an unpublished folder: no reader sees it yet)."""
    con.execute(f"copy ({query}) to ? (format parquet)", [str(target)])


def export_features(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    times: list[datetime],
    *,
    step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the Feast files into ``folder``, one stacked row set per snapshot time; returns
    rows per file."""
    for view, _ in EXPORTS.values():
        con.execute(
            f"create or replace temp table stack_{view} as from {VIEW_SCHEMA}.{view} limit 0"
        )
    previous: datetime | None = None
    for moment in times:
        final = moment == times[-1]
        with _as_of_variable(con, moment):
            for view, key in EXPORTS.values():
                changed = (
                    ""
                    if final or previous is None
                    else f"where {key} in (select {key} from events "
                    "where event_time >= $since and event_time < $until)"
                )
                params = {} if not changed else {"since": previous, "until": moment}
                con.execute(
                    f"insert into stack_{view} select * from {VIEW_SCHEMA}.{view} {changed}",
                    params,
                )
        previous = moment
        if step:
            step(f"snapshot {moment.isoformat()}")
    rows = {}
    for file, (view, key) in EXPORTS.items():
        _write_parquet(
            con,
            f"select * from stack_{view} order by event_timestamp, {key}",
            folder / file,
        )
        rows[file] = con.execute(f"select count(*) from stack_{view}").fetchone()[0]
        con.execute(f"drop table stack_{view}")
    return rows


def _create_model(con: duckdb.DuckDBPyConnection, model: SqlModel) -> None:
    """The model's view in the live schema, or its table when it is materialised."""
    kind = "table" if model.materialized else "view"
    (existing,) = con.execute(
        "select any_value(table_type) from information_schema.tables "
        "where table_schema = ? and table_name = ?",
        [VIEW_SCHEMA, model.name],
    ).fetchone()
    if existing and (existing == "VIEW") != (kind == "view"):  # the model changed kind
        con.execute(f"drop {'view' if existing == 'VIEW' else 'table'} {VIEW_SCHEMA}.{model.name}")
    # a view binds its names in its own schema; a table's query needs the schema on the path
    con.execute(f"set search_path = '{VIEW_SCHEMA},main'")
    con.execute(f"create or replace {kind} {VIEW_SCHEMA}.{model.name} as {model.sql}")
    con.execute("reset search_path")


def _event_range(con: duckdb.DuckDBPyConnection, paths: Paths) -> tuple[int, datetime, datetime]:
    count, first, last = con.execute(
        "select count(*), min(event_time), max(event_time) from events"
    ).fetchone()
    if not count:
        raise BuildError(
            f"the warehouse at {paths.warehouse} has no events; run `recsys ingest FILE` first"
        )
    return count, first, last


def build(
    paths: Paths,
    *,
    as_of: datetime | None = None,
    config: FeatureConfig = FeatureConfig(),
    rule: MigrationRule = MigrationRule(),
    export: bool = True,
    snapshots: Iterable[datetime] | None = None,
    step: Callable[[str], None] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> BuildReport:
    """(Re)build views and mart tables as of ``as_of`` and, if ``export``, the Feast files.

    ``snapshots`` replaces the daily snapshot times (the final as_of is always added); ``step``
    is called with a short label after each step (the CLI drives a progress bar with it). The
    warehouse lock of another process is waited for up to ``lock_timeout_s`` (then
    ``WarehouseBusyError``).
    """
    if not paths.warehouse.exists():
        raise BuildError(f"no warehouse at {paths.warehouse}; run `recsys ingest FILE` first")
    models = load_models()
    seconds: dict[str, float] = {}
    con = connect(paths, memory_limit=MEMORY_LIMIT, lock_timeout_s=lock_timeout_s)
    try:
        con.execute("set temp_directory = ?", [str(paths.home / "duckdb_tmp")])
        # marts are sets of rows (exports sort explicitly): let DuckDB write them in any order
        con.execute("set preserve_insertion_order = false")
        _, first, last = _event_range(con, paths)
        as_of = _utc_naive(as_of) if as_of else last + timedelta(microseconds=1)
        if as_of <= first:
            raise BuildError(f"no events before as_of {as_of.isoformat()} (first is {first})")
        started = time.perf_counter()
        con.execute("begin transaction")
        write_params(con, as_of=as_of, config=config, rule=rule)
        con.execute(f"create schema if not exists {VIEW_SCHEMA}")
        for model in models:
            _create_model(con, model)
            if step and model.materialized:
                step(f"table {model.name}")
        marts = [m for m in models if m.layer == "marts"]
        # A mart's own SQL, with main first on the search path, reads the marts built before it
        # as tables instead of re-evaluating their views.
        con.execute(f"set search_path = 'main,{VIEW_SCHEMA}'")
        for mart in marts:
            con.execute(f"create or replace table main.{mart.name} as {mart.sql}")
            if step:
                step(f"mart {mart.name}")
        con.execute("reset search_path")
        create_source_id_views(con)
        seconds["marts"] = time.perf_counter() - started
        export_rows: dict[str, int] = {}
        times: list[datetime] = []
        folder = exports.start(paths) if export else None
        try:
            if folder:
                started = time.perf_counter()
                chosen = snapshot_times(con, as_of)[:-1] if snapshots is None else snapshots
                times = sorted({_utc_naive(t) for t in chosen if _utc_naive(t) < as_of}) + [as_of]
                export_rows = export_features(con, folder, times, step=step)
                exports.seal(paths, folder, as_of=as_of, rows=export_rows)
                seconds["exports"] = time.perf_counter() - started
            con.execute("commit")
            if folder:
                exports.publish(paths, folder)
        except BaseException:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        marts = [m.name for m in marts]
        mart_rows = {
            name: con.execute(f"select count(*) from main.{name}").fetchone()[0] for name in marts
        }
        n_events = con.execute(f"select count(*) from {VIEW_SCHEMA}.stg_events").fetchone()[0]
        return BuildReport(
            as_of=as_of,
            events=n_events,
            mart_rows=mart_rows,
            export_rows=export_rows,
            snapshots=len(times),
            seconds=seconds,
        )
    finally:
        # closing without commit rolls a failed build back: the previous marts stay
        con.close()
