"""String ids end to end: a log keyed by UUIDs (users), SKU codes (items) and genre names
(categories) is ingested, built, trained and scored on BIGINT keys, and every output a person
or app sees (the ``source_ids`` views, the API, ``recsys features online``, ``recsys forget``)
shows the ids as they were in the source. Integer sources are unchanged, and keys are stable
across ingests."""

from __future__ import annotations

import hashlib
import json
import shutil

import duckdb
import polars as pl
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recsys.cli import app
from recsys.features.materialize import materialize
from recsys.home import resolve_home
from recsys.serving.app import create_app
from recsys.serving.settings import ServiceSettings
from recsys.warehouse.build import build
from recsys.warehouse.ids import KEY_BASE, SERVICE_BASE
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate

GENRES = (
    "Comedy", "Drama", "Action", "Horror", "Romance", "Thriller",
    "Documentary", "Animation", "Western", "Musical", "Crime", "Fantasy",
)  # fmt: skip


def _uuid(user: int) -> str:
    h = hashlib.md5(str(user).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _simulated() -> pl.DataFrame:
    sim = simulate(SimulationConfig(users=30, items=360, days=4, seed=7, categories=12))
    return sim.events.select("user_id", "item_id", "category_id", "behavior", "event_time")


def _as_strings(events: pl.DataFrame) -> pl.DataFrame:
    """The same events keyed as a shop would: UUID users, SKU items, genre names."""
    categories = sorted(events["category_id"].unique().to_list())
    genre = dict(zip(categories, GENRES, strict=True))
    return events.with_columns(
        pl.col("user_id").map_elements(_uuid, return_dtype=pl.String),
        pl.format("SKU-{}", pl.col("item_id").cast(pl.String).str.zfill(6)).alias("item_id"),
        pl.col("category_id").replace_strict(genre, return_dtype=pl.String),
    )


def _rows(paths, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _client(paths) -> TestClient:
    return TestClient(create_app(ServiceSettings(paths=paths, drain_interval_s=3600.0)))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory):
    """The integer log and its string-keyed twin, as CSV files."""
    folder = tmp_path_factory.mktemp("logs")
    events = _simulated()
    integer, strings = folder / "integer.csv", folder / "strings.csv"
    events.write_csv(integer)
    _as_strings(events).write_csv(strings)
    return integer, strings, events


@pytest.fixture(scope="module")
def scored(logs, tmp_path_factory: pytest.TempPathFactory):
    """The string log ingested, built, materialised, trained (a tiny model) and scored."""
    pytest.importorskip("tensorflow")
    from model_helpers import train_learned

    from recsys.models.training import score_home

    _, strings, _ = logs
    paths = resolve_home(tmp_path_factory.mktemp("strings") / "home")
    report = ingest_file(paths, strings, fmt="csv")
    assert report.quarantined == 0 and report.loaded == report.rows_read
    build(paths)
    materialize(paths)
    train_learned(paths)
    score_home(paths, k=20)
    return paths


def test_string_ids_get_keys_of_their_own_range(scored, logs):
    _, _, events = logs
    users, items, categories = (
        _rows(scored, f"select count(*), min(key), max(key) from {dim}")[0]
        for dim in ("dim_users", "dim_items", "dim_categories")
    )
    assert users == (events["user_id"].n_unique(), KEY_BASE + 1, KEY_BASE + users[0])
    assert items[0] == events["item_id"].n_unique() and categories[0] == 12
    # the marts are on keys; their source_ids views show the source
    assert _rows(scored, "select count(*) from events where user_id < ?", [KEY_BASE]) == [(0,)]
    shown = _rows(scored, "select distinct category_id from source_ids.user_category_interest")
    assert {c for (c,) in shown} <= set(GENRES) and len(shown) > 1


def test_recommendations_show_source_ids(scored, logs):
    _, _, events = logs
    uuids = {_uuid(u) for u in events["user_id"].unique().to_list()}
    rows = _rows(
        scored,
        "select user_id, item_id, category_id from source_ids.latest_recommendations",
    )
    assert rows and {u for u, _, _ in rows} <= uuids
    assert all(i.startswith("SKU-") and c in GENRES for _, i, c in rows)
    # the table itself keeps the keys, one row per key row
    assert _rows(scored, "select count(*) from latest_recommendations") == [(len(rows),)]


def test_the_api_answers_a_string_user_in_source_ids(scored, logs, tmp_path):
    _, _, events = logs
    paths = resolve_home(tmp_path / "home")
    shutil.copytree(scored.home, paths.home)
    user = _uuid(events["user_id"][0])
    with _client(paths) as client:
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        assert body["user_id"] == user and not body["cold_start"]
        assert body["items"] and all(i["item_id"].startswith("SKU-") for i in body["items"])
        assert all(i["category_id"] in GENRES for i in body["items"])
        interests = client.get(f"/v1/users/{user}/interests").json()
        assert interests["user_id"] == user
        assert {c["category_id"] for c in interests["short"]} <= set(GENRES)
        unknown = client.get("/v1/users/no-such-user/recommendations").json()
        assert unknown["cold_start"] and unknown["user_id"] == "no-such-user"
        assert client.get("/v1/users/no-such-user/interests").status_code == 404
        # a new user, a new item of a new category: keys of the service's range, then the
        # user's refreshed list, in source ids
        first = {"user_id": "new-user", "item_id": "SKU-NEW", "category_id": "Noir"}
        assert client.post("/v1/events", json=first | {"behavior": "view"}).status_code == 200
        posted = client.post(
            "/v1/events?return_recommendations=true&k=5",
            json={"events": [
                {"user_id": "new-user", "item_id": "SKU-NEW", "behavior": "cart"},
                {"user_id": user, "item_id": "SKU-UNKNOWN", "behavior": "view"},
            ]},
        ).json()  # fmt: skip
        outcomes = [r["outcome"] for r in posted["results"]]
        assert outcomes == ["applied", "quarantined"]
        assert posted["results"][0]["item_id"] == "SKU-NEW"
        (refreshed,) = posted["recommendations"]
        assert refreshed["user_id"] == "new-user" and not refreshed["cold_start"]
        assert all(isinstance(i["item_id"], str) for i in refreshed["items"])
    # the drain on shutdown put the service's keys into the warehouse's dims, with the events
    (new_user,) = _rows(paths, "select key from dim_users where source_id = 'new-user'")[0]
    (noir,) = _rows(paths, "select key from dim_categories where source_id = 'Noir'")[0]
    assert new_user >= SERVICE_BASE and noir >= SERVICE_BASE
    assert _rows(
        paths,
        "select item_id, category_id, behavior from source_ids.events "
        "where user_id = 'new-user' order by behavior",
    ) == [("SKU-NEW", "Noir", "cart"), ("SKU-NEW", "Noir", "view")]


def test_features_online_and_forget_take_the_source_id(scored, logs, tmp_path):
    _, _, events = logs
    paths = resolve_home(tmp_path / "home")
    shutil.copytree(scored.home, paths.home)
    user = _uuid(events["user_id"][1])
    runner = CliRunner()
    shown = runner.invoke(app, ["features", "online", "--user", user, "--home", str(paths.home)])
    assert shown.exit_code == 0, shown.output
    row = json.loads(shown.output)
    assert row["user_id"] == user
    assert set(row["user_interest_short__top_categories_short"]) <= set(GENRES)
    missing = runner.invoke(
        app, ["features", "online", "--user", "nobody", "--home", str(paths.home)]
    )
    assert missing.exit_code == 2 and "no user 'nobody'" in missing.output
    forgot = runner.invoke(app, ["forget", "--user", user, "--home", str(paths.home)])
    assert forgot.exit_code == 0, forgot.output
    assert json.loads(forgot.output)["warehouse"]["dim_users"] == 1
    assert _rows(paths, "select count(*) from dim_users where source_id = ?", [user]) == [(0,)]
    assert _rows(paths, "select count(*) from source_ids.events where user_id = ?", [user]) == [
        (0,)
    ]
    # re-ingesting the source does not bring the user back, nor give the id a key again
    again = ingest_file(paths, logs[1], fmt="csv")
    assert again.loaded == 0 and again.forgotten > 0
    assert _rows(paths, "select count(*) from dim_users where source_id = ?", [user]) == [(0,)]


def test_keys_are_stable_across_ingests(logs, tmp_path):
    _, strings, events = logs
    paths = resolve_home(tmp_path / "home")
    frame = pl.read_csv(strings)
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    half = frame.height // 2
    frame.head(half).write_csv(first)
    # the later file repeats ids of the first in another order, and brings new ones
    frame.tail(frame.height - half).reverse().write_csv(later)
    ingest_file(paths, first, fmt="csv")
    before = dict(_rows(paths, "select source_id, key from dim_items"))
    ingest_file(paths, later, fmt="csv")
    ingest_file(paths, first, fmt="csv")  # a repeated ingest adds neither rows nor keys
    after = dict(_rows(paths, "select source_id, key from dim_items"))
    assert {s: after[s] for s in before} == before
    assert len(after) == events["item_id"].n_unique() == len(set(after.values()))
    assert sorted(after.values()) == list(range(KEY_BASE + 1, KEY_BASE + 1 + len(after)))
    natural = ("user_id", "item_id", "behavior", "event_time")
    assert _rows(paths, "select count(*) from events") == [(frame.unique(natural).height,)]
    assert _rows(
        paths,
        "select count(*) from (select user_id, item_id, category_id, behavior, event_time "
        "from source_ids.events except all select * replace (event_time::timestamp as "
        "event_time) from read_csv(?, all_varchar = true, header = true))",
        [str(strings)],
    ) == [(0,)]


def test_an_integer_source_is_unchanged(logs, tmp_path):
    integer, _, events = logs
    paths = resolve_home(tmp_path / "home")
    ingest_file(paths, integer, fmt="csv")
    build(paths)
    for dim in ("dim_users", "dim_items", "dim_categories"):
        assert _rows(paths, f"select count(*) from {dim}") == [(0,)]
    keys = _rows(paths, "select user_id, item_id, category_id from events order by all")
    natural = ("user_id", "item_id", "behavior", "event_time")
    assert keys == sorted(events.unique(natural).select("user_id", "item_id", "category_id").rows())
    shown = _rows(paths, "select user_id, item_id, category_id from source_ids.events order by all")
    assert sorted(tuple(int(v) for v in row) for row in shown) == keys
    materialize(paths)
    user = int(events["user_id"][0])
    with _client(paths) as client:
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
    assert body["user_id"] == user and isinstance(body["items"][0]["item_id"], int)


@pytest.mark.parametrize("fmt", ["taobao", "csv", "parquet", "retailrocket"])
def test_every_format_takes_string_ids(fmt, tmp_path):
    paths = resolve_home(tmp_path / "home")
    rows = [
        ("u-1", "SKU-1", "Comedy", "pv", 1700000000),
        ("u-2", "SKU-2", "Drama", "buy", 1700000100),
    ]
    source = tmp_path / f"log.{fmt}"
    mapping = None
    if fmt == "taobao":
        source.write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    elif fmt == "retailrocket":
        source.write_text(
            "timestamp,visitorid,event,itemid,transactionid\n"
            + "".join(f"{t * 1000},{u},view,{i},\n" for u, i, _, _, t in rows)
        )
        props = tmp_path / "props.csv"
        props.write_text(
            "timestamp,itemid,property,value\n"
            + "".join(f"1600000000000,{i},categoryid,{c}\n" for _, i, c, _, _ in rows)
        )
    else:
        frame = pl.DataFrame(
            rows, schema=["uid", "item_id", "category_id", "behavior", "ts"], orient="row"
        )
        mapping = {"user_id": "uid", "event_time": "ts"}
        if fmt == "parquet":
            frame.write_parquet(source)
        else:
            frame.write_csv(source)
    extra = {"item_properties": props} if fmt == "retailrocket" else {"mapping": mapping}
    report = ingest_file(paths, source, fmt=fmt, **extra)
    assert (report.loaded, report.quarantined) == (2, 0)
    assert _rows(
        paths, "select user_id, item_id, category_id from source_ids.events order by 1"
    ) == [("u-1", "SKU-1", "Comedy"), ("u-2", "SKU-2", "Drama")]
