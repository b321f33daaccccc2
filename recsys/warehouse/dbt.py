"""The SQL feature layer is the dbt project in ``sql/``: run it on a home's warehouse, in process.

The project (``sql/dbt_project.yml``) holds every model (``sql/models``: staging ->
intermediate -> marts -> exports), its data tests (``sql/tests``) and the macros that make a
mart both an as-of view and a table (``sql/macros/mart.sql``). Its one profile reads the
warehouse path from ``RECSYS_WAREHOUSE``; :func:`home_env` sets it to the home's
``warehouse.duckdb`` and keeps dbt's ``target/`` and ``logs/`` in ``<home>/dbt/``, so dbt's own
commands (``docs generate``, ``ls``, ``build``, ``test``) work on any home through
``recsys dbt --home DIR -- ARGS``.

dbt's CLI spends seconds importing and parsing before it runs any SQL. ``recsys build`` calls
:class:`dbt.cli.main.dbtRunner` in process instead, and parses the project once per process,
version of the project (:func:`project_checksum`) and set of vars. The parsed manifest does not
depend on the home: every home's catalog is named ``warehouse`` after its file. dbt is imported
lazily: it is not on the CLI's import path.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.home import Paths

if TYPE_CHECKING:
    from dbt.cli.main import dbtRunner, dbtRunnerResult
    from dbt.contracts.graph.manifest import Manifest

PROJECT_DIR = Path(__file__).resolve().parents[2] / "sql"
WAREHOUSE_ENV = "RECSYS_WAREHOUSE"
# `recsys build` stages each mart as main.<mart><STAGED_SUFFIX> (sql/macros/naming.sql) and
# renames it to main.<mart> only after every data test passed on the staged tables.
STAGED_SUFFIX = "__next"
_manifests: dict[str, Manifest] = {}


class DbtError(Exception):
    """dbt could not run the project (a parse or adapter error, not a failing model or test)."""


@dataclass(frozen=True)
class NodeResult:
    """One model or data test of a dbt run: its status, and a test's offending-row count."""

    name: str
    resource_type: str  # "model" or "test"
    status: str  # "success", "pass", "error", "fail", "skipped", ...
    failures: int | None
    message: str | None

    @property
    def ok(self) -> bool:
        return self.status in ("success", "pass")

    def describe(self) -> str:
        if self.resource_type == "test" and self.failures:
            return f"test {self.name}: {self.failures:,} offending row(s)"
        return f"{self.resource_type} {self.name}: {self.status} {self.message or ''}".rstrip()


def project_dir() -> Path:
    """The repository's sql/ dbt project (the package is installed editable from the repository)."""
    if not (PROJECT_DIR / "dbt_project.yml").is_file():
        raise DbtError(f"no dbt project at {PROJECT_DIR}; install recsys editable (pip -e .)")
    return PROJECT_DIR


def home_env(paths: Paths) -> dict[str, str]:
    """The environment that points dbt at the project and the home's warehouse, and keeps dbt's
    ``target/`` and ``logs/`` in ``<home>/dbt/`` (dbt reads each of these variables as the flag
    of the same name)."""
    folder = paths.home.resolve() / "dbt"
    return {
        WAREHOUSE_ENV: str(paths.warehouse.resolve()),
        "DBT_PROJECT_DIR": str(project_dir()),
        "DBT_PROFILES_DIR": str(project_dir()),
        "DBT_TARGET_PATH": str(folder / "target"),
        "DBT_LOG_PATH": str(folder / "logs"),
    }


@contextmanager
def _environment(paths: Paths) -> Iterator[None]:
    """:func:`home_env` in ``os.environ`` for the duration (dbt in process reads it there)."""
    wanted = home_env(paths)
    previous = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _vars_flag(dbt_vars: dict[str, Any]) -> list[str]:
    return ["--vars", json.dumps(dbt_vars, sort_keys=True)] if dbt_vars else []


def _target_flag(target: str | None) -> list[str]:
    return ["--target", target] if target else []


def project_checksum() -> str:
    """sha256 of the project's settings, models and macros (what a parse and a build read)."""
    digest = hashlib.sha256()
    root = project_dir()
    files = [root / "dbt_project.yml", *sorted((root / "models").rglob("*")),
             *sorted((root / "macros").rglob("*"))]  # fmt: skip
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _manifest(paths: Paths, dbt_vars: dict[str, Any], target: str | None) -> Manifest:
    """The project parsed for this profile target with these vars, once per process and version
    of the project."""
    from dbt.cli.main import dbtRunner

    key = json.dumps([project_checksum(), target, dbt_vars], sort_keys=True)
    if key not in _manifests:
        args = ["parse", "--quiet", *_target_flag(target), *_vars_flag(dbt_vars)]
        result = _invoke(paths, dbtRunner(), args)
        if not result.success:
            raise DbtError(f"dbt could not parse {project_dir()}: {result.exception}")
        _manifests[key] = result.result
    return _manifests[key]


def _close_warehouse() -> None:
    """Close dbt-duckdb's connection to the warehouse.

    dbt-duckdb keeps its database open in a class-level environment after a run, which would
    keep the file locked against other processes and refuse this process's next connection
    with another configuration (read-only, say).
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    with DuckDBConnectionManager._LOCK:
        if DuckDBConnectionManager._ENV is not None:
            DuckDBConnectionManager._ENV.close()
        DuckDBConnectionManager.close_all_connections()


def _invoke(paths: Paths, runner: dbtRunner, args: list[str]) -> dbtRunnerResult:
    with _environment(paths):
        try:
            return runner.invoke(args)
        finally:
            _close_warehouse()


def run(
    paths: Paths,
    command: str,
    *,
    dbt_vars: dict[str, Any] | None = None,
    target: str | None = None,
    select: str | None = None,
    exclude: str | None = None,
    full_refresh: bool = False,
    step: Callable[[str], None] | None = None,
) -> list[NodeResult]:
    """Run ``dbt <command>`` (build, run, test) on the home, quietly, on the profile's
    ``target`` output (None: its default, DuckDB); one result per node.

    ``step`` is called with ``"<model|test> <name>"`` as each node finishes (the CLI's progress
    bar). Failing models and tests come back as results; :class:`DbtError` means dbt itself
    failed.
    """
    from dbt.cli.main import dbtRunner

    dbt_vars = dbt_vars or {}

    def on_event(event) -> None:
        if step and event.info.name == "NodeFinished":
            node = event.data.node_info
            step(f"{node.resource_type} {node.node_name}")

    # no manifest.json or run_results.json: the results come back here, and the log stays
    args = [command, "--quiet", "--log-level-file", "info", "--no-write-json"]
    args += _target_flag(target) + _vars_flag(dbt_vars) + (["--select", select] if select else [])
    args += (["--exclude", exclude] if exclude else []) + (
        ["--full-refresh"] if full_refresh else []
    )
    runner = dbtRunner(manifest=_manifest(paths, dbt_vars, target), callbacks=[on_event])
    result = _invoke(paths, runner, args)
    if result.exception is not None or result.result is None:
        raise DbtError(f"dbt {command} failed on {paths.warehouse}: {result.exception}")
    return [
        NodeResult(
            name=item.node.name,
            resource_type=str(item.node.resource_type),
            status=str(item.status),
            failures=item.failures,
            message=item.message,
        )
        for item in result.result.results
    ]


def run_cli(paths: Paths, args: Sequence[str]) -> int:
    """Run dbt's own CLI (``dbt ARGS``) on the home in a child process; its exit code."""
    script = Path(sys.executable).parent / "dbt"
    dbt = [str(script)] if script.is_file() else [sys.executable, "-m", "dbt.cli.main"]
    process = subprocess.Popen([*dbt, *args], env=os.environ | home_env(paths))
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached dbt too (same process group): `dbt docs serve` stops on it
        return process.wait()
