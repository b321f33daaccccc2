"""Build the SQL feature layer on Apache Spark: ``recsys build --engine spark``.

The same dbt project (``sql/``) runs through dbt-spark's ``session`` method in this process
(the profile's ``spark`` output); engine-specific SQL is in ``sql/macros/engine.sql``. A build

1. copies the home's events (DuckDB warehouse, read-only) and the build's parameters
   (:func:`recsys.warehouse.build.write_params`) to Parquet under ``<home>/spark/next/inputs``,
2. starts (or reuses) a Spark session with the profile's parameters and ``--spark-master``,
   and registers those files as the sources ``main.events``, ``build.recsys_params``,
   ``build.behavior_weights`` (plus the empty ``build.snapshot_as_of``),
3. runs ``dbt build --target spark``: views in ``live``, the marts as Parquet tables in
   ``main`` and every data test of ``sql/tests``; a failure stops here and leaves the previous
   Spark outputs published,
4. evaluates the ``exports`` views at each snapshot time (the times
   :func:`recsys.warehouse.build.snapshot_times` gives the DuckDB build) and stacks them, then
   writes each Feast file sorted like the DuckDB build's,
5. publishes ``<home>/spark/marts/<mart>/`` and ``<home>/spark/features/<file>.parquet/``
   (Parquet folders, one part file each for the exports) by renames.

Snapshots: DuckDB views read the ``as_of`` session variable; Spark has no variable that a
persistent view can read, so ``stg_params`` reads the one-row table ``build.snapshot_as_of``
instead (``as_of_override`` in ``sql/macros/engine.sql``). The loop overwrites that row before
each snapshot; Spark re-resolves views on every query, so every export view (and every mart
view under it) is then evaluated as of that time, exactly as ``set variable as_of`` does on
DuckDB. The table is empty while dbt builds, so the marts are as of the build's as_of.

pyspark and dbt are imported lazily: DuckDB builds and ``make demo`` never need Java.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import yaml

from recsys.config import FeatureConfig
from recsys.home import Paths
from recsys.warehouse import dbt
from recsys.warehouse.build import (
    EXPORTS,
    BuildError,
    BuildReport,
    MigrationRule,
    check_results,
    event_range,
    marts,
    snapshot_times,
    utc_naive,
    write_params,
)
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S, retry_on_lock

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_DIR = "spark"
# the dbt schemas of the project (sources and marts in main, views in live, inputs in build)
SCHEMAS = ("main", "live", "build")
INPUTS = ("recsys_params", "behavior_weights")
# `{{ env_var('NAME', 'default') }}`, the only template the profile's Spark parameters use
_ENV_VAR = re.compile(r"\{\{\s*env_var\('(\w+)',\s*'([^']*)'\)\s*\}\}")


def spark_dir(paths: Paths) -> Path:
    """Where Spark builds of this home write: ``marts/``, ``features/``, and ``next/`` (staging)."""
    return paths.home / SPARK_DIR


def mart_path(paths: Paths, mart: str) -> Path:
    """The published Parquet folder of a mart built on Spark."""
    return spark_dir(paths) / "marts" / mart


def export_path(paths: Paths, file: str) -> Path:
    """The published Parquet folder of a Feast export file built on Spark."""
    return spark_dir(paths) / "features" / file


def session_parameters(master: str | None) -> dict[str, str]:
    """The Spark parameters of the profile's ``spark`` output (sql/profiles.yml), with its
    ``env_var`` defaults resolved and the master ``master`` if given."""
    profile = yaml.safe_load((dbt.project_dir() / "profiles.yml").read_text())
    parameters = profile["recsys"]["outputs"]["spark"]["server_side_parameters"]

    def resolve(value: str) -> str:
        found = _ENV_VAR.fullmatch(str(value))
        if found:
            return os.environ.get(found[1], found[2])
        if "{{" in str(value):
            raise BuildError(
                f"sql/profiles.yml: unsupported template in a Spark parameter: {value}"
            )
        return str(value)

    resolved = {name: resolve(value) for name, value in parameters.items()}
    if master:
        resolved["spark.master"] = master
    return resolved


def session(master: str | None = None) -> SparkSession:
    """The process's Spark session with the profile's parameters, started if need be (dbt-spark's
    ``session`` method then reuses it). A running session on another master is stopped first."""
    from pyspark.sql import SparkSession

    parameters = session_parameters(master)
    active = SparkSession.getActiveSession()
    if active is not None and active.conf.get("spark.master") != parameters["spark.master"]:
        active.stop()
    builder = SparkSession.builder.appName("recsys build")
    for name, value in parameters.items():
        builder = builder.config(name, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j and the JVM raise many kinds; the message is what helps
        raise BuildError(
            f"could not start Spark on {parameters['spark.master']} (needs Java 17): {exc}"
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _write_inputs(
    paths: Paths,
    folder: Path,
    *,
    as_of: datetime | None,
    config: FeatureConfig,
    rule: MigrationRule,
    lock_timeout_s: float,
) -> tuple[int, datetime, list[datetime]]:
    """Copy the events and the parameters to Parquet folders ``folder/<table>/``; returns the
    number of events, the as_of and the default snapshot times."""
    if not paths.warehouse.exists():
        raise BuildError(f"no warehouse at {paths.warehouse}; run `recsys ingest FILE` first")
    # write_params writes its tables into this in-memory database and reads the events of the
    # warehouse, attached read-only: a Spark build publishes nothing there
    con = duckdb.connect()
    try:
        con.execute("set timezone = 'UTC'")
        retry_on_lock(
            lambda: con.execute("attach ? as warehouse (read_only)", [str(paths.warehouse)]),
            paths.warehouse,
            lock_timeout_s,
        )
        con.execute("set search_path = 'memory.main,warehouse.main'")
        _, first, last = event_range(con, paths)
        as_of = utc_naive(as_of) if as_of else last + timedelta(microseconds=1)
        if as_of <= first:
            raise BuildError(f"no events before as_of {as_of.isoformat()} (first is {first})")
        write_params(con, as_of=as_of, config=config, rule=rule)
        for table in ("events", *(f"build.{name}" for name in INPUTS)):
            target = folder / table.removeprefix("build.")
            target.mkdir(parents=True)
            con.execute(f"copy {table} to ? (format parquet)", [str(target / "part-0.parquet")])
        query = "select count(*) from events where event_time < ?"
        count = con.execute(query, [as_of]).fetchone()[0]
        times = snapshot_times(con, as_of)
    finally:
        con.close()
    return count, as_of, times


def _reset_catalog(spark: SparkSession, stage: Path, inputs: Path) -> None:
    """The schemas, located in ``stage``, with the sources registered as Parquet tables over
    ``inputs``. A previous build in this process left its schemas in the catalog, pointing at its
    removed stage: they are dropped first."""
    for schema in SCHEMAS:
        spark.sql(f"drop database if exists {schema} cascade")
    for schema in SCHEMAS:
        spark.sql(f"create database {schema} location {_path_literal(stage / (schema + '.db'))}")
    spark.sql(f"create table main.events using parquet location {_path_literal(inputs / 'events')}")
    for table in INPUTS:
        location = _path_literal(inputs / table)
        spark.sql(f"create table build.{table} using parquet location {location}")
    spark.sql("create table build.snapshot_as_of (as_of timestamp_ntz) using parquet")


def _run_dbt_build(paths: Paths, step: Callable[[str], None] | None) -> None:
    """``dbt build --target spark``; raises BuildError unless every model and data test passed."""
    try:
        results = dbt.run(
            paths, "build", target="spark", dbt_vars={"publish_suffix": ""}, step=step
        )
    except dbt.DbtError as exc:
        raise BuildError(str(exc)) from None
    check_results(paths, results, outputs="Spark outputs")


def _path_literal(path: Path) -> str:
    """A path as a Spark SQL string literal. Spark takes no parameter markers in DDL such as
    LOCATION, so the home's path (which may hold quotes) is escaped instead."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def export_features(
    spark: SparkSession,
    folder: Path,
    times: list[datetime],
    *,
    step: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write the Feast files as Parquet folders in ``folder``: per export view, the rows at each
    snapshot time (only entities with events in the day before it, all at the last), sorted by
    event_timestamp and key like the DuckDB build's files; returns rows per file."""
    for view, _ in EXPORTS.values():
        spark.sql(
            f"create table build.stack_{view} using parquet as select * from live.{view} limit 0"
        )
    previous: datetime | None = None
    for moment in times:
        spark.sql("insert overwrite table build.snapshot_as_of select :t", args={"t": moment})
        for view, key in EXPORTS.values():
            changed = (
                ""
                if moment == times[-1] or previous is None
                else f"where {key} in (select {key} from main.events "
                "where event_time >= :since and event_time < :until)"
            )
            args = {} if not changed else {"since": previous, "until": moment}
            spark.sql(f"insert into build.stack_{view} select * from live.{view} {changed}", args)
        previous = moment
        if step:
            step(f"snapshot {moment.isoformat()}")
    spark.sql("truncate table build.snapshot_as_of")
    rows = {}
    for file, (view, key) in EXPORTS.items():
        stack = spark.table(f"build.stack_{view}")
        stack.repartition(1).sortWithinPartitions("event_timestamp", key).write.parquet(
            str(folder / file)
        )
        rows[file] = stack.count()
    return rows


def _publish(paths: Paths, stage: Path) -> None:
    """Replace ``marts/`` and, if exported, ``features/`` by the staged ones (one rename each)."""
    root = spark_dir(paths)
    for name, staged in (("marts", stage / "main.db"), ("features", stage / "features")):
        if not staged.exists():
            continue
        if (root / name).exists():
            (root / name).rename(stage / f"previous-{name}")
        staged.rename(root / name)


def build(
    paths: Paths,
    *,
    master: str | None = None,
    as_of: datetime | None = None,
    config: FeatureConfig = FeatureConfig(),
    rule: MigrationRule = MigrationRule(),
    export: bool = True,
    snapshots: Iterable[datetime] | None = None,
    step: Callable[[str], None] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> BuildReport:
    """Build the marts and, if ``export``, the Feast files on Spark (master ``master``, else the
    profile's) as of ``as_of``, into ``<home>/spark``; the other arguments are those of
    :func:`recsys.warehouse.build.build` (a Spark build is always a full one)."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    stage = spark_dir(paths) / "next"
    # a killed build's stage; a finished one removed its own
    shutil.rmtree(stage, ignore_errors=True)
    try:
        # before Spark starts, so that a home without events fails in a second, not after the JVM
        count, as_of, default_times = _write_inputs(
            paths,
            stage / "inputs",
            as_of=as_of,
            config=config,
            rule=rule,
            lock_timeout_s=lock_timeout_s,
        )
        seconds["inputs"] = time.perf_counter() - started
        started = time.perf_counter()
        spark = session(master)
        _reset_catalog(spark, stage, stage / "inputs")
        seconds["spark"] = time.perf_counter() - started
        started = time.perf_counter()
        _run_dbt_build(paths, step)
        seconds["marts"] = time.perf_counter() - started
        export_rows: dict[str, int] = {}
        times: list[datetime] = []
        if export:
            started = time.perf_counter()
            chosen = default_times[:-1] if snapshots is None else snapshots
            times = sorted({utc_naive(t) for t in chosen if utc_naive(t) < as_of}) + [as_of]
            export_rows = export_features(spark, stage / "features", times, step=step)
            seconds["exports"] = time.perf_counter() - started
        mart_rows = {name: spark.table(f"main.{name}").count() for name in marts()}
        _publish(paths, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return BuildReport(
        as_of=as_of,
        events=count,
        mart_rows=mart_rows,
        export_rows=export_rows,
        snapshots=len(times),
        seconds=seconds,
    )
