"""Reliability of POST /v1/events under concurrent posters, retries and a crash.

A ``recsys serve`` process (with API keys) serves a small simulated home. Then:

1. **posters**: ``--posters`` clients post ``--events`` events each, in batches of ``--batch``,
   every event with an ``event_id`` and WITHOUT ``event_time`` (so the server clock stamps it
   and only the id can tell a retry apart). Each acknowledged batch is posted again with
   probability ``--resend`` (an acknowledgement lost on the way back); a failed request is
   retried until it is acknowledged. Unless ``--no-crash``, the service is killed with
   ``kill -9`` once ``--crash-at`` of all batches are acknowledged and restarted at once; the
   posters' retries run into the restarted service. Meanwhile /healthz is probed every 10 ms.
2. **heavy batch**: one batch of 1,000 events for 10 users with
   ``return_recommendations=true&k=200``, while /healthz is probed every 5 ms.
3. The service is stopped (SIGTERM: the inbox is drained into the warehouse) and the
   warehouse's events from the service are counted per (user, item): each poster's event has
   its own pair, so a missing pair is a lost event and a second row a duplicate.

Usage:
    .venv/bin/python benchmarks/reliability_posters.py [--posters 16 --events 1000 --batch 50]
        [--resend 0.2] [--crash-at 0.4 | --no-crash] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from recsys.features.materialize import materialize
from recsys.home import Paths, resolve_home
from recsys.warehouse.build import build
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.simulate import SimulationConfig, simulate, write_simulation

WRITE_KEY = "bench-write-key-0123456789"
READ_KEY = "bench-read-key-0123456789"
FIRST_USER = 5_000_000  # poster p posts as user FIRST_USER + p
FIRST_ITEM = 9_000_000  # its event i is on item FIRST_ITEM + i (category given)
console = Console(width=140)


def scratch_home(root: Path) -> Paths:
    """A small simulated home, ingested, built and materialised."""
    paths = resolve_home(root / "home")
    sim = simulate(SimulationConfig(users=200, items=2_000, days=7, seed=11))
    events_path, _ = write_simulation(sim, root / "simulation")
    ingest_file(paths, events_path, fmt="parquet")
    build(paths)
    materialize(paths)
    return paths


class Service:
    """``recsys serve`` on a free loopback port; ``kill()`` is kill -9, ``restart()``."""

    def __init__(self, paths: Paths, log: Path) -> None:
        self.paths = paths
        self.log = log.open("a")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "recsys.cli", "serve", "--home", str(self.paths.home)]
        command += ["--port", str(self.port), "--drain-interval", "0.2"]
        env = {**os.environ, "RECSYS_API_KEYS": f"write:{WRITE_KEY},read:{READ_KEY}"}
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited during startup; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the service was not ready within 300 s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=300)


@dataclass
class Tally:
    requests: int = 0
    failed_requests: int = 0
    resent_batches: int = 0
    acknowledged_batches: int = 0
    outcomes: Counter = field(default_factory=Counter)


async def post_until_acknowledged(
    client: httpx.AsyncClient, body: dict, tally: Tally, url: str = "/v1/events"
) -> httpx.Response:
    """Post until a 200 comes back (connection errors and 5xx are retried, 4xx are bugs)."""
    while True:
        tally.requests += 1
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError:
            tally.failed_requests += 1
            await asyncio.sleep(0.2)
            continue
        if response.status_code == 200:
            return response
        if response.status_code < 500:
            raise RuntimeError(f"{response.status_code}: {response.text}")
        tally.failed_requests += 1
        await asyncio.sleep(0.2)


async def poster(
    number: int, args: argparse.Namespace, base_url: str, tally: Tally, acked: asyncio.Event
) -> None:
    rng = random.Random(number)
    headers = {"Authorization": f"Bearer {WRITE_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        for start in range(0, args.events, args.batch):
            body = {
                "events": [
                    {
                        "user_id": FIRST_USER + number,
                        "item_id": FIRST_ITEM + i,
                        "category_id": 1 + i % 7,
                        "behavior": "view",
                        "event_id": f"poster-{number}-event-{i}",
                    }
                    for i in range(start, min(args.events, start + args.batch))
                ]
            }
            sends = 1 + (rng.random() < args.resend)
            tally.resent_batches += sends - 1
            for _ in range(sends):
                response = await post_until_acknowledged(client, body, tally)
                tally.outcomes.update(r["outcome"] for r in response.json()["results"])
            tally.acknowledged_batches += 1
            acked.set()


async def probe_health(base_url: str, every_s: float, stop: asyncio.Event) -> list[float]:
    """/healthz latencies (ms) until ``stop``; failed probes (the crash) are left out."""
    latencies = []
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                if (await client.get("/healthz")).status_code == 200:
                    latencies.append((time.perf_counter() - began) * 1e3)
            except httpx.TransportError:
                pass
            await asyncio.sleep(every_s)
    return latencies


async def posters_phase(args: argparse.Namespace, service: Service) -> tuple[Tally, list[float]]:
    tally = Tally()
    acked = asyncio.Event()
    total = args.posters * -(-args.events // args.batch)
    stop = asyncio.Event()
    health = asyncio.create_task(probe_health(service.url, 0.01, stop))
    tasks = [
        asyncio.create_task(poster(p, args, service.url, tally, acked)) for p in range(args.posters)
    ]
    if not args.no_crash:
        while tally.acknowledged_batches < args.crash_at * total:
            acked.clear()
            await acked.wait()
        console.print(f"kill -9 after {tally.acknowledged_batches} of {total} batches")
        await asyncio.to_thread(service.kill)
        await asyncio.to_thread(service.start)
        console.print("restarted")
    await asyncio.gather(*tasks)
    stop.set()
    return tally, await health


async def heavy_phase(service: Service) -> tuple[float, list[float]]:
    """Seconds of one 1,000-event batch for 10 users with their top-200, and the /healthz
    latencies meanwhile."""
    body = {
        "events": [
            {
                "user_id": FIRST_USER + 1000 + i % 10,
                "item_id": FIRST_ITEM + i,
                "category_id": 1 + i % 7,
                "behavior": "view",
                "event_id": f"heavy-{i}",
            }
            for i in range(1000)
        ]
    }
    stop = asyncio.Event()
    health = asyncio.create_task(probe_health(service.url, 0.005, stop))
    await asyncio.sleep(0.2)
    headers = {"Authorization": f"Bearer {WRITE_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=120) as client:
        began = time.perf_counter()
        response = await client.post("/v1/events?return_recommendations=true&k=200", json=body)
        took = time.perf_counter() - began
    stop.set()
    assert response.status_code == 200, response.text
    assert len(response.json()["recommendations"]) == 10
    return took, await health


def count_stored(paths: Paths, args: argparse.Namespace) -> tuple[int, int, int]:
    """(rows, lost, duplicated) of the posters' events in the warehouse."""
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        pairs = con.execute(
            "select user_id, item_id, count(*) from events "
            "where source_file = ? and user_id between ? and ? group by all",
            ["service:/v1/events", FIRST_USER, FIRST_USER + args.posters - 1],
        ).fetchall()
    rows = sum(n for *_, n in pairs)
    return rows, args.posters * args.events - len(pairs), rows - len(pairs)


def percentiles(latencies: list[float]) -> str:
    p50, p99 = np.percentile(latencies, [50, 99])
    return f"p50 {p50:.1f} / p99 {p99:.1f} / max {max(latencies):.1f} ms ({len(latencies)} probes)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posters", type=int, default=16)
    parser.add_argument("--events", type=int, default=1000, help="events per poster")
    parser.add_argument("--batch", type=int, default=50, help="events per request")
    parser.add_argument("--resend", type=float, default=0.2, help="P(an acked batch is resent)")
    parser.add_argument("--crash-at", type=float, default=0.4, help="share of batches acked")
    parser.add_argument("--no-crash", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    with console.status("building a scratch home"):
        paths = scratch_home(root)
    service = Service(paths, root / "service.log")
    service.start()
    began = time.perf_counter()
    tally, health = asyncio.run(posters_phase(args, service))
    posting_s = time.perf_counter() - began
    heavy_s, heavy_health = asyncio.run(heavy_phase(service))
    service.stop()
    rows, lost, duplicated = count_stored(paths, args)

    table = Table(title=f"reliability: {args.posters} posters x {args.events} events")
    table.add_column("measure")
    table.add_column("value", justify="right")
    crash = "no crash" if args.no_crash else f"kill -9 at {args.crash_at:.0%} of the batches"
    table.add_row("events posted (each with an event_id, no event_time)", f"{rows + lost:,}")
    table.add_row("scenario", f"batches of {args.batch}, {args.resend:.0%} resent, {crash}")
    table.add_row("requests (retries included)", str(tally.requests))
    table.add_row("requests that failed (the crash) and were retried", str(tally.failed_requests))
    table.add_row("batches resent after an ack", str(tally.resent_batches))
    table.add_row("outcomes reported", str(dict(tally.outcomes)))
    table.add_row("rows in the warehouse", f"{rows:,}")
    table.add_row("[bold]events lost[/]", str(lost))
    table.add_row("[bold]events duplicated[/]", str(duplicated))
    table.add_row("posting time", f"{posting_s:.1f} s")
    table.add_row("/healthz while posting", percentiles(health))
    table.add_row("1,000-event batch + 10 users' top-200", f"{heavy_s:.2f} s")
    table.add_row("[bold]/healthz during that batch[/]", percentiles(heavy_health))
    console.print(table)
    console.print(f"home and service log in {root}")
    if lost or duplicated:
        sys.exit(1)


if __name__ == "__main__":
    main()
