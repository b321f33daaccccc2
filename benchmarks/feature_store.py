"""Feature-store benchmark: materialisation, online reads and event -> online update latency.

Simulates ~1M events (recsys.simulate), builds the marts and exports, then for SQLite (and Redis
when ``$REDIS_URL`` is set) measures:

- full materialisation: seconds and rows/s;
- one user's full query-side features (``two_tower_v1_query``): ``get_online_features`` and the
  provider's ``online_read`` with precomputed entity keys, against a raw SQLite read of the same
  rows (baseline, same run);
- 100 items' candidate-side features (``two_tower_v1_candidate``);
- one event -> updated online features (``recsys.online.OnlineUpdater`` through Feast's
  PushSource, PushMode.ONLINE).

Usage: python benchmarks/feature_store.py [--users 20000 --items 50000 --days 10] [--home DIR]
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

import numpy as np
from rich.console import Console
from rich.table import Table

from recsys.build import build
from recsys.config import resolve_home
from recsys.ingest import ingest_file
from recsys.simulate import SimulationConfig, simulate, write_simulation

console = Console()


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


def prepare(paths, users: int, items: int, days: int) -> tuple[int, list[int], list[int]]:
    """Simulate, load and build; returns the event count, some users and some items."""
    sim = simulate(SimulationConfig(users=users, items=items, days=days, seed=0))
    events = sim.events
    events_path, _ = write_simulation(sim, paths.simulations)
    ingest_file(paths, events_path, fmt="parquet")
    began = time.perf_counter()
    build(paths)
    console.print(f"build (marts + exports): {time.perf_counter() - began:.1f}s")
    user_ids = events["user_id"].unique().to_list()
    item_ids = events["item_id"].unique().to_list()
    return len(events), user_ids, item_ids


def raw_sqlite_read(db: Path, tables: list[str], key: bytes) -> Callable[[], object]:
    """Baseline: the same rows read straight from Feast's SQLite tables, protos not decoded."""
    con = sqlite3.connect(str(db))
    sql = [f'select feature_name, value from "{t}" where entity_key = ?' for t in tables]

    def read() -> object:
        return [con.execute(q, (key,)).fetchall() for q in sql]

    return read


def bench_store(paths, settings, label: str, user_ids: list[int], item_ids: list[int]):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from recsys import features as F
    from recsys.online import Event, OnlineUpdater, Outcome

    rows: list[tuple[str, np.ndarray | str]] = []
    report = F.materialize(paths, online=settings)
    rate = report.total_rows / report.seconds
    rows.append(
        (
            "materialise: seconds / rows / rows per s",
            f"{report.seconds:.2f}s / {report.total_rows:,} / {rate:,.0f}",
        )
    )
    store = F.feature_store(paths, settings)
    query = store.get_feature_service("two_tower_v1_query")
    candidate = store.get_feature_service("two_tower_v1_candidate")
    rng = random.Random(0)
    sample_users = iter(rng.choices(user_ids, k=10_000))
    rows.append(
        (
            "1 user, two_tower_v1_query, get_online_features",
            timed(
                lambda: store.get_online_features(
                    features=query, entity_rows=[{"user_id": next(sample_users)}]
                ).to_dict(),
                1000,
            ),
        )
    )

    provider = store._get_provider()
    views = [store.get_feature_view(p.name) for p in query.feature_view_projections]
    config = store.config

    def entity_key(user: int) -> EntityKey:
        return EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)])

    keys = [entity_key(u) for u in rng.choices(user_ids, k=10_000)]
    key_iter = iter(keys)

    def fast_read() -> object:
        key = [next(key_iter)]
        return [provider.online_read(config, view, key) for view in views]

    rows.append(("1 user, provider.online_read (precomputed keys)", timed(fast_read, 1000)))
    if settings.kind == "sqlite":
        tables = [f"recsys_{v.name}" for v in views]
        key = serialize_entity_key(keys[0], entity_key_serialization_version=3)
        rows.append(
            (
                "1 user, raw sqlite select (baseline)",
                timed(raw_sqlite_read(paths.feast / "online_store.db", tables, key), 1000),
            )
        )

    def hundred_items() -> object:
        batch = [{"item_id": i} for i in rng.sample(item_ids, 100)]
        return store.get_online_features(features=candidate, entity_rows=batch).to_dict()

    rows.append(("100 items, two_tower_v1_candidate", timed(hundred_items, 200)))

    _, end = F.export_time_range(paths)
    clock = iter(end + timedelta(seconds=s) for s in range(1, 1_000_000))
    for via_push_api, name, repeats in [
        (False, "event -> online (FeastPushWriter)", 1000),
        (True, "event -> online (FeatureStore.push, ONLINE)", 50),
    ]:
        # A fresh updater state per run, so every timed event is a new one.
        (paths.feast / "online_state.db").unlink(missing_ok=True)
        updater = OnlineUpdater.for_store(paths, store, via_push_api=via_push_api)

        def one_event(updater=updater) -> object:
            user = rng.choice(user_ids)
            result = updater.apply(Event(user, rng.choice(item_ids), "view", next(clock)))
            assert result.outcome is Outcome.APPLIED, result
            return result

        rows.append((name, timed(one_event, repeats)))
        updater.close()
    show(label, rows)


def show(label: str, rows: list[tuple[str, np.ndarray | str]]) -> None:
    table = Table(title=f"feature store: {label}")
    for column in ("measure", "p50 ms", "p99 ms", "vs raw p50"):
        table.add_column(column)
    baseline = next(
        (float(np.median(v)) for name, v in rows if "baseline" in name and not isinstance(v, str)),
        None,
    )
    for name, value in rows:
        if isinstance(value, str):
            table.add_row(name, value, "", "")
            continue
        p50, p99 = np.percentile(value, [50, 99])
        ratio = f"{p50 / baseline:.1f}x" if baseline else ""
        table.add_row(name, f"{p50:.3f}", f"{p99:.3f}", ratio)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    from recsys import features as F

    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-features-"))
    paths = resolve_home(home)
    console.print(f"home: {paths.home}")
    n_events, user_ids, item_ids = prepare(paths, args.users, args.items, args.days)
    console.print(f"{n_events:,} events, {len(user_ids):,} users, {len(item_ids):,} items")
    bench_store(paths, F.OnlineStoreSettings(), "sqlite", user_ids, item_ids)
    if os.environ.get("REDIS_URL"):
        bench_store(
            paths, F.OnlineStoreSettings.redis(os.environ["REDIS_URL"]), "redis", user_ids, item_ids
        )
    else:
        console.print("REDIS_URL not set: skipping the redis online store")


if __name__ == "__main__":
    main()
