"""The Feast feature repo and recsys.features: definitions, apply, materialise, reads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from feast import FeatureView
from feature_helpers import delete_redis_keys, load_events, online_snapshot, simulated_home

from recsys.features.errors import (
    FeatureStoreError,
    MaterializationError,
    NotMaterialized,
    UnknownUser,
)
from recsys.features.materialize import export_time_range, materialize
from recsys.features.read import OnlineReader, historical_features, online_features
from recsys.features.redis_claim import claim_redis, release_redis
from recsys.features.repo import FEATURES_DIR_ENV, SQLITE, apply, feature_store, load_definitions
from recsys.home import resolve_home
from recsys.warehouse.build import build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A small simulated home, built, applied and materialised (shared: read-only tests)."""
    paths = resolve_home(tmp_path_factory.mktemp("home"))
    simulated_home(paths)
    report = materialize(paths)
    return paths, report


def _final_rows(paths, name: str, key: str) -> pd.DataFrame:
    return (
        duckdb.connect()
        .execute(
            f"select * from read_parquet(?) qualify row_number() over "
            f"(partition by {key} order by event_timestamp desc) = 1",
            [str(paths.features / f"{name}.parquet")],
        )
        .fetchdf()
    )


def test_definitions_follow_conventions(built):
    paths, _ = built
    objects = {obj.name: obj for obj in load_definitions(paths.features)}
    assert {"user", "item", "category"} <= objects.keys()
    views = [o for o in objects.values() if isinstance(o, FeatureView)]
    assert {v.name for v in views} >= {
        "user_interest_short",
        "user_interest_long",
        "user_interest_shift",
        "user_behavior_funnel",
        "user_recent_sequence",
        "item_stats",
        "user_embedding",
        "item_embedding",
    }
    for view in views:
        assert view.ttl and view.description
        for field in view.features:
            assert field.description, f"{view.name}.{field.name} has no description"
        # Sources point at this home's exports, not at the default ../data.
        assert Path(view.batch_source.path).parent == paths.features.resolve()
    for service in ("two_tower_v1", "two_tower_v1_query", "two_tower_v1_candidate", "gnn_v1"):
        assert service in objects


def test_definitions_fail_clearly_without_exports(tmp_path):
    with pytest.raises(FeatureStoreError, match=r"recsys build"):
        load_definitions(tmp_path / "features")


def test_materialize_uses_the_datas_time_range(built):
    paths, report = built
    funnel = _final_rows(paths, "user_behavior_funnel", "user_id")
    assert report.rows["user_behavior_funnel"] == len(funnel) > 0
    assert report.rows["item_stats"] == len(_final_rows(paths, "item_stats", "item_id"))
    low, high = export_time_range(paths)
    assert (report.start, report.end) == (low, high)


def test_online_features_match_the_latest_export_row(built):
    paths, _ = built
    interest = _final_rows(paths, "user_interest", "user_id").iloc[0]
    funnel = _final_rows(paths, "user_behavior_funnel", "user_id").set_index("user_id")
    got = online_features(paths, int(interest.user_id))
    assert got["user_interest_short__top_categories_short"] == list(interest.top_categories_short)
    assert got["user_interest_long__top_scores_long"] == pytest.approx(
        list(interest.top_scores_long), abs=1e-12
    )
    assert got["user_behavior_funnel__n_view"] == funnel.loc[interest.user_id, "n_view"]


def test_online_features_errors(built, tmp_path):
    paths, _ = built
    with pytest.raises(UnknownUser, match="user 987654321"):
        online_features(paths, 987654321)
    fresh = resolve_home(tmp_path / "fresh")
    shutil.copytree(paths.features, fresh.features)
    apply(fresh)
    with pytest.raises(NotMaterialized, match="recsys features materialize"):
        online_features(fresh, 1)


def test_materialize_fails_loudly_on_empty_exports(built, tmp_path):
    paths, _ = built
    empty = resolve_home(tmp_path / "empty")
    empty.features.mkdir(parents=True)
    for source in paths.features.glob("*.parquet"):
        duckdb.connect().execute(
            f"copy (select * from read_parquet('{source}') limit 0) "
            f"to '{empty.features / source.name}' (format parquet)"
        )
    with pytest.raises(MaterializationError, match="hold no rows"):
        materialize(empty)


def test_historical_year_2017_data_materialises(tmp_path):
    # Wall-clock incremental materialisation would load nothing from a 2017 log.
    paths = resolve_home(tmp_path)
    simulated_home(paths, users=10, items=50, days=2, start=datetime(2017, 11, 25))
    report = materialize(paths)
    assert report.rows["user_interest_short"] > 0
    assert report.start.year == 2017


def test_point_in_time_join_never_sees_the_label_time_or_later(tmp_path):
    """Snapshots at day2 00:00, exactly at the label time (day2 10:00) and at day3 00:00.

    user 1: view @ day1 12:00, view @ day2 09:00, cart @ day2 10:00 (= label), buy @ day3 10:00.
    """
    paths = resolve_home(tmp_path)
    day1 = datetime(2024, 3, 1)
    events = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1],
            "item_id": [10, 11, 12, 12],
            "category_id": [5, 5, 6, 6],
            "behavior": ["view", "view", "cart", "buy"],
            "event_time": pd.to_datetime(
                ["2024-03-01 12:00", "2024-03-02 09:00", "2024-03-02 10:00", "2024-03-03 10:00"]
            ),
        }
    )
    load_events(paths, events)
    label = datetime(2024, 3, 2, 10)
    build(paths, snapshots=[datetime(2024, 3, 2), label, datetime(2024, 3, 3)])
    stamps = duckdb.connect().execute(
        "select event_timestamp from read_parquet(?) where user_id = 1 order by 1",
        [str(paths.features / "user_behavior_funnel.parquet")],
    )
    assert label in [row[0] for row in stamps.fetchall()]
    apply(paths)
    entity_df = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1],
            "event_timestamp": [
                day1.replace(hour=11),  # before the first snapshot: nothing known
                label,  # row stamped exactly at the label: events < label only
                datetime(2024, 3, 2, 23),  # the cart at 10:00 is not in a snapshot yet
                datetime(2024, 3, 3, 5),  # day3 00:00 snapshot: cart, no buy
                datetime(2024, 3, 4),  # final snapshot: everything
            ],
        }
    )
    got = historical_features(paths, entity_df, "user_profile_v1")
    assert list(got["event_timestamp"]) == list(entity_df["event_timestamp"])
    assert pd.isna(got["user_behavior_funnel__n_view"][0])
    assert list(got["user_behavior_funnel__n_view"][1:]) == [2, 2, 2, 2]
    assert list(got["user_behavior_funnel__n_cart"][1:]) == [0, 0, 1, 1]
    assert list(got["user_behavior_funnel__n_buy"][1:]) == [0, 0, 0, 1]
    assert list(got["user_recent_sequence__seq_len"][1:]) == [2, 2, 3, 4]


def test_two_tower_service_joins_user_and_item_sides(built):
    paths, _ = built
    funnel = _final_rows(paths, "user_behavior_funnel", "user_id").iloc[0]
    item = _final_rows(paths, "item_stats", "item_id").iloc[0]
    entity_df = pd.DataFrame(
        {
            "user_id": [int(funnel.user_id)],
            "item_id": [int(item.item_id)],
            "event_timestamp": [max(funnel.event_timestamp, item.event_timestamp)],
        }
    )
    got = historical_features(paths, entity_df, "two_tower_v1").iloc[0]
    # Both sides have an n_view; full feature names keep them apart.
    assert got["user_behavior_funnel__n_view"] == funnel.n_view
    assert got["item_stats__n_view"] == item.n_view


@pytest.mark.slow
def test_feast_apply_cli_on_a_fresh_clone(built, tmp_path):
    """`cd feature_repo && feast apply` fails with the command to run, then works once built."""
    paths, _ = built
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    feast = Path(sys.executable).parent / "feast"
    env = {k: v for k, v in os.environ.items() if k != FEATURES_DIR_ENV}
    env["PYTHONPATH"] = str(ROOT)
    failed = subprocess.run(
        [str(feast), "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode != 0
    assert "make demo" in failed.stdout + failed.stderr
    shutil.copytree(paths.features, tmp_path / "data" / "features")
    ok = subprocess.run(
        [str(feast), "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (tmp_path / "data" / "feast" / "registry.db").exists()


@pytest.mark.redis
def test_redis_online_store_serves_the_same_rows(built, redis_store):
    paths, _ = built
    redis_home = resolve_home(paths.home.parent / "redis_home")
    shutil.copytree(paths.features, redis_home.features, dirs_exist_ok=True)
    settings = redis_store(redis_home, 0)
    report = materialize(redis_home, online=settings)
    assert report.total_rows > 0
    user = int(_final_rows(paths, "user_interest", "user_id").user_id.iloc[0])
    assert online_features(redis_home, user, online=settings) == online_features(paths, user)
    profile = OnlineReader(feature_store(redis_home, settings)).read(user)
    assert profile.features == _without_key(online_features(paths, user))


def test_cli_online_prints_json_and_fails_clearly(built):
    import json

    from typer.testing import CliRunner

    from recsys.cli import app

    paths, _ = built
    user = int(_final_rows(paths, "user_interest", "user_id").user_id.iloc[0])
    runner = CliRunner()
    ok = runner.invoke(app, ["features", "online", "--user", str(user), "--home", str(paths.home)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["user_id"] == user
    unknown = runner.invoke(
        app, ["features", "online", "--user", "987654321", "--home", str(paths.home)]
    )
    assert unknown.exit_code == 2
    assert "no online features for user 987654321" in unknown.output


def _entity_ids(paths) -> dict[str, list[int]]:
    con = duckdb.connect()

    def ids(name: str, key: str) -> list[int]:
        path = str(paths.features / f"{name}.parquet")
        return [
            x for (x,) in con.execute(f"select distinct {key} from '{path}' order by 1").fetchall()
        ]

    # One id of each kind that no export holds: both paths must leave it absent.
    return {
        "user_id": ids("user_interest", "user_id") + [987654321],
        "item_id": ids("item_stats", "item_id") + [987654321],
    }


def _copy_with_embeddings(paths, home):
    """The built exports plus a user_embeddings export with awkward rows: a null embedding, an
    empty one, a NaN component, and an older row that the latest one must replace."""
    target = resolve_home(home)
    shutil.copytree(paths.features, target.features)
    users = _entity_ids(paths)["user_id"][:5]
    stamp = export_time_range(paths)[1]
    frame = pd.DataFrame(
        {
            "user_id": users + [users[0]],
            "event_timestamp": [stamp] * 5 + [stamp - pd.Timedelta(days=1)],
            "embedding": [[0.5, -1.25], None, [], [float("nan"), 2.0], [1e-3, 3.0], [9.0, 9.0]],
        }
    )
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute(
        f"copy (select user_id, event_timestamp, embedding::float[] as embedding from frame) "
        f"to '{target.features / 'user_embeddings.parquet'}' (format parquet)"
    )
    return target


def _assert_same_online_store(
    feast_home, bulk_home, feast_settings, bulk_settings, before_bulk=None
):
    ids = _entity_ids(feast_home)
    feast_report = materialize(feast_home, online=feast_settings, fast=False)
    feast_stored, feast_online = online_snapshot(feast_home, feast_settings, ids)
    if before_bulk:
        before_bulk(ids)
    bulk_report = materialize(bulk_home, online=bulk_settings)
    bulk_stored, bulk_online = online_snapshot(bulk_home, bulk_settings, ids)
    assert bulk_report.rows == feast_report.rows
    assert bulk_report.rows["user_embedding"] == 5
    assert sum(len(rows) for rows in feast_stored.values()) > 1000
    assert bulk_stored == feast_stored
    assert repr(bulk_online) == repr(feast_online)  # repr: NaN == NaN, types exact
    intervals = {
        home: {
            v.name: v.materialization_intervals
            for v in feature_store(home, settings).list_feature_views()
        }
        for home, settings in ((feast_home, feast_settings), (bulk_home, bulk_settings))
    }
    assert intervals[bulk_home] == intervals[feast_home]
    assert len(intervals[bulk_home]["user_embedding"]) == 1


def test_bulk_materialize_writes_exactly_what_feast_writes(built, tmp_path):
    """Feast's own materialisation (fast=False) and the bulk path, same exports, two SQLite
    stores: identical table rows (keys, value protos, value_text, event_ts), identical
    get_online_features for every entity and view, identical registry intervals."""
    paths, _ = built
    feast_home = _copy_with_embeddings(paths, tmp_path / "feast")
    bulk_home = _copy_with_embeddings(paths, tmp_path / "bulk")
    _assert_same_online_store(feast_home, bulk_home, SQLITE, SQLITE)


@pytest.mark.redis
def test_bulk_materialize_writes_exactly_what_feast_writes_to_redis(built, tmp_path, redis_store):
    paths, _ = built
    feast_home = _copy_with_embeddings(paths, tmp_path / "feast")
    bulk_home = _copy_with_embeddings(paths, tmp_path / "bulk")
    feast_settings, bulk_settings = redis_store(feast_home, 1), redis_store(bulk_home, 2)

    def forget(ids):  # the bulk load starts from nothing (the database outlives test runs)
        delete_redis_keys(bulk_home, bulk_settings, ids)
        assert not any(online_snapshot(bulk_home, bulk_settings, ids)[0].values())

    _assert_same_online_store(
        feast_home, bulk_home, feast_settings, bulk_settings, before_bulk=forget
    )


@pytest.mark.redis
def test_a_redis_database_serves_one_home(tmp_path, redis_store):
    first, second = resolve_home(tmp_path / "first"), resolve_home(tmp_path / "second")
    first.home.mkdir(parents=True)
    settings = redis_store(first, 3)
    redis_store(second, 3)  # released after the test too
    claim_redis(first, settings)
    claim_redis(first, settings)  # a home may reopen its own database
    refused = r"holds the online features of another recsys home \(.*first\)"
    with pytest.raises(FeatureStoreError, match=refused):
        feature_store(second, settings)
    shutil.rmtree(first.home)  # a home of this machine that is gone: its claim is stale
    feature_store(second, settings)
    assert not release_redis(first, settings)

    from typer.testing import CliRunner

    from recsys.cli import app

    release = ["features", "release", "--redis-url", settings.redis_url, "--home"]
    runner = CliRunner()
    assert runner.invoke(app, [*release, str(second.home)]).exit_code == 0
    again = runner.invoke(app, [*release, str(second.home)])
    assert again.exit_code == 2 and "holds no claim" in again.output
    claim_redis(first, settings)  # the database is free again


def test_encode_column_matches_feasts_converter():
    import pyarrow as pa
    from feast import ValueType
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    from recsys.features.online_store import encode_column, encode_values

    columns = [
        (pa.array([0.0, -0.0, 1.5, None, float("nan"), float("inf"), 1e-310]), ValueType.DOUBLE),
        (pa.array([0, -3, 2**62, None, 7, 7]), ValueType.INT64),
        (pa.array([True, False, None, True]), ValueType.BOOL),
        (pa.array(["a", "", None, "é"]), ValueType.STRING),
        (pa.array([[1, -2], [], None, [2**40]]), ValueType.INT64_LIST),
        (pa.array([[0.5, float("nan")], [], None]), ValueType.DOUBLE_LIST),
        (pa.array([["view", ""], [], None]), ValueType.STRING_LIST),
        (pa.array([[1.25, -2.0], None], type=pa.list_(pa.float32())), ValueType.FLOAT_LIST),
        (pa.array([0.1, None], type=pa.float32()), ValueType.FLOAT),  # Feast's converter
        (pa.array([[0.5, None], None], type=pa.list_(pa.float32())), ValueType.FLOAT_LIST),
    ]
    for column, value_type in columns:
        want = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
        values, texts = encode_column(column, value_type)
        assert values == [p.SerializeToString() for p in want], value_type
        assert texts == [extract_text_and_num(p, False)[0] for p in want], value_type
        if column.type.num_fields == 0 or column.values.null_count == 0:
            # Pushed rows are Python values (no null items): the same bytes from them.
            assert encode_values(column.to_pylist(), value_type) == (values, texts), value_type


def _without_key(row: dict) -> dict:
    """``online_features``'s row without its join key: a profile's ``features``."""
    return {name: value for name, value in row.items() if name != "user_id"}


def test_online_reader_reads_what_online_features_reads(built, tmp_path):
    paths, _ = built
    reader = OnlineReader(feature_store(paths))
    users = _entity_ids(paths)["user_id"][:-1]
    for user in users:
        profile = reader.read(user)
        assert profile.user_id == user
        assert profile.features == _without_key(online_features(paths, user))
    assert reader.read(users[0]).as_of == export_time_range(paths)[1].replace(microsecond=0)
    assert reader.read(987654321) is None
    reader.ping()
    fresh = resolve_home(tmp_path / "fresh")
    shutil.copytree(paths.features, fresh.features)
    apply(fresh)
    assert OnlineReader(feature_store(fresh)).read(1) is None
    with pytest.raises(NotMaterialized, match="recsys features apply"):
        OnlineReader(feature_store(resolve_home(tmp_path / "no_repo")))


def test_feast_compat_refuses_an_untested_feast(monkeypatch):
    import importlib.util

    import feast

    from recsys.features import feast_compat

    monkeypatch.setattr(feast, "__version__", "0.99.0")
    spec = importlib.util.spec_from_file_location("feast_compat_probe", feast_compat.__file__)
    with pytest.raises(ImportError, match=r"needs feast 0\.67\.x .* found feast 0\.99\.0"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
