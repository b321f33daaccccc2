"""Build the SQL feature layer: the dbt project in sql/, mart tables, and the Feast Parquet exports.

The models live in the dbt project ``sql/`` (``recsys.warehouse.dbt``): ``staging`` ->
``intermediate`` -> ``marts`` -> ``exports``, one model per file named by its file. They are
views in the ``live`` schema that compute everything as of ``stg_params.as_of``: the ``as_of``
DuckDB variable when set, else the as_of of the build (``build.recsys_params``). A build then

1. writes ``build.recsys_params`` and ``build.behavior_weights`` from :class:`FeatureConfig`
   (Python is the single source of truth; the online updater reads the same config),
2. runs ``dbt build`` in process: it (re)creates the views, computes each mart as a staged table
   ``main.<mart>__next`` and runs every data test of ``sql/tests`` on the staged tables. A failing
   model or test stops the build here, and the previous marts and exports stay published,
3. exports the Feast files: the ``exports`` views evaluated at each snapshot time T (``set
   variable as_of = T``), stacked with ``event_timestamp = T``, into a new folder sealed with a
   manifest,
4. publishes in one transaction: each staged table is renamed to ``main.<mart>`` and the
   parameters are copied to ``main.recsys_params`` and ``main.behavior_weights``; right after the
   commit the export folder is published as ``features/`` by one rename
   (``recsys.warehouse.exports``). A build killed before that commit leaves the previous marts
   and exports; killed between the commit and that rename, it leaves new marts beside the
   previous exports, which ``recsys features materialize`` refuses (their as_of differ) until
   ``recsys build`` runs again.

The ``live`` views always follow the latest build attempt; readers use the published tables.

Snapshots are the 00:00 UTC boundaries after days that have events, plus the final as_of. A
snapshot row is written for an entity only when it has events in the day before T (its features
changed); the final as_of has a row for every entity. Feast's point-in-time join thus always finds
the entity's latest snapshot, computed from exactly the events before its event_timestamp.

The default as_of is the last event time plus one microsecond, so every event counts.
"""

from __future__ import annotations

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
from recsys.warehouse import dbt, exports
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S, connect
from recsys.warehouse.dbt import STAGED_SUFFIX, project_dir
from recsys.warehouse.ids import create_source_id_views
from recsys.warehouse.schema import BEHAVIORS

VIEW_SCHEMA = "live"
MEMORY_LIMIT = "4GB"
# the inputs of the latest build attempt, which dbt reads as its `build_inputs` source
BUILD_SCHEMA = "build"

# Feast export file -> (exports view, entity key)
EXPORTS: dict[str, tuple[str, str]] = {
    "user_interest.parquet": ("feast_user_interest", "user_id"),
    "user_interest_shift.parquet": ("feast_user_interest_shift", "user_id"),
    "user_behavior_funnel.parquet": ("feast_user_behavior_funnel", "user_id"),
    "user_recent_sequence.parquet": ("feast_user_recent_sequence", "user_id"),
    "item_stats.parquet": ("feast_item_stats", "item_id"),
}


class BuildError(Exception):
    """The feature layer cannot be built from this warehouse or sql/ folder, or a data test of
    sql/tests failed (nothing was published then)."""


@dataclass(frozen=True)
class MigrationRule:
    """Thresholds of the interest-migration detector (sql/models/marts/interest_migrations.sql).

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
class BuildReport:
    """What a build produced: rows per mart and per export file, and seconds per step."""

    as_of: datetime
    events: int
    mart_rows: dict[str, int]
    export_rows: dict[str, int]
    snapshots: int
    seconds: dict[str, float] = field(default_factory=dict)
    plan: str = "full"  # Plan.reason: full (and why) or incremental

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
        table.caption = f"{self.plan}; {self.snapshots} snapshot(s); {steps}"
        return table


def utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def write_params(
    con: duckdb.DuckDBPyConnection, *, as_of: datetime, config: FeatureConfig, rule: MigrationRule
) -> None:
    """Store the config as the build's inputs: the one-row ``build.recsys_params`` and the
    ``build.behavior_weights`` tables."""
    missing = sorted(set(BEHAVIORS) - set(config.behavior_weights))
    if missing:
        raise BuildError(f"FeatureConfig.behavior_weights has no weight for {missing}")
    con.execute(f"create schema if not exists {BUILD_SCHEMA}")
    con.execute(
        f"""
        create or replace table {BUILD_SCHEMA}.recsys_params as select
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
            ?::double as migration_cooldown_seconds,
            ?::varchar as sql_checksum,
            (select max(ingested_at) from events) as ingested_through,
            now()::timestamp as built_at
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
            dbt.project_checksum(),
        ],
    )
    con.execute(
        f"create or replace table {BUILD_SCHEMA}.behavior_weights (behavior varchar, weight double)"
    )
    con.executemany(
        f"insert into {BUILD_SCHEMA}.behavior_weights values (?, ?)",
        list(config.behavior_weights.items()),
    )


@dataclass(frozen=True)
class Plan:
    """How a build runs: ``full`` (dbt's --full-refresh) or incremental, why, and which
    published snapshots the exports keep (``reuse_before``: those before it; None: none)."""

    full: bool
    reason: str
    # the live views must be (re)created: the published build ran other SQL, or none
    views: bool = True
    reuse_before: datetime | None = None
    # why an incremental build re-exports every snapshot (reuse_before is None)
    export_note: str = ""


# recsys_params columns that differ between builds over the same parameters
_TIMES = ("as_of", "ingested_through", "built_at")


def _columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> set[str]:
    return {
        row[0]
        for row in con.execute(
            "select column_name from information_schema.columns "
            "where table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    }


def plan_build(
    con: duckdb.DuckDBPyConnection, paths: Paths, *, as_of: datetime, full: bool
) -> Plan:
    """Full or incremental: incremental when the last published build used the same parameters,
    weights and SQL, and its event stream is there (call after :func:`write_params`)."""
    same_sql = "sql_checksum" in _columns(con, "main", "recsys_params") and con.execute(
        f"select count(*) from main.recsys_params join {BUILD_SCHEMA}.recsys_params "
        "using (sql_checksum)"
    ).fetchone() == (1,)
    if full:
        return Plan(full=True, reason="full: --full", views=not same_sql)
    if not {*_TIMES, "sql_checksum"} <= _columns(con, "main", "recsys_params"):
        return Plan(full=True, reason="full: no previous build to continue")
    if "ingested_at" not in _columns(con, VIEW_SCHEMA, "int_event_stream"):
        return Plan(full=True, reason="full: no event stream to continue", views=not same_sql)
    exclude = ", ".join(_TIMES)
    (changed,) = con.execute(
        f"""
        select (select count(*) from (
            select * exclude ({exclude}) from {BUILD_SCHEMA}.recsys_params
            except all select * exclude ({exclude}) from main.recsys_params))
        + (select count(*) from (
            from {BUILD_SCHEMA}.behavior_weights except all from main.behavior_weights))
        + (select count(*) from (
            from main.behavior_weights except all from {BUILD_SCHEMA}.behavior_weights))
        """
    ).fetchone()
    if changed:
        reason = "full: the parameters, weights or sql/ changed"
        return Plan(full=True, reason=reason, views=not same_sql)
    previous_as_of, ingested_through, built_at = con.execute(
        f"select {exclude} from main.recsys_params"
    ).fetchone()
    published = exports.verify(paths.features) if paths.features.is_dir() else None
    (forgotten,) = con.execute(
        "select count(*) from forgotten_users where forgotten_at >= ?", [built_at]
    ).fetchone()
    if published is None or published.as_of != previous_as_of or as_of < previous_as_of:
        note = "every snapshot re-exported: the published exports are not the last build's"
        return Plan(full=False, reason="incremental", views=False, export_note=note)
    if forgotten:
        # a forgotten user's events left the item aggregates of every earlier snapshot
        note = "every snapshot re-exported after `recsys forget`"
        return Plan(full=False, reason="incremental", views=False, export_note=note)
    (first_new,) = con.execute(
        "select min(event_time) from events where ingested_at > ?", [ingested_through]
    ).fetchone()
    before = (
        previous_as_of
        if first_new is None
        else min(previous_as_of, first_new + timedelta(microseconds=1))
    )
    return Plan(full=False, reason="incremental", views=False, reuse_before=before)


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


@dataclass(frozen=True)
class Reuse:
    """The snapshots an incremental build keeps from the published exports: those before
    ``before``, which no new event can change (each is computed from events before its time)."""

    folder: Path
    before: datetime


def export_features(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    times: list[datetime],
    *,
    reuse: Reuse | None = None,
    step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the Feast files into ``folder``, one stacked row set per snapshot time (those before
    ``reuse.before`` copied from ``reuse.folder``); returns rows per file."""
    for view, _ in EXPORTS.values():
        con.execute(
            f"create or replace temp table stack_{view} as from {VIEW_SCHEMA}.{view} limit 0"
        )
    previous: datetime | None = None
    for moment in times:
        if reuse and moment < reuse.before:
            previous = moment
            continue
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
        if reuse:
            con.execute(
                f"insert into stack_{view} select * from read_parquet(?) where event_timestamp < ?",
                [str(reuse.folder / file), reuse.before],
            )
        _write_parquet(
            con,
            f"select * from stack_{view} order by event_timestamp, {key}",
            folder / file,
        )
        rows[file] = con.execute(f"select count(*) from stack_{view}").fetchone()[0]
        con.execute(f"drop table stack_{view}")
    return rows


def event_range(con: duckdb.DuckDBPyConnection, paths: Paths) -> tuple[int, datetime, datetime]:
    count, first, last = con.execute(
        "select count(*), min(event_time), max(event_time) from events"
    ).fetchone()
    if not count:
        raise BuildError(
            f"the warehouse at {paths.warehouse} has no events; run `recsys ingest FILE` first"
        )
    return count, first, last


def marts() -> list[str]:
    """The names of the marts: the analysts' tables main.<mart> (sql/models/marts/<mart>.sql)."""
    return sorted(path.stem for path in (project_dir() / "models" / "marts").glob("*.sql"))


def data_test_failures(paths: Paths) -> dict[str, int]:
    """Offending-row count per data test of sql/tests, run by dbt on the published marts."""
    return {
        result.name: result.failures or (0 if result.ok else -1)
        for result in dbt.run(paths, "test")
        if result.resource_type == "test"
    }


def _run_dbt_build(
    con: duckdb.DuckDBPyConnection,
    paths: Paths,
    plan: Plan,
    step: Callable[[str], None] | None,
) -> None:
    """``dbt build`` into the staged tables (``--full-refresh`` for a full plan; the views only
    when the plan needs them); raises BuildError (staged tables dropped) unless every model and
    data test succeeded."""
    try:
        results = dbt.run(
            paths,
            "build",
            dbt_vars={"publish_suffix": STAGED_SUFFIX},
            # views are definitions: those of the published build's SQL stand
            exclude=None if plan.views else "config.materialized:view",
            full_refresh=plan.full,
            step=step,
        )
    except dbt.DbtError as exc:
        raise BuildError(str(exc)) from None
    try:
        check_results(paths, results, outputs="marts and features")
    except BuildError:
        for mart in marts():
            con.execute(f"drop table if exists main.{mart}{STAGED_SUFFIX}")
        raise


def check_results(paths: Paths, results: list[dbt.NodeResult], *, outputs: str) -> None:
    """Raise BuildError naming every failed model and data test, unless all succeeded."""
    failed = [r for r in results if not r.ok and r.status != "skipped"]
    if failed:
        skipped = sum(r.status == "skipped" for r in results)
        raise BuildError(
            f"the build failed, so the previous {outputs} stay published:\n  "
            + "\n  ".join(r.describe() for r in failed)
            + (f"\n  ({skipped} downstream node(s) skipped)" if skipped else "")
            + f"\n  dbt's log: {paths.home / 'dbt' / 'logs' / 'dbt.log'}"
        )


def _publish_marts(con: duckdb.DuckDBPyConnection) -> None:
    """Inside the caller's transaction: the staged marts and the build's parameters become the
    published ones (renames and two one-row-ish copies, so it takes milliseconds)."""
    for mart in marts():
        con.execute(f"drop table if exists main.{mart}")
        con.execute(f"alter table main.{mart}{STAGED_SUFFIX} rename to {mart}")
    for table in ("recsys_params", "behavior_weights"):
        con.execute(f"create or replace table main.{table} as from {BUILD_SCHEMA}.{table}")
    create_source_id_views(con)


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
    full: bool = False,
) -> BuildReport:
    """(Re)build views and mart tables as of ``as_of`` and, if ``export``, the Feast files.

    After a first build, a build continues the event stream from the newly ingested events and
    keeps the published snapshots no new event can change (:func:`plan_build`); ``full`` (or new
    parameters, weights or SQL) recomputes everything from all events.

    ``snapshots`` replaces the daily snapshot times (the final as_of is always added); ``step``
    is called with a short label after each step (the CLI drives a progress bar with it). The
    warehouse lock of another process is waited for up to ``lock_timeout_s`` (then
    ``WarehouseBusyError``).
    """
    if not paths.warehouse.exists():
        raise BuildError(f"no warehouse at {paths.warehouse}; run `recsys ingest FILE` first")
    seconds: dict[str, float] = {}
    # no connection config: dbt opens the same database in this process, which DuckDB allows
    # only with an identical configuration; the settings below are database-wide instead
    con = connect(paths, lock_timeout_s=lock_timeout_s)
    try:
        con.execute("set memory_limit = ?", [MEMORY_LIMIT])
        con.execute("set temp_directory = ?", [str(paths.home / "duckdb_tmp")])
        # marts are sets of rows (exports sort explicitly): let DuckDB write them in any order
        con.execute("set preserve_insertion_order = false")
        _, first, last = event_range(con, paths)
        as_of = utc_naive(as_of) if as_of else last + timedelta(microseconds=1)
        if as_of <= first:
            raise BuildError(f"no events before as_of {as_of.isoformat()} (first is {first})")
        started = time.perf_counter()
        write_params(con, as_of=as_of, config=config, rule=rule)
        plan = plan_build(con, paths, as_of=as_of, full=full)
        _run_dbt_build(con, paths, plan, step)
        seconds["marts"] = time.perf_counter() - started
        export_rows: dict[str, int] = {}
        times: list[datetime] = []
        folder = exports.start(paths) if export else None
        try:
            if folder:
                started = time.perf_counter()
                chosen = snapshot_times(con, as_of)[:-1] if snapshots is None else snapshots
                times = sorted({utc_naive(t) for t in chosen if utc_naive(t) < as_of}) + [as_of]
                reuse = (
                    Reuse(paths.features.resolve(), plan.reuse_before)
                    if plan.reuse_before and snapshots is None
                    else None
                )
                export_rows = export_features(con, folder, times, reuse=reuse, step=step)
                exports.seal(paths, folder, as_of=as_of, rows=export_rows)
                seconds["exports"] = time.perf_counter() - started
            con.execute("begin transaction")
            _publish_marts(con)
            con.execute("commit")
            if folder:
                exports.publish(paths, folder)
        except BaseException:
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        mart_rows = {
            name: con.execute(f"select count(*) from main.{name}").fetchone()[0] for name in marts()
        }
        n_events = con.execute(f"select count(*) from {VIEW_SCHEMA}.stg_events").fetchone()[0]
        return BuildReport(
            as_of=as_of,
            events=n_events,
            mart_rows=mart_rows,
            export_rows=export_rows,
            snapshots=len(times),
            seconds=seconds,
            plan=f"{plan.reason}; {plan.export_note}"
            if export and plan.export_note
            else plan.reason,
        )
    finally:
        # closing without commit rolls a failed build back: the previous marts stay
        con.close()
