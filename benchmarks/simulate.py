"""Simulator benchmark: seconds to simulate ~1M events (median of 3) and ~10M events (one run).

The baseline, measured in the same run for the same number of events, is the floor of any
generator: six columns of uniform random numbers put into a polars DataFrame (no sessions,
interests, funnel or sorting). The ratio is the price of the realism.

    .venv/bin/python benchmarks/simulate.py [--repeats 3] [--skip-10m]

Targets on 2 cores: ~1M events in a few seconds, 10M events in under a minute. The sizes use the
default category association graph (association_probability 0.8); "~1M graph-free" is the same
log without it (association_probability 0, the simulator before the graph), to show its price.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from recsys.warehouse.simulate import SimulationConfig, simulate

SIZES = {
    "~1M": SimulationConfig(users=6_000, items=20_000, days=30, seed=0),
    "~1M graph-free": SimulationConfig(
        users=6_000, items=20_000, days=30, seed=0, association_probability=0.0
    ),
    "~10M": SimulationConfig(users=60_000, items=1_000_000, days=30, seed=0),
}
console = Console(width=140)


def time_simulation(config: SimulationConfig) -> tuple[float, int, int]:
    """Seconds, events and migrations of one ``simulate(config)``."""
    start = time.perf_counter()
    sim = simulate(config)
    return time.perf_counter() - start, sim.events.height, sim.migrations.height


def time_random_floor(rows: int) -> float:
    """Seconds to fill a six-column frame of ``rows`` uniform random values (the baseline)."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    pl.DataFrame({f"c{k}": rng.integers(0, 1 << 40, rows) for k in range(6)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of the ~1M simulation")
    parser.add_argument("--skip-10m", action="store_true", help="only the ~1M simulation")
    args = parser.parse_args()

    table = Table(title="recsys simulate (seconds)")
    for column in ("size", "config", "events", "migrations", "runs", "median s", "Mevents/s"):
        table.add_column(column, justify="right")
    table.add_column("floor s", justify="right")
    table.add_column("ratio", justify="right")
    for label, config in SIZES.items():
        if label == "~10M" and args.skip_10m:
            continue
        runs = args.repeats if label.startswith("~1M") else 1
        with console.status(f"simulating {label} events x{runs}"):
            results = [time_simulation(config) for _ in range(runs)]
            seconds = statistics.median(r[0] for r in results)
            _, events, migrations = results[0]
            floor = time_random_floor(events)
        table.add_row(
            label,
            f"u={config.users} i={config.items} d={config.days} "
            f"a={config.association_probability:g}",
            f"{events:,}",
            f"{migrations:,}",
            str(runs),
            f"{seconds:.2f}",
            f"{events / seconds / 1e6:.2f}",
            f"{floor:.2f}",
            f"{seconds / floor:.1f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
