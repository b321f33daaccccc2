"""Feature-store benchmark: materialisation, online reads and event -> online update latency.

Simulates ~1M events (recsys.warehouse.simulate; 6,000 users x 20,000 items x 30 days), builds
the marts and exports (or reuses a built ``--home``), then for SQLite (and Redis when
``$REDIS_URL`` is set) measures, each against an in-run baseline:

- full materialisation: Feast's ``FeatureStore.materialize`` (baseline, ``fast=False``) vs the
  bulk path (``recsys.features.materialize``): seconds of the load, of the whole call (apply +
  load + read-back check), CPU seconds, rows/s;
- one user's full query-side features (``two_tower_v1_query``): ``get_online_features``
  (baseline), the provider's ``online_read`` with precomputed entity keys, and
  ``recsys.features.read.OnlineReader.read``; plus a raw SQLite select of the same rows;
- 100 items' candidate-side features (``two_tower_v1_candidate``);
- one event -> updated online features (``recsys.online.updater.OnlineUpdater``): one
  transaction per event (``FeastPushWriter``) vs one provider write per view (baseline).

Usage: python benchmarks/feature_store.py [--users 6000 --items 20000 --days 30] [--home DIR]
Other processes share the CPUs: the load average is printed with the figures.
Targets on 2 cores: one user's features p99 < 5 ms; event -> online p99 < 10 ms; full
materialisation of 1M events < 10 s.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
from rich.console import Console
from rich.table import Table

from recsys.home import resolve_home
from recsys.warehouse.build import build
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate, write_simulation

console = Console(width=150)


def timed(fn: Callable[[], object], repeats: int) -> np.ndarray:
    """Milliseconds per call over ``repeats`` calls (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        began = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - began) * 1e3
    return out


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(paths, users: int, items: int, days: int, seed: int) -> int:
    """Simulate, load and build unless the home is built already; returns the event count."""
    if not (paths.features / "user_interest.parquet").exists():
        sim = simulate(SimulationConfig(users=users, items=items, days=days, seed=seed))
        events_path, _ = write_simulation(sim, paths.simulations)
        ingest_file(paths, events_path, fmt="parquet")
        began = time.perf_counter()
        build(paths)
        console.print(f"build (marts + exports): {time.perf_counter() - began:.1f}s")
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    return con.execute("select count(*) from events").fetchone()[0]


def export_ids(paths) -> tuple[list[int], list[int]]:
    con = duckdb.connect()
    users = con.execute(
        "select distinct user_id from read_parquet(?)",
        [str(paths.features / "user_interest.parquet")],
    ).fetchall()
    items = con.execute(
        "select distinct item_id from read_parquet(?)", [str(paths.features / "item_stats.parquet")]
    ).fetchall()
    return [u for (u,) in users], [i for (i,) in items]


def raw_sqlite_read(db: Path, tables: list[str], key: bytes) -> Callable[[], object]:
    """Baseline: the same rows read straight from Feast's SQLite tables, protos not decoded."""
    con = sqlite3.connect(str(db))
    sql = [f'select feature_name, value from "{t}" where entity_key = ?' for t in tables]

    def read() -> object:
        return [con.execute(q, (key,)).fetchall() for q in sql]

    return read


def materialise(paths, settings, fast: bool) -> tuple[str, str]:
    from recsys.features.materialize import materialize

    began, cpu = time.perf_counter(), time.process_time()
    report = materialize(paths, online=settings, fast=fast)
    call, cpu = time.perf_counter() - began, time.process_time() - cpu
    name = "bulk (recsys)" if fast else "FeatureStore.materialize (baseline)"
    return (
        f"materialise, {name}: load s / whole call s / CPU s / rows / rows per s",
        f"{report.seconds:.2f} / {call:.2f} / {cpu:.2f} / {report.total_rows:,} / "
        f"{report.total_rows / report.seconds:,.0f}  ({load()})",
    )


def bench_store(paths, settings, label: str, user_ids: list[int], item_ids: list[int]):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from recsys.features import feast_compat
    from recsys.features.materialize import export_time_range
    from recsys.features.read import OnlineReader, online_features
    from recsys.features.repo import feature_store
    from recsys.online.state import Outcome
    from recsys.online.updater import Event, OnlineUpdater

    rows: list[tuple[str, np.ndarray | str]] = [
        materialise(paths, settings, fast=False),
        materialise(paths, settings, fast=True),
    ]
    store = feature_store(paths, settings)
    query = store.get_feature_service("two_tower_v1_query")
    candidate = store.get_feature_service("two_tower_v1_candidate")
    rng = random.Random(0)
    sample_users = iter(rng.choices(user_ids, k=10_000))
    rows.append(
        (
            "1 user, two_tower_v1_query, get_online_features (baseline)",
            timed(
                lambda: store.get_online_features(
                    features=query, entity_rows=[{"user_id": next(sample_users)}]
                ).to_dict(),
                500,
            ),
        )
    )

    provider = feast_compat.provider(store)
    views = [store.get_feature_view(p.name) for p in query.feature_view_projections]
    config = store.config

    def entity_key(user: int) -> EntityKey:
        return EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)])

    keys = [entity_key(u) for u in rng.choices(user_ids, k=10_000)]
    key_iter = iter(keys)

    def provider_read() -> object:
        key = [next(key_iter)]
        return [provider.online_read(config, view, key) for view in views]

    rows.append(("1 user, provider.online_read (precomputed keys)", timed(provider_read, 2000)))
    reader = OnlineReader(store, "two_tower_v1_query")
    reader_users = iter(rng.choices(user_ids, k=10_000))
    read_user = timed(lambda: reader.read(next(reader_users)), 5000)
    rows.append(("1 user, OnlineReader.read", read_user))
    if settings.kind == "sqlite":
        tables = [f"recsys_{v.name}" for v in views]
        key = serialize_entity_key(keys[0], entity_key_serialization_version=3)
        rows.append(
            (
                "1 user, raw sqlite select, protos not decoded (floor)",
                timed(raw_sqlite_read(paths.feast / "online_store.db", tables, key), 2000),
            )
        )

    def hundred_items() -> object:
        batch = [{"item_id": i} for i in rng.sample(item_ids, 100)]
        return store.get_online_features(features=candidate, entity_rows=batch).to_dict()

    rows.append(("100 items, two_tower_v1_candidate", timed(hundred_items, 200)))

    _, end = export_time_range(paths)
    clock = iter(end + timedelta(seconds=s) for s in range(1, 1_000_000))
    for per_view, name, repeats in [
        (True, "event -> online, one provider write per view (baseline)", 500),
        (False, "event -> online, FeastPushWriter: one transaction", 2000),
    ]:
        # A fresh updater state per run, so every timed event is a new one.
        (paths.feast / "online_state.db").unlink(missing_ok=True)
        updater = OnlineUpdater.for_store(paths, store)
        if per_view:
            updater.push.writer = None  # the writer's provider path: Feast's per-view writes

        def one_event(updater=updater) -> object:
            user = rng.choice(user_ids)
            result = updater.apply(Event(user, rng.choice(item_ids), "view", next(clock)))
            assert result.outcome is Outcome.APPLIED, result
            return result

        rows.append((name, timed(one_event, repeats)))
        updater.close()
    check_user = rng.choice(user_ids)
    want = online_features(paths, check_user, service="two_tower_v1_query", store=store)
    assert reader.read(check_user).features == {k: v for k, v in want.items() if k != "user_id"}
    show(label, rows)


def show(label: str, rows: list[tuple[str, np.ndarray | str]]) -> None:
    table = Table(title=f"feature store: {label}")
    for column in ("measure", "p50 ms", "p99 ms", "vs the baseline above, p50"):
        table.add_column(column)
    baseline = None
    for name, value in rows:
        if isinstance(value, str):
            table.add_row(name, value, "", "")
            continue
        p50, p99 = np.percentile(value, [50, 99])
        if "baseline" in name:
            baseline = p50
        elif not name.startswith(("1 user", "event")):
            baseline = None
        ratio = f"{baseline / p50:.1f}x faster" if baseline and "baseline" not in name else ""
        table.add_row(name, f"{p50:.3f}", f"{p99:.3f}", ratio)
    console.print(table)
    console.print(load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None, help="reused when already built")
    args = parser.parse_args()
    from recsys.features.redis_claim import release_redis
    from recsys.features.repo import OnlineStoreSettings

    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-features-"))
    paths = resolve_home(home)
    console.print(f"home: {paths.home}; {load()}; {os.cpu_count()} CPUs")
    n_events = prepare(paths, args.users, args.items, args.days, args.seed)
    user_ids, item_ids = export_ids(paths)
    console.print(f"{n_events:,} events, {len(user_ids):,} users, {len(item_ids):,} items")
    bench_store(paths, OnlineStoreSettings(), "sqlite", user_ids, item_ids)
    if os.environ.get("REDIS_URL"):
        redis = OnlineStoreSettings.redis(os.environ["REDIS_URL"])
        try:
            bench_store(paths, redis, "redis", user_ids, item_ids)
        finally:
            release_redis(paths, redis)  # the database is free for the next home
    else:
        console.print("REDIS_URL not set: skipping the redis online store")


if __name__ == "__main__":
    main()
