"""Forgetting a user (``recsys forget``): afterwards no store of the home holds a row of the
user, the model still verifies, and neither re-ingesting the source file nor the inbox drain
brings the user back.

The search below is independent of the code under test: it looks at every DuckDB base table
(user columns, and text columns for a field equal to the id), every Parquet file under the home,
every SQLite file (user columns and the user's online-store entity key) and every npz file.

The home has a tiny trained model (one training per module, about 20-60 s on 2 cores)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import duckdb
import polars as pl
import pytest
from model_helpers import train_learned
from typer.testing import CliRunner

from recsys.cli import app
from recsys.features.materialize import materialize
from recsys.home import Paths, resolve_home
from recsys.models.artifacts import ANN_FILE, ArtifactError, latest_verified, load_arrays, verify
from recsys.serving.inbox import EventInbox, InboxDrainer, InboxEvent
from recsys.serving.settings import ServiceSettings
from recsys.warehouse.build import build
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.slow
NO_USER = 1_000_001


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV event log outside every home, with one bad row (unknown behaviour) for each of two
    users, so that the quarantine holds raw text that mentions them."""
    sim = simulate(SimulationConfig(users=30, items=360, days=4, seed=7, categories=12))
    events = sim.events.select("user_id", "item_id", "category_id", "behavior", "event_time")
    path = tmp_path_factory.mktemp("source") / "events.csv"
    events.write_csv(path)
    busiest = events.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    when = events["event_time"][0].isoformat()
    with path.open("a") as handle:
        for user in busiest["user_id"][:2]:
            # no other field is a user id
            handle.write(f"{user},{NO_USER},{NO_USER},teleport,{when}\n")
    return path


@pytest.fixture(scope="module")
def trained(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """ingest -> build -> materialise -> a tiny trained model (served policy forced to the
    learned one, which keeps the ANN table) -> two scored runs."""
    pytest.importorskip("tensorflow")
    from recsys.models.training import score_home

    paths = resolve_home(tmp_path_factory.mktemp("forget") / "home")
    ingest_file(paths, source, fmt="csv")
    build(paths)
    materialize(paths)
    train_learned(paths)
    score_home(paths, k=10)
    score_home(paths, k=10)
    return paths


@pytest.fixture
def home(trained: Paths, tmp_path: Path) -> Paths:
    """A copy of the trained home, with inbox events of two users not drained yet."""
    paths = resolve_home(tmp_path / "home")
    shutil.copytree(trained.home, paths.home)
    _post(paths, [busiest_user(paths), second_user(paths)])
    return paths


def _post(paths: Paths, users: list[int]) -> None:
    inbox = EventInbox(ServiceSettings(paths=paths).inbox)
    try:
        inbox.append([InboxEvent(user, 1, 1, "view", 1_700_000_000_000_000) for user in users])
    finally:
        inbox.close()


def busiest_user(paths: Paths) -> int:
    return _ranked_users(paths)[0]


def second_user(paths: Paths) -> int:
    return _ranked_users(paths)[1]


def _ranked_users(paths: Paths) -> list[int]:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        rows = con.execute(
            "select user_id from events group by 1 order by count(*) desc, 1"
        ).fetchall()
    return [user for (user,) in rows]


# --- the search --------------------------------------------------------------------------------


def occurrences(paths: Paths, user: int) -> dict[str, int]:
    """Rows that hold the user, per place, in every store under the home (zeros left out)."""
    found = {**_in_duckdb(paths, user), **_in_files(paths, user)}
    return {place: count for place, count in found.items() if count}


def _in_duckdb(paths: Paths, user: int) -> dict[str, int]:
    found = {}
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        columns = con.execute(
            "select table_schema, table_name, column_name, data_type "
            "from information_schema.columns join information_schema.tables "
            "using (table_catalog, table_schema, table_name) "
            "where table_type = 'BASE TABLE' and table_name != 'forgotten_users'"
        ).fetchall()
        for schema, table, column, dtype in columns:
            name = f'"{schema}"."{table}"'
            if column == "user_id":
                sql = f"select count(*) from {name} where user_id = ?"
            elif dtype == "VARCHAR":
                # a comma-separated field (of a quarantined source row, say) equal to the id
                fields = f"""list_transform(string_split("{column}", ','), lambda f: trim(f))"""
                sql = f"select count(*) from {name} where list_contains({fields}, ?::varchar)"
            else:
                continue
            (found[f"duckdb {schema}.{table}.{column}"],) = con.execute(sql, [user]).fetchone()
    return found


def _in_files(paths: Paths, user: int) -> dict[str, int]:
    from feast import ValueType

    from recsys.features.online_store import entity_keys

    (key,) = entity_keys("user_id", ValueType.INT64, [user])
    found = {}
    for path in sorted(p for p in paths.home.rglob("*") if p.is_file()):
        where = str(path.relative_to(paths.home))
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            for column in (c for c in frame.columns if c.endswith("user_id")):
                found[f"{where}:{column}"] = frame.filter(pl.col(column) == user).height
        elif path.suffix == ".npz":
            for name, array in load_arrays(path).items():
                if name.endswith("user_ids"):
                    found[f"{where}:{name}"] = int((array == user).sum())
        elif path.read_bytes()[:16] == b"SQLite format 3\x00":
            found.update(_in_sqlite(path, where, user, key))
    return found


def _in_sqlite(path: Path, where: str, user: int, key: bytes) -> dict[str, int]:
    found = {}
    con = sqlite3.connect(str(path))
    try:
        tables = [t for (t,) in con.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            columns = {row[1] for row in con.execute(f'pragma table_info("{table}")')}
            if "user_id" in columns:
                sql, args = (
                    f'select count(*) from "{table}" where user_id in (?, ?)',
                    (user, str(user)),
                )
            elif "entity_key" in columns:
                sql, args = f'select count(*) from "{table}" where entity_key = ?', (key,)
            else:
                continue
            (found[f"{where}:{table}"],) = con.execute(sql, args).fetchone()
    finally:
        con.close()
    return found


# --- the tests ---------------------------------------------------------------------------------


def _forget(paths: Paths, user: int) -> dict:
    result = CliRunner().invoke(app, ["forget", "--user", str(user), "--home", str(paths.home)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_forgotten_user_is_in_no_store_and_stays_out(home: Paths, source: Path):
    user, other = busiest_user(home), second_user(home)
    before = occurrences(home, user)
    stores = {place.split("/")[0].split(" ")[0] for place in before}
    # the user is everywhere at first: warehouse, quarantine, exports, online store and state,
    # the inbox and the model's ANN table
    assert {"duckdb", "features", "feast", "serving", "models"} <= stores
    assert before["duckdb main.quarantine_events.raw"] == 1
    assert any(place.endswith(f"{ANN_FILE}:gnn_user_ids") for place in before)
    others_before = occurrences(home, other)
    folder, manifest = latest_verified(home.models)

    report = _forget(home, user)

    assert occurrences(home, user) == {}  # rows left after forgetting a user
    assert report["total"] == sum(before.values())
    assert report["inbox"] == 1 and report["warehouse"]["quarantine_events"] == 1
    # the model still verifies, is still the newest, and loads
    assert latest_verified(home.models)[0] == folder
    assert verify(folder)["created_at"] == manifest["created_at"]
    assert user not in load_arrays(folder / ANN_FILE)["gnn_user_ids"]
    from recsys.models.interest import InterestModel

    assert InterestModel.load(folder).policy_ == "learned"
    # nobody else lost a row
    assert occurrences(home, other) == others_before

    # re-ingesting the source file does not bring the user back, nor quarantines their rows
    again = ingest_file(home, source, fmt="csv")
    assert again.loaded == 0
    assert again.forgotten == before["duckdb main.events.user_id"] + 1
    assert occurrences(home, user) == {}
    # neither does the inbox drain
    _post(home, [user])
    drainer = InboxDrainer(
        home,
        ServiceSettings(paths=home).inbox,
        interval_s=3600.0,
        batch=100,
        lock_timeout_s=5.0,
        retention_s=3600.0,
    )
    drainer.applied = 2**62
    inbox = EventInbox(ServiceSettings(paths=home).inbox)
    try:
        drainer.drain(inbox)
        assert len(inbox) == 0
    finally:
        inbox.close()
    assert occurrences(home, user) == {}
    # the other user's inbox event was drained as usual
    assert occurrences(home, other)["duckdb main.events.user_id"] == (
        others_before["duckdb main.events.user_id"] + 1
    )


def test_forgetting_twice_removes_nothing_more(home: Paths):
    user = busiest_user(home)
    assert _forget(home, user)["total"] > 0
    assert _forget(home, user)["total"] == 0
    with duckdb.connect(str(home.warehouse), read_only=True) as con:
        assert con.execute("select list(user_id) from forgotten_users").fetchone()[0] == [user]
    verify(latest_verified(home.models)[0])


def test_run_counts_follow_the_forgotten_rows(home: Paths):
    user = busiest_user(home)
    _forget(home, user)
    with duckdb.connect(str(home.warehouse), read_only=True) as con:
        mismatched = con.execute(
            "select r.run_id from recommendation_runs r join (select run_id, count(*) as n, "
            "count(distinct user_id) as users from recommendations group by 1) c using (run_id) "
            "where r.n_rows != c.n or r.n_users != c.users"
        ).fetchall()
    assert mismatched == []


def test_a_tampered_model_folder_is_scrubbed_but_not_re_signed(home: Paths):
    user = busiest_user(home)
    folder, _ = latest_verified(home.models)
    with (folder / "ranking.json").open("a") as handle:
        handle.write(" ")
    manifest = (folder / "manifest.json").read_bytes()
    _forget(home, user)
    assert user not in load_arrays(folder / ANN_FILE)["gnn_user_ids"]
    assert (folder / "manifest.json").read_bytes() == manifest
    with pytest.raises(ArtifactError, match="tampered"):
        verify(folder)


@pytest.mark.redis
def test_the_redis_online_store_forgets_the_user(trained: Paths, tmp_path: Path, redis_store):
    from feast import ValueType

    from recsys.features import feast_compat
    from recsys.features.online_store import entity_keys
    from recsys.features.repo import PROJECT, feature_store
    from recsys.forget import forget_user

    paths = resolve_home(tmp_path / "home")
    shutil.copytree(trained.home, paths.home)
    settings = redis_store(paths, 4)
    materialize(paths, online=settings)
    user, other = busiest_user(paths), second_user(paths)
    client = feast_compat.redis_client(feature_store(paths, settings))
    keys = [k + PROJECT.encode() for k in entity_keys("user_id", ValueType.INT64, [user, other])]
    assert client.exists(*keys) == 2
    report = forget_user(paths, user, online=settings)
    assert report.online_store == {"redis": 1}
    assert (client.exists(keys[0]), client.exists(keys[1])) == (0, 1)
    assert user not in load_arrays(latest_verified(paths.models)[0] / ANN_FILE)["gnn_user_ids"]
