"""Warehouse benchmark: ingest throughput and the time and memory to build every mart.

For each size (simulated events) it prints medians over --repeats runs, each against a floor
measured in the same run on the same data:

- ingest: recsys.ingest.ingest_file(fmt='csv') vs DuckDB's own typed read_csv into a table;
- marts: recsys.build.build(export=False) vs a plain
  ``create table t as select user_id, category_id, count(*) from events group by all``;
  each in a fresh subprocess, reporting its peak resident memory (VmHWM).

Targets: all marts for 10M events in < 30 s, <= 5x the floor, peak memory < 4 GB.

    python benchmarks/warehouse.py --sizes 1M,10M --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from recsys.config import Paths
from recsys.ingest import ingest_file
from recsys.simulate import SimulationConfig, simulate

EVENTS_PER_USER_DAY = 5.6  # the simulator's default: ~1 session/day x 5 views, plus follow-ups
DAYS = 30
CSV_COLUMNS = {
    "user_id": "BIGINT",
    "item_id": "BIGINT",
    "category_id": "BIGINT",
    "behavior": "VARCHAR",
    "event_time": "TIMESTAMP",
    "session_id": "VARCHAR",
}

# Runs in a child process so that the peak memory is that of this step alone.
CHILD = """
import json, sys, time
from pathlib import Path
import duckdb
from recsys.config import Paths
from recsys.build import build
home, step = Path(sys.argv[1]), sys.argv[2]
started = time.perf_counter()
if step == "marts":
    build(Paths(home), export=False)
else:
    con = duckdb.connect(str(home / "warehouse.duckdb"), config={"memory_limit": "4GB"})
    con.execute("create or replace table floor_t as "
                "select user_id, category_id, count(*) from events group by all")
    con.close()
seconds = time.perf_counter() - started
# VmHWM (not ru_maxrss, which a forked child inherits from its parent) is this process's own peak
status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
peak_mb = int(status.split()[0]) / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))
"""


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def write_events_csv(n_events: int, directory: Path) -> tuple[Path, int]:
    """Simulate about n_events events and write them as a canonical CSV; returns (path, rows)."""
    users = max(1, round(n_events / (EVENTS_PER_USER_DAY * DAYS)))
    sim = simulate(SimulationConfig(users=users, items=max(1000, users * 2), days=DAYS, seed=1))
    path = directory / f"events_{n_events}.csv"
    sim.events.write_csv(path)
    return path, sim.events.height


def time_ingest(csv_path: Path, work: Path) -> float:
    home = work / "ingest_home"
    shutil.rmtree(home, ignore_errors=True)
    started = time.perf_counter()
    ingest_file(Paths(home), csv_path, fmt="csv")
    return time.perf_counter() - started


def time_read_csv_floor(csv_path: Path, work: Path) -> float:
    db = work / "floor.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    started = time.perf_counter()
    con.execute(
        "create table t as select * from read_csv(?, header = true, columns = ?)",
        [str(csv_path), CSV_COLUMNS],
    )
    seconds = time.perf_counter() - started
    con.close()
    return seconds


def run_child(home: Path, step: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), step], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_size(n_events: int, repeats: int, work: Path) -> None:
    csv_path, rows = write_events_csv(n_events, work)
    ingest = [time_ingest(csv_path, work) for _ in range(repeats)]
    floor = [time_read_csv_floor(csv_path, work) for _ in range(repeats)]
    home = work / "ingest_home"  # the last ingest's warehouse
    marts = [run_child(home, "marts") for _ in range(repeats)]
    plain = [run_child(home, "floor") for _ in range(repeats)]

    def med(runs, key="seconds"):
        return statistics.median(r[key] if isinstance(r, dict) else r for r in runs)

    print(f"\n== {rows:,} events ({csv_path.stat().st_size / 1e6:.0f} MB CSV), {repeats} runs ==")
    print(
        f"ingest  : {rows / med(ingest):>12,.0f} rows/s  (median {med(ingest):.2f} s)  "
        f"floor read_csv {rows / med(floor):,.0f} rows/s ({med(floor):.2f} s)  "
        f"ratio {med(ingest) / med(floor):.2f}x"
    )
    print(
        f"marts   : {rows / med(marts):>12,.0f} events/s (median {med(marts):.2f} s, "
        f"peak {med(marts, 'peak_mb'):,.0f} MB)  floor group-by {med(plain):.2f} s "
        f"(peak {med(plain, 'peak_mb'):,.0f} MB)  ratio {med(marts) / med(plain):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated, e.g. 1M,10M")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        for size in args.sizes.split(","):
            bench_size(parse_size(size), args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
