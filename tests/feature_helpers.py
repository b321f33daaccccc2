"""Helpers shared by the feature-store and online-updater tests: small warehouses and builds."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from recsys.home import Paths
from recsys.warehouse.build import build
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate


def load_events(paths: Paths, events: pd.DataFrame) -> None:
    """Ingest canonical events (user_id, item_id, category_id, behavior, event_time)."""
    frame = events.copy()
    if "session_id" not in frame:
        frame["session_id"] = pd.Series([None] * len(frame), dtype="string")
    paths.ensure()
    source = paths.home / "test_events.parquet"
    frame.to_parquet(source, index=False)
    ingest_file(paths, source, fmt="parquet")


def simulated_home(
    paths: Paths, *, users: int = 40, items: int = 200, days: int = 4, start: datetime | None = None
) -> pd.DataFrame:
    """Fill a home's warehouse with a small simulation and build it; returns the events."""
    extra = {"start": start} if start else {}
    sim = simulate(SimulationConfig(users=users, items=items, days=days, seed=7, **extra))
    events = sim.events.to_pandas()
    load_events(paths, events)
    build(paths)
    return events


def online_snapshot(paths: Paths, settings, entity_ids: dict[str, list[int]]) -> tuple[dict, dict]:
    """Everything the online store holds for the given entities: the stored records (SQLite
    table rows, or Redis hashes) and ``get_online_features`` of every view, per join key."""
    from feast import ValueType

    from recsys.features import feast_compat, online_store
    from recsys.features.repo import feature_store

    store = feature_store(paths, settings)
    views = [v for v in store.list_feature_views() if v.online]
    online = {}
    for view in views:
        key, _ = online_store.join_key(view)
        if not entity_ids.get(key):
            continue
        got = store.get_online_features(
            features=[f"{view.name}:{f.name}" for f in view.features],
            entity_rows=[{key: i} for i in entity_ids[key]],
        ).to_dict()
        online[view.name] = got
    stored: dict = {}
    if settings.kind == "sqlite":
        import sqlite3

        con = sqlite3.connect(str(paths.feast / "online_store.db"))
        for (table,) in con.execute("select name from sqlite_master where type = 'table'"):
            stored[table] = con.execute(f'select * from "{table}" order by 1, 2').fetchall()
    else:
        client = feast_compat.redis_client(store)
        for key_name, ids in entity_ids.items():
            for key in online_store.entity_keys(key_name, ValueType.INT64, ids):
                stored[key] = client.hgetall(key + b"recsys")
    return stored, online


def delete_redis_keys(paths: Paths, settings, entity_ids: dict[str, list[int]]) -> None:
    """Remove these entities' hashes (only theirs: the Redis database may be shared)."""
    from feast import ValueType

    from recsys.features import feast_compat, online_store
    from recsys.features.repo import feature_store

    store = feature_store(paths, settings)
    client = feast_compat.redis_client(store)
    for key_name, ids in entity_ids.items():
        keys = online_store.entity_keys(key_name, ValueType.INT64, ids)
        client.delete(*[key + b"recsys" for key in keys])
