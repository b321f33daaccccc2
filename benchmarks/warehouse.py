"""Warehouse benchmark: ingest throughput and the time and memory to build every mart.

For each size (simulated events) it prints medians over --repeats runs, each against a floor
measured in the same run on the same data:

- ingest: recsys.warehouse.ingest.ingest_file(fmt='csv') vs DuckDB's typed read_csv into a table;
- marts: recsys.warehouse.build.build(export=False) vs two floors:
  * group-by: ``create table t as select user_id, category_id, count(*) from events group by
    all``, one hash aggregate; the marts can never get near it, because sequence, session,
    transition and migration features need the events in each user's order;
  * sort: ``create table t as select <canonical columns> from events order by user_id,
    event_time``, the one full sort that any sequence or session feature needs at least. The
    build sorts all events twice (user order, source-session order) into the materialised
    ``live.int_event_stream``, sorts the ~1/5 of events that enter a category new to the user
    once more (``live.int_category_entries``), then runs hash aggregates, so a few times this
    floor is the realistic mark.

Every step runs in a fresh subprocess that reports its own peak resident memory (VmHWM of the
new process image; ru_maxrss of a forked child would include the parent's). The load average
is printed with the figures: other processes on the machine slow every step alike, so compare
the ratios, which are measured in the same run.

``--string-ids`` rewrites the simulated log with string ids (a UUID per user, ``SKU-`` codes for
items, category names), which ingest keys through the ``dim_*`` tables; the floor then reads the
ids as VARCHAR. Target (issue 12): >= 1.5M rows/s at 10M rows.

Targets (issue 2): ingest >= 2M rows/s (within 4x of the typed read); all marts for 10M events in
< 30 s, at <= 5x the group-by floor, peak memory < 4 GB. The group-by mark cannot be reached: one
sort of the events alone costs ~13x the group-by here, and the session, sequence and migration
marts need the events in each user's order.

    python benchmarks/warehouse.py --sizes 1M,10M --repeats 3
    python benchmarks/warehouse.py --sizes 10M --repeats 3 --string-ids
    python benchmarks/warehouse.py --sizes 10M --repeats 3 --incremental --baseline /tmp/prev

``--incremental`` (issue 12): a full build of 30 days of history, then one more simulated day
ingested and built incrementally, and with ``--baseline`` the previous release's full build of
the same history. Targets: the day <= 15% of the full build; the full build through dbt <= 1.2x
the previous release's runner, peak memory < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from recsys.warehouse.simulate import SimulationConfig, simulate

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
import json, shutil, sys, time
from pathlib import Path
import duckdb
from recsys.home import Paths
from recsys.warehouse.build import build
from recsys.warehouse.ingest import ingest_file
home, step, csv_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
FLOORS = {
    "group_by": "select user_id, category_id, count(*) from events group by all",
    "sort": "select user_id, item_id, category_id, behavior, event_time, session_id "
            "from events order by user_id, event_time",
}
if step == "ingest":
    shutil.rmtree(home, ignore_errors=True)
started = time.perf_counter()
if step == "ingest":
    ingest_file(Paths(home), csv_path, fmt="csv")
elif step == "read_csv":
    con = duckdb.connect(str(home / "floor.duckdb"))
    con.execute("create or replace table t as select * from read_csv(?, header = true, "
                "columns = ?)", [csv_path, json.loads(sys.argv[4])])
    con.close()
elif step == "marts":
    build(Paths(home), export=False, full=True)
elif step == "marts_previous":  # a release from before incremental builds: always full
    build(Paths(home), export=False)
elif step == "ingest_day":  # untimed set-up of an incremental step: one more day of events
    ingest_file(Paths(home), csv_path, fmt="csv")
elif step == "incremental":
    report = build(Paths(home), export=False)
    assert report.plan == "incremental", report.plan
else:
    con = duckdb.connect(str(home / "warehouse.duckdb"), config={"memory_limit": "4GB"})
    con.execute(f"create or replace table floor_t as {FLOORS[step]}")
    con.execute("drop table floor_t")
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


def write_events_csv(n_events: int, directory: Path, *, string_ids: bool) -> tuple[Path, int]:
    """Simulate about n_events events and write them as a canonical CSV (ids as strings with
    ``string_ids``); returns (path, rows)."""
    users = max(1, round(n_events / (EVENTS_PER_USER_DAY * DAYS)))
    sim = simulate(SimulationConfig(users=users, items=max(1000, users * 2), days=DAYS, seed=1))
    path = directory / f"events_{n_events}{'_strings' if string_ids else ''}.csv"
    events = sim.events
    if string_ids:
        events = duckdb.sql(
            """
            select md5(user_id::varchar)::uuid::varchar as user_id,
                   'SKU-' || lpad(item_id::varchar, 8, '0') as item_id,
                   'category ' || category_id as category_id,
                   * exclude (user_id, item_id, category_id)
            from events
            """
        ).pl()
    events.write_csv(path)
    return path, events.height


def run_child(
    home: Path, step: str, csv_path: Path, columns: dict[str, str], *, source: Path | None = None
) -> dict[str, float]:
    """Run one step in a fresh Python process (importing recsys from ``source``, a checkout of
    another release, when given); returns its seconds and peak memory (MB)."""
    env = os.environ | ({"PYTHONPATH": str(source)} if source else {})
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), step, str(csv_path), json.dumps(columns)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise SystemExit(f"step {step} on {home} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(runs: list[dict[str, float]], key: str = "seconds") -> float:
    return statistics.median(run[key] for run in runs)


def fig(runs: dict[str, list[dict[str, float]]], step: str) -> str:
    """A step's median seconds and peak memory."""
    return f"{median(runs[step]):.2f} s, peak {median(runs[step], 'peak_mb'):,.0f} MB"


def print_load(before: tuple[float, ...], after: tuple[float, ...]) -> None:
    """The load average around the runs: other processes slow every step alike."""
    print(
        "load average (1/5/15 min): before "
        + "/".join(f"{x:.2f}" for x in before)
        + ", after "
        + "/".join(f"{x:.2f}" for x in after)
        + f" on {os.cpu_count()} CPUs"
    )


def bench_size(n_events: int, repeats: int, work: Path, *, string_ids: bool) -> None:
    csv_path, rows = write_events_csv(n_events, work, string_ids=string_ids)
    columns = CSV_COLUMNS | (
        dict.fromkeys(("user_id", "item_id", "category_id"), "VARCHAR") if string_ids else {}
    )
    home = work / "home"  # the last ingest's warehouse is the one the marts are built from
    steps = ("ingest", "read_csv", "marts", "group_by", "sort")
    runs: dict[str, list[dict[str, float]]] = {step: [] for step in steps}
    load_before = os.getloadavg()
    for _ in range(repeats):  # interleaved, so a burst of load hits every step alike
        for step in steps:
            runs[step].append(run_child(home, step, csv_path, columns))
    load_after = os.getloadavg()

    marts = median(runs["marts"])
    ids = "string ids" if string_ids else "integer ids"
    print(
        f"\n== {rows:,} events, {ids} ({csv_path.stat().st_size / 1e6:.0f} MB CSV), "
        f"{repeats} runs =="
    )
    print_load(load_before, load_after)
    print(
        f"ingest  : {rows / median(runs['ingest']):>12,.0f} rows/s  ({fig(runs, 'ingest')})  "
        f"floor read_csv {rows / median(runs['read_csv']):,.0f} rows/s ({fig(runs, 'read_csv')})  "
        f"ratio {median(runs['ingest']) / median(runs['read_csv']):.2f}x"
    )
    print(f"marts   : {rows / marts:>12,.0f} events/s ({fig(runs, 'marts')})")
    for floor in ("group_by", "sort"):
        ratio = marts / median(runs[floor])
        print(f"  vs floor {floor:<8}: {fig(runs, floor)}  ratio {ratio:.2f}x")


def bench_incremental(n_events: int, repeats: int, work: Path, *, baseline: Path | None) -> None:
    """A full build of ``n_events`` events of history, then one more day ingested and built
    incrementally (on a copy of the fully built home, so every repeat starts alike); with
    ``baseline``, that checkout's full build of the same history in the same run."""
    users = max(1, round(n_events / (EVENTS_PER_USER_DAY * DAYS)))
    sim = simulate(SimulationConfig(users=users, items=max(1000, users * 2), days=DAYS + 1, seed=1))
    last_day = sim.events["event_time"].max().replace(hour=0, minute=0, second=0, microsecond=0)
    history_csv, day_csv = work / "history.csv", work / "day.csv"
    history = sim.events.filter(sim.events["event_time"] < last_day)
    day = sim.events.filter(sim.events["event_time"] >= last_day)
    history.write_csv(history_csv)
    day.write_csv(day_csv)
    home, daily, old = work / "history", work / "daily", work / "baseline"
    run_child(home, "ingest", history_csv, CSV_COLUMNS)
    if baseline:
        shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(home, old)
    runs: dict[str, list[dict[str, float]]] = {"full": [], "incremental": [], "baseline": []}
    load_before = os.getloadavg()
    for _ in range(repeats):  # interleaved, so a burst of load hits every step alike
        runs["full"].append(run_child(home, "marts", history_csv, CSV_COLUMNS))
        shutil.rmtree(daily, ignore_errors=True)
        shutil.copytree(home, daily)
        run_child(daily, "ingest_day", day_csv, CSV_COLUMNS)
        runs["incremental"].append(run_child(daily, "incremental", day_csv, CSV_COLUMNS))
        if baseline:
            runs["baseline"].append(
                run_child(old, "marts_previous", history_csv, CSV_COLUMNS, source=baseline)
            )
    load_after = os.getloadavg()

    print(
        f"\n== incremental: {history.height:,} events of history + one day of {day.height:,}, "
        f"{repeats} runs =="
    )
    print_load(load_before, load_after)
    full = median(runs["full"])
    print(f"full build (dbt)     : {fig(runs, 'full')}")
    share = median(runs["incremental"]) / full
    print(f"incremental, one day : {fig(runs, 'incremental')}  {share:.0%} of full")
    if baseline:
        print(
            f"previous release full: {fig(runs, 'baseline')}  (dbt full build "
            f"{full / median(runs['baseline']):.2f}x of it)  from {baseline}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated, e.g. 1M,10M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--string-ids", action="store_true", help="UUID users, SKU items, named categories"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="full build of each size's history vs one more day built incrementally",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="with --incremental: a checkout of another release (e.g. `git worktree add "
        "/tmp/prev <commit>`) whose full build is timed in the same run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        for size in args.sizes.split(","):
            if args.incremental:
                bench_incremental(parse_size(size), args.repeats, Path(tmp), baseline=args.baseline)
            else:
                bench_size(parse_size(size), args.repeats, Path(tmp), string_ids=args.string_ids)


if __name__ == "__main__":
    main()
