"""Replica benchmark: requests per second of the service with one replica against two, in the
same run, sharing one home and one Redis database (``recsys.serving.replicas``).

Builds a simulated home (ingest -> build -> materialise, ``serving.prepare``) when ``--home`` has
none, materialises it into the Redis database of ``--redis-url`` (default ``$REDIS_URL``), and
starts two replicas (``start_replica``: uvicorn processes on sockets bound here). Each round
loads one replica, then both (the client's ``--concurrency`` connections split between them),
with the same requests: GET /v1/users/{id}/recommendations?k=20 for random users, and a
``--post-share`` of POST /v1/events (one view each, applied through Redis). The table gives the
median over the rounds of the requests per second and of the latency percentiles. The load
generator runs on the same machine: on 2 cores, two replicas and the client share them.

Usage: python benchmarks/replicas.py [--redis-url redis://127.0.0.1:6390/9 --home DIR
--users 500 --items 5000 --days 3 --requests 2000 --rounds 3 --concurrency 16
--post-share 0.1] [--quick]
"""

from __future__ import annotations

import os

# One BLAS thread: the replicas and the load generator share the cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import random
import signal
import socket
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.table import Table
from serving import console, load, prepare

from recsys.features.materialize import materialize
from recsys.features.online_settings import OnlineStoreSettings
from recsys.features.redis_claim import release_redis
from recsys.home import resolve_home
from recsys.serving.replicas import start_replica

QUICK = {"users": 100, "items": 1_000, "days": 2, "requests": 300, "rounds": 1, "concurrency": 8}


@contextmanager
def replica(home: Path, redis_url: str, name: str) -> Iterator[int]:
    """A replica process on a loopback socket bound here; yields its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        process = start_replica(home, redis_url, name, sock)
        try:
            yield sock.getsockname()[1]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()


def requests_for(
    users: list[int], items: list[int], n: int, post_share: float, seed: int
) -> list[tuple[str, str, bytes]]:
    """``n`` requests: recommendations of random users, and ``post_share`` of them one view each
    (times after every event so far, distinct, so each is applied)."""
    rng = random.Random(seed)
    # after the simulated history, before the service's limit of a day ahead; one range per seed
    now = datetime.now(UTC).replace(tzinfo=None)
    start = now - timedelta(hours=1) + timedelta(milliseconds=seed * n)
    out = []
    for i in range(n):
        user = rng.choice(users)
        if rng.random() < post_share:
            event = {
                "user_id": user,
                "item_id": rng.choice(items),
                "behavior": "view",
                "event_time": (start + timedelta(milliseconds=i)).isoformat(),
            }
            out.append(("POST", "/v1/events", json.dumps(event).encode()))
        else:
            out.append(("GET", f"/v1/users/{user}/recommendations?k=20", b""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2_000, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--post-share", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help=f"a short run: {QUICK}")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if not args.redis_url:
        parser.error("give --redis-url (a Redis database for this home) or set REDIS_URL")
    import duckdb

    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-replicas-"))
    paths = resolve_home(home)
    if not (paths.feast / "registry.db").exists():
        prepare(home, args.users, args.items, args.days)
    online = OnlineStoreSettings.redis(args.redis_url)
    with console.status("materialise into Redis"):
        materialize(paths, online=online)
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        users = [r[0] for r in con.execute("select distinct user_id from events").fetchall()]
        items = [r[0] for r in con.execute("select item_id from item_stats").fetchall()]

    rates: dict[int, list[float]] = {1: [], 2: []}
    latencies: dict[int, list[np.ndarray]] = {1: [], 2: []}
    with ExitStack() as stack:
        # the database is free for another home afterwards (the rows stay)
        stack.callback(release_redis, paths, online)
        ports = [stack.enter_context(replica(home, args.redis_url, name)) for name in "ab"]
        warm = requests_for(users, items, 50, 0.0, seed=0)
        for port in ports:  # each replica started and warm before any timing
            asyncio.run(load([port], warm, 2))
        for round_ in range(args.rounds):
            for n in (1, 2):
                seed = 1 + round_ * 2 + n
                batch = requests_for(users, items, args.requests, args.post_share, seed)
                ms, rate = asyncio.run(load(ports[:n], batch, args.concurrency))
                rates[n].append(rate)
                latencies[n].append(ms)
                console.print(f"round {round_ + 1}, {n} replica(s): {rate:,.0f} req/s")

    table = Table(
        title=f"{args.requests:,} requests x {args.rounds} rounds, concurrency "
        f"{args.concurrency}, {args.post_share:.0%} posts ({os.cpu_count()} cores)"
    )
    for column in ("replicas", "req/s (median)", "req/s (rounds)", "p50 ms", "p99 ms", "speed-up"):
        table.add_column(column, justify="right")
    for n in (1, 2):
        p50 = statistics.median(float(np.percentile(ms, 50)) for ms in latencies[n])
        p99 = statistics.median(float(np.percentile(ms, 99)) for ms in latencies[n])
        median = statistics.median(rates[n])
        table.add_row(
            str(n),
            f"{median:,.0f}",
            " ".join(f"{r:,.0f}" for r in rates[n]),
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{median / statistics.median(rates[1]):.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
