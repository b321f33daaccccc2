"""Service benchmark: HTTP latency and throughput of recommendations and events, against the
raw parts they are made of, measured in the same run.

Builds a simulated home (ingest -> build -> materialise) and trains the interest model there
(``recsys.models.training.train_home``) when the home has none. Then, for two catalogues, it
starts the service in a subprocess on 127.0.0.1 (uvicorn, uvloop, httptools) and loads it from
this process with a minimal keep-alive HTTP/1.1 client at concurrency 1 and 16:

- the home's catalogue (~20k items): the service as deployed, loading the trained model itself
  (``load_model``: saved query tower + ``EmbeddingIndex`` over its item embeddings);
- 1M items: the real catalogue padded with synthetic items; the real query tower, and an
  ``EmbeddingIndex`` (ScaNN at this size) over the model's item embeddings tiled to 1M rows
  (each synthetic item copies a real embedding plus N(0, (0.1 std)^2) noise per dimension).

Measured: GET /healthz (what the HTTP stack alone costs), GET
/v1/users/{id}/recommendations?k=20 and POST /v1/events?return_recommendations=true (one view,
refreshed top-20); and the same GET on a bare route (``bare_app``: the raw parts behind the same
FastAPI/uvicorn stack, nothing else), which splits the endpoint's gap to the floor into the
HTTP stack's share and the service's own (sources, merge, ranking, reasons). The raw parts
(online feature read, ``SavedRetrieval.query`` on a real profile, ANN top-20 search) are timed
in this process on the same home and index, two ways:

- in request order (read -> query -> search, user after user, each part timed alone): "floor"
  = the sum of their p50s, what the endpoint cannot go below, since it runs these three in
  this order and each pays for the caches the others evicted (~20% over the hot loops at 1M
  items: the ScaNN search sweeps ~100 MB of codes);
- each in an isolated tight loop: "hot floor", their best case, printed for comparison.

Usage: python benchmarks/serving.py [--home DIR --users 2000 --items 20000 --days 5
--requests 2000]
Targets on 2 cores: recommendations p99 < 10 ms at concurrency 1 with 1M items; event ->
refreshed top-k p99 < 20 ms; endpoint p50 at most 1.5x the floor.
"""

from __future__ import annotations

import os

# One BLAS thread: the server and the load generator share 2 cores, and OpenBLAS's spinning
# worker threads would steal them from each other.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console(width=140)  # tables stay readable when printed to a file
# Synthetic items' embeddings: a real one plus this much noise (x the per-dimension std).
TILE_NOISE = 0.1


def prepare(home: Path, users: int, items: int, days: int) -> None:
    from recsys.features.materialize import materialize
    from recsys.home import resolve_home
    from recsys.warehouse.build import build
    from recsys.warehouse.ingest import ingest_file
    from recsys.warehouse.simulate import SimulationConfig, simulate, write_simulation

    paths = resolve_home(home)
    sim = simulate(SimulationConfig(users=users, items=items, days=days, seed=0))
    events_path, _ = write_simulation(sim, paths.simulations)
    with console.status("ingest, build, materialise"):
        ingest_file(paths, events_path, fmt="parquet")
        build(paths)
        materialize(paths)
    console.print(f"home {paths.home}: {sim.events.height:,} events")


def ensure_model(home: Path) -> None:
    """Train and publish the interest model when the home has none."""
    from recsys.home import resolve_home
    from recsys.models.training import train_home
    from recsys.ranking.score import ScoreError, latest_model_dir

    paths = resolve_home(home)
    try:
        console.print(f"model: {latest_model_dir(paths).name}")
    except ScoreError:
        with console.status("training the interest model (train_home)"):
            report = train_home(paths, console=console)
        console.print(report.summary())


def tiled_catalogue(real, n_items: int):
    """The real catalogue plus synthetic items (random real categories, low popularity)."""
    from recsys.serving.catalogue import Catalogue

    extra = max(n_items - len(real), 0)
    rng = np.random.default_rng(0)
    return Catalogue(
        np.concatenate([real.item_ids, real.item_ids.max() + 1 + np.arange(extra)]),
        np.concatenate([real.category_ids, rng.choice(np.unique(real.category_ids), extra)]),
        np.concatenate([real.popularity, rng.random(extra) * real.popularity.min()]),
        migrations=real.migrations,
    )


def tiled_embeddings(model_ids, model_embeddings, item_ids) -> np.ndarray:
    """float32 [len(item_ids), d]: the model's embedding for its items; every other item a
    model embedding (taken in turn) plus Gaussian noise of TILE_NOISE x its per-dim std."""
    rng = np.random.default_rng(0)
    n = len(item_ids)
    out = model_embeddings[np.arange(n) % len(model_ids)] + rng.normal(
        0.0, TILE_NOISE * model_embeddings.std(axis=0), (n, model_embeddings.shape[1])
    ).astype(np.float32)
    positions = np.searchsorted(item_ids, model_ids)
    out[positions] = model_embeddings  # model items are all in the catalogue (checked below)
    return out


def components(home: Path, n_items: int):
    """(catalogue, AnnSource, description): the deployed ones for the home's own catalogue
    (``n_items`` = 0), the tiled ones (module doc) for ``n_items`` items."""
    from recsys.home import resolve_home
    from recsys.models.index import EmbeddingIndex
    from recsys.models.saved import IndexSearch, SavedRetrieval
    from recsys.ranking.score import latest_model_dir
    from recsys.serving.app import load_model
    from recsys.serving.candidates import AnnSource
    from recsys.serving.catalogue import load_catalogue
    from recsys.serving.settings import ServiceSettings

    paths = resolve_home(home)
    real = load_catalogue(paths, lock_timeout_s=30)
    if not n_items:
        model = load_model(ServiceSettings(paths=paths), real)
        assert model.ann is not None, model.status
        index = model.ann.index.index
        description = (
            f"{len(real):,} catalogue items; trained query tower + its index "
            f"({len(index.ids):,} items, {index.method})"
        )
        return real, model.ann, description
    retrieval = SavedRetrieval(latest_model_dir(paths))
    catalogue = tiled_catalogue(real, n_items)
    model_ids, model_embeddings = retrieval.index.index.ids, retrieval.index.index.embeddings
    if not np.isin(model_ids, catalogue.item_ids).all():
        raise SystemExit("the model knows items the catalogue does not")
    index = EmbeddingIndex(
        catalogue.item_ids, tiled_embeddings(model_ids, model_embeddings, catalogue.item_ids)
    )
    index.top_k(np.zeros(model_embeddings.shape[1], np.float32), 32)  # ScaNN for k <= 32
    description = (
        f"trained query tower; index = its {len(model_ids):,} item embeddings tiled to "
        f"{len(catalogue):,} (+N(0, ({TILE_NOISE} std)^2) noise), {index.method}"
    )
    return catalogue, AnnSource(retrieval.query, IndexSearch(index), catalogue), description


def bare_app(home: Path, n_items: int):
    """The recommendations route doing only the raw parts (online read -> query tower -> ANN
    search, the ids and scores as JSON) behind the same FastAPI/uvicorn stack: what the
    endpoint would cost with no candidate sources, merge, ranking or reasons."""
    from fastapi import FastAPI, Query
    from fastapi.responses import Response

    from recsys.features.read import OnlineReader
    from recsys.features.repo import feature_store
    from recsys.home import resolve_home

    _, ann, _ = components(home, n_items)
    reader = OnlineReader(feature_store(resolve_home(home)))
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(
        user_id: int, k: int = Query(20, ge=1, le=1000), exclude_purchased: bool = True
    ) -> Response:
        ids, scores = ann.index.search(ann.query(reader.read(user_id)), k)
        items = [
            {"item_id": i, "score": s} for i, s in zip(ids.tolist(), scores.tolist(), strict=True)
        ]
        return Response(json.dumps({"user_id": user_id, "items": items}))

    return app


def serve(home: Path, n_items: int, port: int, bare: bool) -> None:
    """The service process: as deployed, or with the tiled catalogue and index; or the bare
    route (``bare_app``) on the same catalogue."""
    import uvicorn

    from recsys.home import resolve_home
    from recsys.serving.app import create_app, one_tensorflow_thread
    from recsys.serving.settings import ServiceSettings

    settings = ServiceSettings(paths=resolve_home(home))
    one_tensorflow_thread()  # as load_model does for the deployed service
    if bare:
        app = bare_app(home, n_items)
    elif not n_items:
        app = create_app(settings)
    else:
        catalogue, ann, _ = components(home, n_items)
        app = create_app(settings, ann=ann, catalogue=catalogue)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


class Connection:
    """A minimal keep-alive HTTP/1.1 client (the load generator must cost less than httpx)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)


async def load(port: int, requests: list[tuple[str, str, bytes]], concurrency: int):
    """Latencies (ms) of all requests and the throughput (requests per second)."""
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def worker() -> None:
        connection = await Connection.open(port)
        while queue:
            method, path, body = queue.pop()
            began = time.perf_counter()
            status, _ = await connection.request(method, path, body)
            latencies.append((time.perf_counter() - began) * 1e3)
            assert status == 200, (status, path)
        connection.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return np.array(latencies), len(requests) / (time.perf_counter() - began)


def in_request_order(reader, ann, users: list[int]) -> dict[str, np.ndarray]:
    """Each raw part timed (ms) as a request runs it: read -> query tower -> ANN search, user
    after user (after a warm-up pass). Each part then pays for the caches the others evicted,
    as it does in the endpoint."""
    names = ("read", "query", "search")
    out = {name: np.empty(len(users)) for name in names}
    for warm in (True, False):
        for i, user in enumerate(users):
            t0 = time.perf_counter()
            profile = reader.read(user)
            t1 = time.perf_counter()
            query = ann.query(profile)
            t2 = time.perf_counter()
            ann.index.search(query, 20)
            t3 = time.perf_counter()
            if not warm:
                for name, began, ended in zip(names, (t0, t1, t2), (t1, t2, t3), strict=True):
                    out[name][i] = (ended - began) * 1e3
    return out


def isolated(fn, arguments: list) -> np.ndarray:
    """fn timed (ms) over the arguments in a tight loop: its best case, caches hot."""
    for argument in arguments[:20]:
        fn(argument)
    out = np.empty(len(arguments))
    for i, argument in enumerate(arguments):
        began = time.perf_counter()
        fn(argument)
        out[i] = (time.perf_counter() - began) * 1e3
    return out


def raw_parts(home: Path, n_items: int, users: list[int], repeats: int):
    """The online feature read, the query tower and the ANN search, timed in-process in
    request order and in isolation; and the description of the ANN stage."""
    from recsys.features.read import OnlineReader
    from recsys.features.repo import feature_store
    from recsys.home import resolve_home
    from recsys.serving.app import one_tensorflow_thread

    one_tensorflow_thread()  # the service's TensorFlow settings (load_model)
    _, ann, description = components(home, n_items)
    reader = OnlineReader(feature_store(resolve_home(home)))
    sample = [u for u in random.Random(1).choices(users, k=repeats) if reader.read(u)]
    profiles = [reader.read(u) for u in sample]
    queries = [ann.query(p) for p in profiles]
    ordered = in_request_order(reader, ann, sample)
    ann_name = f"ANN search top-20 (EmbeddingIndex, {len(ann.index.index.ids):,} items)"
    parts = {
        "online feature read (provider.online_read)": (
            ordered["read"],
            isolated(reader.read, sample),
        ),
        "query tower (SavedRetrieval.query on a real profile)": (
            ordered["query"],
            isolated(ann.query, profiles),
        ),
        ann_name: (ordered["search"], isolated(lambda q: ann.index.search(q, 20), queries)),
    }
    return parts, description


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the service exited during startup")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not become ready")


@contextmanager
def service_process(home: Path, n_items: int, *, bare: bool = False) -> Iterator[int]:
    """A ``serve`` subprocess, ready; yields its port."""
    port = free_port()
    command = [sys.executable, __file__, "--serve", "--home", str(home)]
    command += ["--catalogue", str(n_items), "--port", str(port)] + (["--bare"] if bare else [])
    process = subprocess.Popen(command)
    try:
        wait_ready(port, process)
        yield port
    finally:
        process.terminate()
        process.wait()


def bench_catalogue(home: Path, n_items: int, requests: int, users: list[int], t0) -> None:
    rows: list[tuple[str, np.ndarray, float | None]] = []
    rng = random.Random(0)
    gets = [
        ("GET", f"/v1/users/{rng.choice(users)}/recommendations?k=20", b"") for _ in range(requests)
    ]
    with service_process(home, n_items) as port:
        clock = iter(range(1, 10**9))

        def post() -> tuple[str, str, bytes]:
            event = {
                "user_id": rng.choice(users),
                "item_id": rng.choice(users) % 1000,
                "category_id": 1,
                "behavior": "view",
                "event_time": (t0 + timedelta(seconds=next(clock))).isoformat(),
            }
            return (
                "POST",
                "/v1/events?return_recommendations=true&k=20",
                json.dumps(event).encode(),
            )

        health = [("GET", "/healthz", b"")] * requests
        asyncio.run(load(port, health[:200], 1))  # warm-up
        latencies, rate = asyncio.run(load(port, health, 1))
        rows.append(("GET /healthz (HTTP stack alone), concurrency 1", latencies, rate))
        for concurrency in (1, 16):
            asyncio.run(load(port, gets[:200], concurrency))  # warm-up
            latencies, rate = asyncio.run(load(port, gets, concurrency))
            rows.append((f"GET recommendations, concurrency {concurrency}", latencies, rate))
        for concurrency in (1, 16):
            latencies, rate = asyncio.run(
                load(port, [post() for _ in range(requests // 2)], concurrency)
            )
            rows.append(
                (f"POST event + refreshed top-20, concurrency {concurrency}", latencies, rate)
            )
    with service_process(home, n_items, bare=True) as port:
        asyncio.run(load(port, gets[:200], 1))  # warm-up
        latencies, rate = asyncio.run(load(port, gets, 1))
        rows.insert(
            2, ("GET bare route: raw parts + HTTP stack only, concurrency 1", latencies, rate)
        )
    parts, description = raw_parts(home, n_items, users, 1000)
    floor = sum(float(np.median(ordered)) for ordered, _ in parts.values())
    hot = sum(float(np.median(alone)) for _, alone in parts.values())
    size = f"{n_items:,} items" if n_items else "the home's own catalogue"
    table = Table(title=f"serving, {size}: {description}")
    for column in ("measure", "p50 ms", "p99 ms", "req/s", "p50 / floor", "p50 / hot floor"):
        table.add_column(column)
    for name, (ordered, alone) in parts.items():
        for label, values in (("in request order", ordered), ("isolated loop", alone)):
            p50, p99 = np.percentile(values, [50, 99])
            table.add_row(f"raw: {name}, {label}", f"{p50:.3f}", f"{p99:.3f}", "", "", "")
    table.add_row("floor = sum of in-order raw p50s", f"{floor:.3f}", "", "", "1.0x", "")
    table.add_row("hot floor = sum of isolated raw p50s", f"{hot:.3f}", "", "", "", "1.0x")
    for name, values, rate in rows:
        p50, p99 = np.percentile(values, [50, 99])
        table.add_row(
            name,
            f"{p50:.3f}",
            f"{p99:.3f}",
            f"{rate:,.0f}",
            f"{p50 / floor:.2f}x",
            f"{p50 / hot:.2f}x",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument(
        "--catalogues", default="0,1000000", help="item counts; 0 = the home's own catalogue"
    )
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--catalogue", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.home, args.catalogue, args.port, args.bare)
        return
    import duckdb

    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-serving-"))
    if not (home / "feast" / "registry.db").exists():
        prepare(home, args.users, args.items, args.days)
    ensure_model(home)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        users = [r[0] for r in con.execute("select user_id from user_interest_shift").fetchall()]
        (t0,) = con.execute("select max(event_time) from events").fetchone()
    for n_items in (int(n) for n in args.catalogues.split(",")):
        bench_catalogue(home, n_items, args.requests, users, t0)


if __name__ == "__main__":
    main()
