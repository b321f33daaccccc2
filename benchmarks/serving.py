"""Service benchmark: HTTP latency and throughput of recommendations and events, against the
raw parts they are made of, measured in the same run.

Builds a simulated home (ingest -> build -> materialise) and trains the interest model there
(``recsys.models.training.train_home``) when the home has none. Then, for two catalogues, it
starts the service in a subprocess on 127.0.0.1 (uvicorn, uvloop, httptools) and loads it from
this process with a minimal keep-alive HTTP/1.1 client at concurrency 1 and 16:

- the home's catalogue (~20k items): the service as deployed, loading the newest verified model
  itself (``load_model``: its ``Ranking``, with the saved query tower + ``EmbeddingIndex`` over
  its item embeddings as the ANN source);
- 1M items: the real catalogue padded with synthetic items, and the model's ``Ranking`` reading
  1M items: its ANN source is the real query tower over an ``EmbeddingIndex`` (ScaNN at this
  size) of the model's item embeddings tiled to 1M rows (each synthetic item copies a real
  embedding plus N(0, (0.1 std)^2) noise per dimension), and its item tables are tiled the same
  way (each synthetic item copies that real item's category and popularity, with noise;
  ``tiled_tables``).

Measured: GET /healthz (what the HTTP stack alone costs), GET
/v1/users/{id}/recommendations?k=20 and POST /v1/events?return_recommendations=true (one view,
refreshed top-20); and two bare routes (``bare_app``: raw parts behind the same FastAPI/uvicorn
stack, nothing else): the retrieval parts, and the online read + ``Ranking.rank_users``. They split
the endpoint's gap to each floor into the HTTP stack's share and the service's own. The raw
parts (online feature read, the flat one-row profile ``Users.from_features``, the query tower on
it, ANN top-20 search, and ``Ranking.rank_users`` top-20, its ANN search included) are timed
in a separate process on the same home, model and index, two ways:

- in request order (read -> flatten -> query -> search -> rank, user after user, each part timed
  alone): "floor" = the sum of the p50s of read, frame, query and search (the retrieval the
  endpoint cannot go below; each part pays for the caches the others evicted, ~20% over the
  hot loops at 1M items: the ScaNN search sweeps ~100 MB of codes); "ranked floor" = read +
  frame + rank, what the endpoint runs before its own response assembly (the ranking runs the
  query tower and the ANN search itself, so they are not counted twice);
- each in an isolated tight loop: "hot floor" and "hot ranked floor", their best case.

The service and raw-part processes run with POLARS_MAX_THREADS=1 (as `recsys serve` sets it)
and one TensorFlow thread per pool (as ``load_model`` sets it).

Usage: python benchmarks/serving.py [--home DIR --policy learned --users 2000 --items 20000
--days 5 --requests 2000 --repeats 1000]
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

console = Console(width=180)  # tables stay readable when printed to a file
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


def ensure_model(home: Path, policy: str | None) -> None:
    """Train and publish the interest model when the home has none. With ``policy``, that
    policy is the only one validated, so the model serves it (``--policy learned``: the learned
    ranker and its ANN source in the service, the costliest request path)."""
    import json

    from recsys.home import resolve_home
    from recsys.models.artifacts import ArtifactError, latest_verified
    from recsys.models.interest import MODEL_NAME, RANKING_FILE, InterestConfig
    from recsys.models.training import train_home

    paths = resolve_home(home)
    try:
        directory = latest_verified(paths.models, MODEL_NAME)[0]
    except ArtifactError:
        config = InterestConfig() if policy is None else InterestConfig(policies=(policy,))
        with console.status("training the interest model (train_home)"):
            report = train_home(paths, config=config, console=console)
        console.print(report.summary())
        return
    served = json.loads((directory / RANKING_FILE).read_text())["policy"]
    if policy is not None and served != policy:
        raise SystemExit(f"{directory.name} serves {served}, not {policy}: use a new --home")
    console.print(f"model: {directory.name} (policy {served})")


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


def tiled_tables(tables, model_ids, item_ids):
    """``tables`` (``ItemTables``) whose ``items`` cover every id of ``item_ids``: an item they
    lack copies the row of the model item whose embedding it copies (``tiled_embeddings``; a
    row taken in turn when that item has none): its category, trend and popularity x
    exp(N(0, TILE_NOISE^2)). ``category_items`` is rebuilt from the tiled items as the table
    builder would (each category's best items by share of its long-horizon popularity, as
    many per category as the model's table keeps), so tiled items compete there too."""
    import polars as pl

    items = tables.items
    missing = np.flatnonzero(~np.isin(item_ids, items["item_id"].to_numpy()))
    rng = np.random.default_rng(1)
    copies = (
        pl.DataFrame(
            {
                "item_id": item_ids[missing],
                "src": model_ids[missing % len(model_ids)],
                "fallback": missing % items.height,
            }
        )
        .join(items.rename({"item_id": "src"}), on="src", how="left")
        .with_columns(noise=pl.Series(np.exp(rng.normal(0.0, TILE_NOISE, len(missing)))))
    )
    known = copies.filter(pl.col("category_id").is_not_null())
    unknown = copies.filter(pl.col("category_id").is_null()).select(
        "item_id", "noise", pl.col("fallback").alias("row")
    )
    rows = items.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    unknown = unknown.join(rows.drop("item_id"), on="row", how="left")
    columns = [
        "item_id",
        "category_id",
        pl.col("pop_short") * pl.col("noise"),
        pl.col("pop_long") * pl.col("noise"),
        "trend",
    ]
    tiled = pl.concat(
        [items, known.select(columns), unknown.select(columns)], how="vertical_relaxed"
    ).sort("item_id")
    keep = int(tables.category_items.group_by("category_id").len()["len"].max() or 0)
    category_items = (
        tiled.with_columns(share=pl.col("pop_long") / pl.col("pop_long").sum().over("category_id"))
        .sort(["category_id", "share", "item_id"], descending=[False, True, False])
        .group_by("category_id", maintain_order=True)
        .head(keep)
        .select("category_id", "item_id", "share")
    )
    # A new object, not dataclasses.replace: the tables cache lookups of their frames.
    return type(tables)(
        tables.as_of, tiled, tables.transitions, category_items, tables.category_transitions
    )


def components(home: Path, n_items: int):
    """(catalogue, ModelState, retrieval, description): the deployed ones (as ``load_model``
    loads them: the newest verified model's ranking) for the home's own catalogue (``n_items``
    = 0), the tiled ones (module doc) for ``n_items`` items.
    ``retrieval`` is the ranking's ``SavedRetrieval`` (loaded from the model folder when the
    served policy does not retrieve, so that the raw parts can still be timed)."""
    import copy
    import dataclasses

    from recsys.home import resolve_home
    from recsys.models.index import EmbeddingIndex
    from recsys.models.interest import load_latest
    from recsys.models.saved import SavedRetrieval
    from recsys.serving.catalogue import load_catalogue
    from recsys.serving.service import ModelState
    from recsys.serving.settings import ServiceSettings

    paths = resolve_home(home)
    settings = ServiceSettings(paths=paths)
    real = load_catalogue(paths, lock_timeout_s=30)
    # What ``load_model`` serves: the newest verified model's ranking.
    loaded, directory = load_latest(settings.models)
    ranking = loaded.ranking_
    name = directory.name
    model = ModelState(ranking, name, f"loaded: {name} (policy {ranking.spec.name})")
    retrieval = ranking.ann or SavedRetrieval(directory)
    uses_ann = ranking.ann is not None and "ann" in {s.name for s in ranking.sources()}
    policy = f"policy {ranking.spec.name}" + ("" if uses_ann else " (ranks WITHOUT the ANN)")
    if not n_items:
        index = retrieval.index
        description = (
            f"{len(real):,} catalogue items; {policy}; trained query tower + its index "
            f"({len(index.ids):,} items, {index.method}); tables of "
            f"{ranking.tables.items.height:,} items"
        )
        return real, model, retrieval, description
    catalogue = tiled_catalogue(real, n_items)
    model_ids, model_embeddings = retrieval.index.ids, retrieval.index.embeddings
    if not np.isin(model_ids, catalogue.item_ids).all():
        raise SystemExit("the model knows items the catalogue does not")
    index = EmbeddingIndex(
        catalogue.item_ids, tiled_embeddings(model_ids, model_embeddings, catalogue.item_ids)
    )
    index.top_k(np.zeros(model_embeddings.shape[1], np.float32), 20)  # trains the ScaNN searcher
    tiled = copy.copy(retrieval)  # the same query tower and encoder over the tiled index
    tiled.index = index
    tables = tiled_tables(ranking.tables, model_ids, catalogue.item_ids)
    ranking = dataclasses.replace(ranking, tables=tables, ann=tiled if uses_ann else ranking.ann)
    model = ModelState(ranking, model.version, f"{model.status}, tiled to {len(catalogue):,} items")
    description = (
        f"{policy}; trained query tower; index = its {len(model_ids):,} item embeddings tiled "
        f"to {len(catalogue):,} (+N(0, ({TILE_NOISE} std)^2) noise), {index.method}; tables "
        f"tiled to {tables.items.height:,} items ({tables.category_items.height:,} category "
        "items)"
    )
    return catalogue, model, tiled, description


def bare_app(home: Path, n_items: int):
    """The raw parts behind the same FastAPI/uvicorn stack, nothing else, on two routes:
    GET /v1/users/{id}/recommendations runs the retrieval parts (online read -> flat profile
    -> query tower -> ANN search, the ids and scores as JSON); GET /v1/users/{id}/ranked runs
    the ranked ones (online read -> flat profile -> ``Ranking.rank_users``, its rows as JSON): what
    the endpoint would cost without its own work (migration note, response assembly)."""
    from fastapi import FastAPI, Query
    from fastapi.responses import Response

    from recsys.features.read import OnlineReader
    from recsys.features.repo import feature_store
    from recsys.home import resolve_home
    from recsys.ranking.sources import Users

    _, model, retrieval, _ = components(home, n_items)
    ranking = model.ranking
    reader = OnlineReader(feature_store(resolve_home(home)))
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(
        user_id: int, k: int = Query(20, ge=1, le=1000), exclude_purchased: bool = True
    ) -> Response:
        profile = reader.read(user_id)
        items = []
        if profile is not None:
            users = Users.from_features([(user_id, profile.as_of, profile.features)])
            ids, scores = retrieval.index.top_k(retrieval.embed_users(users), k)
            items = [
                {"item_id": i, "score": s}
                for i, s in zip(ids[0].tolist(), scores[0].tolist(), strict=True)
            ]
        return Response(json.dumps({"user_id": user_id, "items": items}))

    @app.get("/v1/users/{user_id}/ranked")
    async def ranked(
        user_id: int, k: int = Query(20, ge=1, le=1000), exclude_purchased: bool = True
    ) -> Response:
        profile = reader.read(user_id)
        items = []
        if profile is not None:
            users = Users.from_features([(user_id, profile.as_of, profile.features)])
            items = ranking.rank_users(users, k, exclude_purchased=exclude_purchased).items()
        return Response(json.dumps({"user_id": user_id, "items": items}))

    return app


def serve(home: Path, n_items: int, port: int, bare: bool) -> None:
    """The service process: as deployed, or with the tiled catalogue and model; or the bare
    routes (``bare_app``) on the same catalogue."""
    import uvicorn

    from recsys.home import resolve_home
    from recsys.serving.app import create_app
    from recsys.serving.service import one_tensorflow_thread
    from recsys.serving.settings import ServiceSettings

    settings = ServiceSettings(paths=resolve_home(home))
    one_tensorflow_thread()  # as load_model does for the deployed service
    if bare:
        app = bare_app(home, n_items)
    elif not n_items:
        app = create_app(settings)
    else:
        catalogue, model, _, _ = components(home, n_items)
        app = create_app(settings, model=model, catalogue=catalogue)
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


async def load(
    port: int | list[int], requests: list[tuple[str, str, bytes]], concurrency: int
) -> tuple[np.ndarray, float]:
    """Latencies (ms) of all requests and the throughput (requests per second): ``concurrency``
    closed-loop connections, spread over the ports (service replicas) when given several."""
    ports = port if isinstance(port, list) else [port]
    queue = list(reversed(requests))
    latencies: list[float] = []

    async def worker(port: int) -> None:
        connection = await Connection.open(port)
        while queue:
            method, path, body = queue.pop()
            began = time.perf_counter()
            status, answer = await connection.request(method, path, body)
            latencies.append((time.perf_counter() - began) * 1e3)
            assert status == 200, (status, path, answer[:200])
        connection.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(concurrency)))
    return np.array(latencies), len(requests) / (time.perf_counter() - began)


# The raw parts, in request order; "frame" is the one-row flat profile (``Users``) that both
# the query tower and the ranking read (built once per request).
PARTS = ("read", "frame", "query", "search", "rank")
RETRIEVAL_PARTS = ("read", "frame", "query", "search")
RANKED_PARTS = ("read", "frame", "rank")


def in_request_order(reader, ranking, retrieval, users: list[int]) -> dict[str, np.ndarray]:
    """Each raw part timed (ms) as a request runs it: read -> flat profile -> query tower ->
    ANN search -> ranking, user after user (after a warm-up pass). Each part then pays for the
    caches the others evicted, as it does in the endpoint."""
    from recsys.ranking.sources import Users

    out = {name: np.empty(len(users)) for name in PARTS}
    for warm in (True, False):
        for i, user in enumerate(users):
            t0 = time.perf_counter()
            profile = reader.read(user)
            t1 = time.perf_counter()
            flat = Users.from_features([(user, profile.as_of, profile.features)])
            t2 = time.perf_counter()
            query = retrieval.embed_users(flat)
            t3 = time.perf_counter()
            retrieval.index.top_k(query, 20)
            t4 = time.perf_counter()
            ranking.rank_users(flat, 20, exclude_purchased=True)
            t5 = time.perf_counter()
            if not warm:
                times = (t0, t1, t2, t3, t4, t5)
                for name, began, ended in zip(PARTS, times[:-1], times[1:], strict=True):
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
    """The online feature read, the flat profile, the query tower, the ANN search and the
    ranking, timed in request order and in isolation: {label: (in order, isolated)} keyed by
    ``PARTS``; and the description of the model. Runs in its own process (``raw_process``)."""
    from recsys.features.read import OnlineReader
    from recsys.features.repo import feature_store
    from recsys.home import resolve_home
    from recsys.ranking.sources import Users
    from recsys.serving.service import one_tensorflow_thread

    one_tensorflow_thread()  # the service's TensorFlow settings (load_model)
    _, model, retrieval, description = components(home, n_items)
    ranking = model.ranking
    reader = OnlineReader(feature_store(resolve_home(home)))
    sample = [u for u in random.Random(1).choices(users, k=repeats) if reader.read(u)]
    rows = [(u, p.as_of, p.features) for u, p in ((u, reader.read(u)) for u in sample)]
    flat = [Users.from_features([row]) for row in rows]
    queries = [retrieval.embed_users(u) for u in flat]
    ordered = in_request_order(reader, ranking, retrieval, sample)
    index = retrieval.index
    alone = {
        "read": isolated(reader.read, sample),
        "frame": isolated(lambda row: Users.from_features([row]), rows),
        "query": isolated(retrieval.embed_users, flat),
        "search": isolated(lambda q: index.top_k(q, 20), queries),
        "rank": isolated(lambda u: ranking.rank_users(u, 20, exclude_purchased=True), flat),
    }
    labels = {
        "read": "online feature read (OnlineReader.read)",
        "frame": "flat profile (Users.from_features)",
        "query": "query tower (SavedRetrieval.embed_users)",
        "search": "ANN top-20 (EmbeddingIndex.top_k)",
        "rank": "ranking (Ranking.rank_users top-20, ANN inside)",
    }
    description += (
        f"; raw ANN: {len(index.ids):,} items, {index.method}; raw ranking: "
        f"{ranking.spec.name}, exclude_purchased"
    )
    parts = {name: (labels[name], ordered[name].tolist(), alone[name].tolist()) for name in PARTS}
    return parts, description


def child_env() -> dict[str, str]:
    """The environment of the service and raw-part processes: one polars thread, as `recsys
    serve` sets (a request ranks one user; polars' pool costs more than it saves there)."""
    env = dict(os.environ)
    env.setdefault("POLARS_MAX_THREADS", "1")
    return env


def raw_process(home: Path, n_items: int, users: list[int], repeats: int):
    """``raw_parts`` in a subprocess (its own polars thread setting, TensorFlow and caches)."""
    with tempfile.TemporaryDirectory() as tmp:
        users_path, out_path = Path(tmp) / "users.json", Path(tmp) / "parts.json"
        users_path.write_text(json.dumps(users))
        command = [sys.executable, __file__, "--raw", "--home", str(home)]
        command += ["--catalogue", str(n_items), "--repeats", str(repeats)]
        command += ["--users-file", str(users_path), "--out", str(out_path)]
        subprocess.run(command, check=True, env=child_env())
        result = json.loads(out_path.read_text())
    parts = {
        name: (label, np.array(ordered), np.array(alone))
        for name, (label, ordered, alone) in result["parts"].items()
    }
    return parts, result["description"], result["polars_threads"]


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
    process = subprocess.Popen(command, env=child_env())
    try:
        wait_ready(port, process)
        yield port
    finally:
        process.terminate()
        process.wait()


def bench_catalogue(
    home: Path, n_items: int, requests: int, repeats: int, users: list[int], t0
) -> None:
    rows: list[tuple[str, np.ndarray, float | None]] = []
    rng = random.Random(0)
    picked = [rng.choice(users) for _ in range(requests)]
    gets = [("GET", f"/v1/users/{u}/recommendations?k=20", b"") for u in picked]
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
        ranked = [("GET", f"/v1/users/{u}/ranked?k=20", b"") for u in picked]
        bare = []
        for name, requested in (
            ("GET bare route: retrieval parts + HTTP stack", gets),
            ("GET bare route: read + frame + ranking + HTTP stack", ranked),
        ):
            asyncio.run(load(port, requested[:200], 1))  # warm-up
            latencies, rate = asyncio.run(load(port, requested, 1))
            bare.append((f"{name}, concurrency 1", latencies, rate))
        rows[1:1] = bare
    parts, description, threads = raw_process(home, n_items, users, repeats)

    def floor(names: tuple[str, ...], which: int) -> float:
        return sum(float(np.median(parts[name][which])) for name in names)

    floors = {
        "floor": floor(RETRIEVAL_PARTS, 1),
        "hot floor": floor(RETRIEVAL_PARTS, 2),
        "ranked floor": floor(RANKED_PARTS, 1),
        "hot ranked floor": floor(RANKED_PARTS, 2),
    }
    size = f"{n_items:,} items" if n_items else "the home's own catalogue"
    table = Table(title=f"serving, {size}: {description}; POLARS_MAX_THREADS={threads}")
    table.add_column("measure", no_wrap=True)
    for column in ("p50 ms", "p99 ms", "req/s", *(f"p50 / {f}" for f in floors)):
        table.add_column(column, justify="right")
    blank = [""] * len(floors)
    for label, ordered, alone in parts.values():
        for how, values in (("in order", ordered), ("isolated", alone)):
            p50, p99 = np.percentile(values, [50, 99])
            table.add_row(f"raw: {label}, {how}", f"{p50:.3f}", f"{p99:.3f}", "", *blank)
    sums = {
        "floor": "floor = read + frame + query + ANN, in order",
        "hot floor": "hot floor = the same, isolated",
        "ranked floor": "ranked floor = read + frame + ranking, in order",
        "hot ranked floor": "hot ranked floor = the same, isolated",
    }
    for name, value in floors.items():
        ones = ["1.0x" if other == name else "" for other in floors]
        table.add_row(sums[name], f"{value:.3f}", "", "", *ones)
    for name, values, rate in rows:
        p50, p99 = np.percentile(values, [50, 99])
        ratios = [f"{p50 / value:.2f}x" for value in floors.values()]
        table.add_row(name, f"{p50:.3f}", f"{p99:.3f}", f"{rate:,.0f}", *ratios)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=1_000, help="users the raw parts time")
    parser.add_argument(
        "--catalogues", default="0,1000000", help="item counts; 0 = the home's own catalogue"
    )
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument(
        "--policy", default=None, help="train the home's model to serve this policy only"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--catalogue", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.home, args.catalogue, args.port, args.bare)
        return
    if args.raw:
        users = json.loads(args.users_file.read_text())
        parts, description = raw_parts(args.home, args.catalogue, users, args.repeats)
        import polars as pl

        result = {"parts": parts, "description": description}
        args.out.write_text(json.dumps({**result, "polars_threads": pl.thread_pool_size()}))
        return
    import duckdb

    home = args.home or Path(tempfile.mkdtemp(prefix="recsys-bench-serving-"))
    if not (home / "feast" / "registry.db").exists():
        prepare(home, args.users, args.items, args.days)
    ensure_model(home, args.policy)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        users = [r[0] for r in con.execute("select user_id from user_interest_shift").fetchall()]
        (t0,) = con.execute("select max(event_time) from events").fetchone()
    for n_items in (int(n) for n in args.catalogues.split(",")):
        bench_catalogue(home, n_items, args.requests, args.repeats, users, t0)


if __name__ == "__main__":
    main()
