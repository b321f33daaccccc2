"""The same marts and Feast exports on Spark as on DuckDB: `recsys build --engine spark`.

Each test builds one home with both engines and compares every mart and every export file:
EXCEPT ALL in both directions on the exact columns (ids, counts, times, text, booleans, lists
of those), and every float (and list of floats) on the grain's rows to 1e-6, absolute below 1
and relative above. Spark runs in local mode (pyspark, Java 17); CI runs these tests.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from recsys.home import Paths
from recsys.warehouse.build import EXPORTS, build, marts
from recsys.warehouse.dbt import PROJECT_DIR
from recsys.warehouse.spark import build as build_on_spark
from recsys.warehouse.spark import export_path, mart_path

pytestmark = [pytest.mark.spark, pytest.mark.slow]

TAOBAO = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_user_behavior_sample.csv"
TOLERANCE = 1e-6
FLOAT_TYPES = ("DOUBLE", "FLOAT", "DECIMAL")


def grain(mart: str) -> list[str]:
    """The grain a mart states on its first line (`-- one row per a, b`)."""
    first = (PROJECT_DIR / "models" / "marts" / f"{mart}.sql").read_text().splitlines()[0]
    return [column.strip() for column in first.removeprefix("-- one row per ").split(",")]


def differences(con: duckdb.DuckDBPyConnection, left: str, right: str, keys: list[str]) -> dict:
    """How two relations differ: rows of each that the other lacks on the exact columns, and
    floats (joined on ``keys``) further apart than the tolerance; all zero when equal."""
    columns = con.execute(f"describe select * from {left}").fetchall()
    names = [name for name, *_ in columns]
    assert names == [name for name, *_ in con.execute(f"describe select * from {right}").fetchall()]
    kinds = {name: kind for name, kind, *_ in columns if kind.startswith(FLOAT_TYPES)}
    floats = [name for name, kind in kinds.items() if not kind.endswith("[]")]
    float_lists = [name for name, kind in kinds.items() if kind.endswith("[]")]
    exact = [name for name in names if name not in floats and name not in float_lists]
    exact += [f"len({name})" for name in float_lists]
    selected = ", ".join(exact)
    found = {
        "only_left": f"select {selected} from {left} except all select {selected} from {right}",
        "only_right": f"select {selected} from {right} except all select {selected} from {left}",
    }

    def far(a: str, b: str) -> str:
        return (
            f"({a} is null) <> ({b} is null) "
            f"or abs({a} - {b}) > {TOLERANCE} * greatest(1, abs({a}), abs({b}))"
        )

    checks = [far(f"l.{name}", f"r.{name}") for name in floats] + [
        f"len(list_filter(list_zip(l.{name}, r.{name}), lambda z: {far('z[1]', 'z[2]')})) > 0"
        for name in float_lists
    ]
    if checks:
        on = " and ".join(f"l.{key} = r.{key}" for key in keys)
        found["floats"] = (
            f"select * from {left} as l join {right} as r on {on} where " + " or ".join(checks)
        )
    return {
        name: con.execute(f"select count(*) from ({sql})").fetchone()[0]
        for name, sql in found.items()
    }


def compare_engines(paths: Paths) -> dict[str, dict]:
    """Every mart and export of the DuckDB build against the Spark build's; the non-zero
    differences by output."""
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        outputs = {
            f"mart {mart}": (
                f"main.{mart}",
                f"read_parquet('{mart_path(paths, mart)}/*.parquet')",
                grain(mart),
            )
            for mart in marts()
        } | {
            f"export {file}": (
                f"read_parquet('{paths.features / file}')",
                f"read_parquet('{export_path(paths, file)}/*.parquet')",
                [key, "event_timestamp"],
            )
            for file, (_, key) in EXPORTS.items()
        }
        found = {name: differences(con, *output) for name, output in outputs.items()}
    finally:
        con.close()
    return {name: counts for name, counts in found.items() if any(counts.values())}


def build_both(paths: Paths) -> None:
    duckdb_report = build(paths)
    spark_report = build_on_spark(paths)  # the profile's master: $RECSYS_SPARK_MASTER, local[2]
    assert spark_report.as_of == duckdb_report.as_of
    assert spark_report.snapshots == duckdb_report.snapshots
    assert spark_report.mart_rows == duckdb_report.mart_rows
    assert spark_report.export_rows == duckdb_report.export_rows


def test_spark_equals_duckdb_on_simulated_events(tmp_path):
    from recsys.warehouse.ingest import ingest_file
    from recsys.warehouse.simulate import SimulationConfig, simulate, write_simulation

    sim = simulate(SimulationConfig(users=80, items=600, days=6, seed=5))
    events, _ = write_simulation(sim, tmp_path / "sim")
    paths = Paths(tmp_path / "home")
    ingest_file(paths, events, fmt="parquet")
    build_both(paths)
    assert compare_engines(paths) == {}


def test_the_comparison_catches_a_changed_value(tmp_path):
    """The comparison is not vacuous: one changed float, one changed id are found."""
    con = duckdb.connect()
    con.execute(
        "create table a as select * from (values (1, 2.0, [1.0]), (2, 3.0, [2.0])) t(k, x, l)"
    )
    con.execute(
        "create table b as select * from (values (1, 2.0, [1.0]), (2, 3.1, [2.0])) t(k, x, l)"
    )
    con.execute(
        "create table c as select * from (values (1, 2.0, [1.0]), (3, 3.0, [2.0])) t(k, x, l)"
    )
    con.execute(
        "create table d as select * from (values (1, 2.0, [1.0]), (2, 3.0, [2.5])) t(k, x, l)"
    )
    assert differences(con, "a", "a", ["k"]) == {"only_left": 0, "only_right": 0, "floats": 0}
    assert differences(con, "a", "b", ["k"])["floats"] == 1
    assert differences(con, "a", "c", ["k"])["only_left"] == 1
    assert differences(con, "a", "d", ["k"])["floats"] == 1


@pytest.mark.skipif(not TAOBAO.exists(), reason=f"Taobao sample not found at {TAOBAO}")
def test_spark_equals_duckdb_on_the_taobao_sample(tmp_path):
    from recsys.warehouse.ingest import ingest_file

    paths = Paths(tmp_path / "home")
    ingest_file(paths, TAOBAO, fmt="taobao")
    build_both(paths)
    assert compare_engines(paths) == {}


def test_a_home_without_events_is_refused_before_spark_starts(tmp_path):
    from recsys.warehouse.build import BuildError
    from recsys.warehouse.connect import connect

    paths = Paths(tmp_path / "home")
    with pytest.raises(BuildError, match="no warehouse"):
        build_on_spark(paths)
    connect(paths).close()  # creates the empty base tables
    with pytest.raises(BuildError, match="no events"):
        build_on_spark(paths)


def test_the_cli_checks_the_engine_options(tmp_path):
    from typer.testing import CliRunner

    from recsys.cli import app

    home = ["--home", str(tmp_path)]
    result = CliRunner().invoke(app, ["build", "--engine", "sparkle", *home])
    assert result.exit_code == 2 and "duckdb or spark" in result.output
    result = CliRunner().invoke(app, ["build", "--spark-master", "local[1]", *home])
    assert result.exit_code == 2 and "--engine spark only" in result.output
