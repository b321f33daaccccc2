"""Issue 11, findings 5 and 10: a build's exports are published whole with a manifest,
materialize refuses a mix of builds, a process killed anywhere in ingest, build or materialize
leaves the previous state usable, and a home whose path holds a quote and a space works."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from feature_helpers import load_events
from sqlalchemy import text
from typer.testing import CliRunner

from recsys.cli import app
from recsys.features.errors import MaterializationError, NotMaterialized
from recsys.features.materialize import materialize
from recsys.features.read import online_features
from recsys.features.repo import feature_store
from recsys.home import Paths, resolve_home
from recsys.online.state import STATE_FILE, UserState
from recsys.online.updater import Event, OnlineUpdater
from recsys.warehouse import exports
from recsys.warehouse.build import EXPORTS, build
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate
from recsys.warehouse.writeback import read_engine

NEW_CATEGORY = 999_999


def _events() -> pd.DataFrame:
    events = simulate(SimulationConfig(users=12, items=60, days=3, seed=7)).events.to_pandas()
    return events.sort_values("event_time", ignore_index=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    frame = frame.copy()
    frame["session_id"] = pd.Series([None] * len(frame), dtype="string")
    frame.to_parquet(path, index=False)
    return path


def _copy(paths: Paths, target: Path) -> Paths:
    shutil.copytree(paths.home, target, symlinks=True)
    return resolve_home(target)


def _manifest(paths: Paths) -> dict:
    return json.loads((paths.features / exports.MANIFEST).read_text())


# --- publication and the manifest ------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    paths = resolve_home(tmp_path_factory.mktemp("built"))
    load_events(paths, _events())
    report = build(paths)
    return paths, report


def test_exports_are_one_published_folder_with_a_manifest(built):
    paths, report = built
    assert paths.features.is_symlink()
    folder = paths.features.resolve()
    assert folder.parent == paths.home / exports.VERSIONS
    manifest = _manifest(paths)
    assert datetime.fromisoformat(manifest["as_of"]) == report.as_of
    assert set(manifest["files"]) == set(EXPORTS)
    for name, entry in manifest["files"].items():
        query = "select count(*) from read_parquet(?)"
        (rows,) = duckdb.connect().execute(query, [str(folder / name)]).fetchone()
        assert entry["rows"] == rows == report.export_rows[name]
    assert exports.verify(folder).as_of == report.as_of


def test_a_later_build_carries_other_files_and_keeps_two_previous_versions(built, tmp_path):
    paths = _copy(built[0], tmp_path / "home")
    (paths.features / "user_embeddings.parquet").write_bytes(b"written by training")
    for _ in range(4):
        build(paths)
    assert (paths.features / "user_embeddings.parquet").read_bytes() == b"written by training"
    versions = sorted(p.name for p in (paths.home / exports.VERSIONS).iterdir())
    assert len(versions) == 1 + exports.KEEP_PREVIOUS
    assert paths.features.resolve().name == versions[-1]


def test_a_home_from_before_versions_is_moved_into_them(built, tmp_path):
    old = resolve_home(tmp_path / "old")
    old.ensure()
    shutil.copy(built[0].warehouse, old.warehouse)
    shutil.copytree(built[0].features, old.features)  # a plain folder, as builds wrote it
    (old.features / exports.MANIFEST).unlink()
    build(old)
    assert old.features.is_symlink() and exports.verify(old.features.resolve())
    assert any(p.name.endswith("-unversioned") for p in (old.home / exports.VERSIONS).iterdir())


def test_materialize_refuses_a_mix_of_builds(built, tmp_path):
    paths, report = built
    mixed = _copy(paths, tmp_path / "mixed")
    earlier = report.as_of - timedelta(days=1)
    other = resolve_home(tmp_path / "other")
    shutil.copytree(paths.home, other.home, symlinks=True)
    build(other, as_of=earlier)
    name = "user_interest.parquet"
    target = mixed.features / name
    target.unlink()
    shutil.copy(other.features / name, target)
    with pytest.raises(MaterializationError, match="mix builds; run `recsys build`") as caught:
        materialize(mixed)
    assert "\n" not in str(caught.value)
    with pytest.raises(NotMaterialized):  # nothing was loaded
        online_features(mixed, 1)
    # Without a manifest (exports copied in by hand), the files' as_of must agree.
    (mixed.features.resolve() / exports.MANIFEST).unlink()
    with pytest.raises(MaterializationError, match=r"mix builds \(item_stats.parquet as of"):
        materialize(mixed)


def test_ingest_build_materialize_in_a_home_with_a_quote_and_a_space(tmp_path):
    home = tmp_path / "it's a home"
    source = _write_parquet(_events(), tmp_path / "events.parquet")
    runner = CliRunner()
    for command in (
        ["ingest", str(source), "--format", "parquet"],
        ["build"],
        ["features", "materialize"],
    ):
        result = runner.invoke(app, [*command, "--home", str(home)])
        assert result.exit_code == 0, result.output
    assert "materialised" in result.output
    paths = resolve_home(home)
    assert exports.verify(paths.features.resolve()) is not None
    (user,) = (
        duckdb.connect()
        .execute(
            "select min(user_id) from read_parquet(?)",
            [str(paths.features / "user_interest.parquet")],
        )
        .fetchone()
    )
    assert online_features(paths, user)["user_id"] == user
    with read_engine(paths).connect() as con:
        assert con.execute(text("select count(*) from events")).scalar() > 0


# --- kill tests --------------------------------------------------------------------------------

# Runs the CLI with one function wrapped to SIGKILL the process when it is called for the nth
# time (counting only calls whose arguments' repr contains `match`).
KILLER = """
import importlib, os, signal, sys
module, attribute, nth, match = sys.argv[1:5]
owner = importlib.import_module(module)
*parents, name = attribute.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real = getattr(owner, name)
calls = 0
def killing(*args, **kwargs):
    global calls
    calls += match in repr(args)
    if calls == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(owner, name, killing)
from recsys.cli import app
app(sys.argv[5:], prog_name="recsys")
"""


@dataclass(frozen=True)
class KillPoint:
    module: str
    attribute: str
    nth: int = 1
    match: str = ""

    def __str__(self) -> str:
        return f"{self.attribute}#{self.nth}{'~' + self.match if self.match else ''}"


def _run_killed(point: KillPoint, command: list[str], paths: Paths) -> None:
    argv = [str(point.module), point.attribute, str(point.nth), point.match]
    done = subprocess.run(
        [sys.executable, "-c", KILLER, *argv, *command, "--home", str(paths.home)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == -signal.SIGKILL, f"{point} not reached:\n{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def kill_homes(tmp_path_factory: pytest.TempPathFactory):
    """`served`: day 1-2 ingested, built, materialised, and three buys applied online since
    (not drained: only the updater's state has them); `ingested`: that plus the next day's
    file ingested; `rebuilt`: that plus its build. Plus the next day's file itself."""
    root = tmp_path_factory.mktemp("kills")
    events = _events()
    cut = events.event_time.min().normalize() + timedelta(days=2)
    first = _write_parquet(events[events.event_time < cut], root / "first.parquet")
    later = _write_parquet(events[events.event_time >= cut], root / "later.parquet")
    served = resolve_home(root / "served")
    ingest_file(served, first, fmt="parquet")
    build(served)
    materialize(served)
    user = int(events.groupby("user_id").size().idxmin())  # a light history: 3 buys lead
    after = events.event_time.max().to_pydatetime() + timedelta(hours=1)
    updater = OnlineUpdater.for_store(served, feature_store(served))
    for minute in range(3):
        updater.apply(Event(user, 1, "buy", after + timedelta(minutes=minute), NEW_CATEGORY))
    updater.close()
    assert _serves_the_buys(served, user)
    ingested = _copy(served, root / "ingested")
    ingest_file(ingested, later, fmt="parquet")
    rebuilt = _copy(ingested, root / "rebuilt")
    build(rebuilt)
    return {"served": served, "ingested": ingested, "rebuilt": rebuilt}, later, user


def _counts(paths: Paths) -> tuple[int, int, int]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return tuple(
            con.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("events", "quarantine_events", "ingested_files")
        )
    finally:
        con.close()


def _as_of(paths: Paths) -> datetime:
    return exports.verify(paths.features.resolve()).as_of


def _seeded_as_of(paths: Paths) -> datetime | None:
    state = UserState(paths.feast / STATE_FILE, _config())
    try:
        return state.seeded_as_of()
    finally:
        state.close()


def _config():
    from recsys.config import FeatureConfig

    return FeatureConfig()


def _serves_the_buys(paths: Paths, user: int) -> bool:
    top = online_features(paths, user)["user_interest_short__top_categories_short"]
    return top[0] == NEW_CATEGORY


INGEST_POINTS = [
    KillPoint("recsys.warehouse.ingest", "_validate"),  # reading, before any write
    KillPoint("recsys.warehouse.ingest", "_commit"),  # staged, before the warehouse opens
    # inside the transaction, after the events were inserted
    KillPoint("recsys.warehouse.ingest", "_scalar", match="quarantine_events"),
    KillPoint("recsys.warehouse.ingest", "IngestReport.summary"),  # committed
]
BUILD_POINTS = [
    KillPoint("recsys.warehouse.build", "_write_parquet", nth=2),  # one export written
    KillPoint("recsys.warehouse.build", "_write_parquet", nth=5),  # four written
    KillPoint("recsys.warehouse.exports", "seal"),  # all written, no manifest
    KillPoint("recsys.warehouse.exports", "_carry_others_files"),  # manifest written
    KillPoint("recsys.warehouse.exports", "publish"),  # marts committed, link not swapped
    KillPoint("recsys.warehouse.exports", "_prune"),  # link swapped
]
MATERIALIZE_POINTS = [
    KillPoint("recsys.features.materialize", "_bulk_materialize"),  # registry applied
    KillPoint("recsys.features.materialize", "_check_materialized"),  # online rows written
    KillPoint("recsys.features.materialize", "_seed"),  # before the state is reseeded
    KillPoint("recsys.online.seed", "_push_rows"),  # inside the reseed, replay done
    KillPoint("recsys.features.materialize", "MaterializationReport.summary"),  # all done
]


@pytest.mark.slow
@pytest.mark.parametrize("point", INGEST_POINTS, ids=str)
def test_killed_ingest_leaves_the_warehouse_whole(kill_homes, tmp_path, point):
    homes, later, _ = kill_homes
    paths = _copy(homes["served"], tmp_path / "home")
    before, after = _counts(homes["served"]), _counts(homes["ingested"])
    _run_killed(point, ["ingest", str(later), "--format", "parquet"], paths)
    assert _counts(paths) in (before, after)  # never a part of the file
    ingest_file(paths, later, fmt="parquet")
    assert _counts(paths)[:2] == after[:2]


@pytest.mark.slow
@pytest.mark.parametrize("point", BUILD_POINTS, ids=str)
def test_killed_build_leaves_the_previous_exports_usable(kill_homes, tmp_path, point):
    homes, _, user = kill_homes
    paths = _copy(homes["ingested"], tmp_path / "home")
    old, new = _as_of(homes["served"]), _as_of(homes["rebuilt"])
    _run_killed(point, ["build"], paths)
    # One build's exports, whole; the service's online rows and state are untouched.
    assert _as_of(paths) in (old, new)
    assert _serves_the_buys(paths, user)
    if point.attribute == "publish":
        # Killed between the marts' commit and the link's rename: new marts beside the
        # previous exports, which materialize refuses in one line until the next build.
        with pytest.raises(MaterializationError, match="run `recsys build` again"):
            materialize(paths)
    else:
        assert materialize(paths).seed.as_of == _as_of(paths)
    build(paths)
    assert _as_of(paths) == new
    assert materialize(paths).seed.as_of == new
    assert _serves_the_buys(paths, user)


@pytest.mark.slow
@pytest.mark.parametrize("point", MATERIALIZE_POINTS, ids=str)
def test_killed_materialize_loses_no_acknowledged_event(kill_homes, tmp_path, point):
    homes, _, user = kill_homes
    paths = _copy(homes["rebuilt"], tmp_path / "home")
    old, new = _seeded_as_of(homes["served"]), _as_of(paths)
    _run_killed(point, ["features", "materialize"], paths)
    assert _seeded_as_of(paths) in (old, new)
    online_features(paths, user)  # the online store still serves
    report = materialize(paths)
    assert (report.seed.as_of, report.seed.replayed) == (new, 3)
    assert _serves_the_buys(paths, user)
