"""GNN benchmark: seconds per training step and peak memory from 1M to 20M graph edges.

For each size (directed input edges, reverse edge sets not counted) and each training mode of
``recsys.models.gnn`` ("full": message passing over the whole graph every step; "sampled":
TF-GNN's in-memory sampler draws a subgraph around each target user and item) it builds a
synthetic graph shaped like the marts' (per input edge: 70% user -> item in the four
behaviours, 25% item -> item transitions, 5% item -> category: one item per 20 edges, one user per
30 edges) and times ``--steps`` steps of ``GnnTrainStep`` after one untimed step (which traces).

Each (size, mode) runs in a fresh subprocess that reports its own peak resident memory (VmHWM).
A watchdog kills a run whose resident memory passes ``--max-rss-mb``; the table shows it as
over the cap and skips the bigger graphs of that mode. Full-graph training keeps every edge's
messages for the backward pass, so its memory grows with the edges until it no longer fits.
The load average is printed with the table: other processes on the machine slow every step.

    python benchmarks/gnn_scaling.py --edges 1M,2M,5M,10M,20M --modes full,sampled
    python benchmarks/gnn_scaling.py --edges 1M --modes full --steps 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

MODES = ("full", "sampled")


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def measure(edges: int, mode: str, *, steps: int, batch_size: int, hidden_dim: int) -> dict:
    """Run in the child: build the graph, take 1 + ``steps`` steps; seconds and peak memory."""
    import numpy as np
    import tensorflow as tf

    from recsys.models import gnn
    from recsys.warehouse.schema import BEHAVIORS

    rng = np.random.default_rng(0)
    n_users, n_items, n_categories = edges // 30, edges // 20, 1_000
    user_item = int(edges * 0.70)
    shares = np.array([0.85, 0.07, 0.04, 0.04])  # view, cart, fav, buy
    counts = np.floor(user_item * shares / shares.sum()).astype(int)

    def pairs(n: int, n_src: int, n_dst: int) -> gnn.EdgeArrays:
        return (
            rng.integers(0, n_src, n),
            rng.integers(0, n_dst, n),
            rng.uniform(0.1, 1.0, n).astype(np.float32),
        )

    user_item = {b: pairs(c, n_users, n_items) for b, c in zip(BEHAVIORS, counts, strict=True)}
    started = time.perf_counter()
    graph = gnn.build_graph(
        n_users=n_users,
        n_items=n_items,
        n_categories=n_categories,
        user_item_edges=user_item,
        item_item_edges=pairs(edges - int(counts.sum()) - n_items, n_items, n_items),
        item_category=rng.integers(0, n_categories, n_items),
    )
    config = gnn.GnnConfig(
        hidden_dim=hidden_dim, batch_size=batch_size, training_mode=mode, show_progress=False
    )
    trainer = gnn.GnnTrainStep(graph, config=config)
    built = time.perf_counter() - started

    def batch():
        return (
            tf.constant(rng.integers(0, n_users, batch_size), tf.int64),
            tf.constant(rng.integers(0, n_items, batch_size), tf.int64),
            tf.ones([batch_size], tf.float32),
        )

    started = time.perf_counter()
    float(trainer.step(*batch()))
    first = time.perf_counter() - started
    times = []
    for _ in range(steps):
        users, items, weights = batch()
        started = time.perf_counter()
        float(trainer.step(users, items, weights))
        times.append(time.perf_counter() - started)
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return {
        "edges": gnn.num_input_edges(graph),
        "build_s": built,
        "first_step_s": first,
        "step_s": float(np.median(times)),
        "peak_mb": int(status.split()[0]) / 1024,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` now (0 once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    return int(status.split("VmRSS:")[1].split()[0]) / 1024 if "VmRSS:" in status else 0.0


def run_child(edges: int, mode: str, args: argparse.Namespace) -> dict:
    """``measure`` in a subprocess, killed once its memory passes ``args.max_rss_mb``."""
    command = [sys.executable, __file__, "--child", str(edges), mode]
    command += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    command += ["--hidden-dim", str(args.hidden_dim)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done, over = threading.Event(), threading.Event()

    def watch():
        # Sampling RSS is the only way to stop a run before it takes the machine's memory.
        while not done.wait(0.2):
            if rss_mb(proc.pid) > args.max_rss_mb:
                over.set()
                proc.kill()
                return

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"over {args.timeout} s"}
    finally:
        done.set()
        watchdog.join()
    if over.is_set():
        return {"error": f"over {args.max_rss_mb:,} MB", "capped": True}
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:80]}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", default="1M,2M,5M,10M,20M", help="comma-separated sizes")
    parser.add_argument("--modes", default="full,sampled", help=f"comma-separated: {MODES}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--batch-size", type=int, default=1024, help="target pairs per step")
    parser.add_argument("--hidden-dim", type=int, default=32)
    parser.add_argument("--max-rss-mb", type=int, default=8000, help="kill a run above this")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--child", nargs=2, metavar=("EDGES", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(
            int(args.child[0]),
            args.child[1],
            steps=args.steps,
            batch_size=args.batch_size,
            hidden_dim=args.hidden_dim,
        )
        print(json.dumps(result))
        return

    sizes = [parse_size(s) for s in args.edges.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    console = Console()
    console.print(
        f"{os.cpu_count()} CPUs, batch {args.batch_size}, hidden {args.hidden_dim}, "
        f"{args.steps} timed steps, cap {args.max_rss_mb:,} MB"
    )
    # Other processes on a shared machine slow every step: the load says how much.
    load_before = os.getloadavg()[0]
    table = Table("edges", "mode", "s/step", "first step s", "build s", "peak RSS MB")
    runs = [(size, mode) for mode in modes for size in sizes]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("GNN scaling", total=len(runs))
        capped: set[str] = set()  # modes that went over the cap: bigger graphs will too
        for size, mode in runs:
            progress.update(task, description=f"{size:,} edges, {mode}")
            r = {"error": "skipped (cap)"} if mode in capped else {}
            r = r or run_child(size, mode, args)
            if r.get("capped"):
                capped.add(mode)
            if "error" in r:
                table.add_row(f"{size:,}", mode, r["error"], "", "", "")
            else:
                table.add_row(
                    f"{r['edges']:,}",
                    mode,
                    f"{r['step_s']:.2f}",
                    f"{r['first_step_s']:.1f}",
                    f"{r['build_s']:.1f}",
                    f"{r['peak_mb']:,.0f}",
                )
            progress.advance(task)
    console.print(table)
    load_after = os.getloadavg()[0]
    console.print(f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after")


if __name__ == "__main__":
    main()
