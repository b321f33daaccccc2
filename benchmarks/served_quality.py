"""Served quality: does what ``recsys serve`` returns score like what ``recsys evaluate`` reports?

One global time split (the last calendar day of the data in ``--tz``), four views of it, all
scored in one command with the project's own split and metric code
(``recsys.evaluation.split.build_evaluation_set``, ``recsys.evaluation.metrics``):

1. all events are ingested into a scratch home (``recsys ingest``); ``last_day_split`` picks
   T (train end) and the test end; ``build_evaluation_set`` gives the test users (active on both
   sides of T), their truth and the groups all / shift / novel, exactly as ``recsys evaluate``;
2. the events before T go to ``WORKDIR/run/train_events.parquet`` and ``recsys pipeline``
   builds a training home from them (ingest, build, Feast, train, evaluate on its own last day,
   score + write-back). ``recsys serve`` is started on 127.0.0.1 for that home and every test
   user's ``GET /v1/users/{id}/recommendations?k=K&exclude_purchased=false`` is collected
   ("served (HTTP)");
3. the newest written-back run of that home (``latest_recommendations``), per user by rank
   ("written back (table)");
4. ``recsys evaluate --test-day D --no-ablations`` on the full file in a third home, whose
   metrics.json gives the chosen model's figures and every baseline's, on the same split.

Served and written-back lists are scored with ``metrics.evaluate`` (ks 20 and 50) and get 90%
bootstrap intervals over users (1000 resamples, fixed seed) for NDCG@20 and Recall@50; the
per-user values come from the project's ``hits`` / ``ndcg_at_k`` / ``recall_at_k``. The table
shows every row beside each other, then the ratios served/table and served/evaluate (group all)
with a within-2% check, and, for served, table and evaluate's model, the paired difference to
the best simple baseline (repeat, blend; refitted here on the same split for served and table,
metrics.json's paired delta to the best baseline for evaluate's model) with its 90% bootstrap
interval: "below" means below beyond chance, the interval's upper end under 0. Everything is
also written to ``WORKDIR/served_quality.json``.

Note the write-back policy: ``recsys score`` (the pipeline's last step) drops purchased items,
while the service is asked with ``exclude_purchased=false`` (``--exclude-purchased`` changes
that) and ``recsys evaluate``'s models drop nothing.

Usage:
    python benchmarks/served_quality.py --events ../shared/data/taobao_user_behavior_sample.csv \
        --format taobao --tz Asia/Shanghai [--workdir DIR] [--k 50]
    python benchmarks/served_quality.py --simulator [--users 3000 --items 20000 --days 21 --seed 7]

``WORKDIR/run`` (homes, logs, the training file) is recreated on every run, unless
``--pipeline-from STEP`` keeps it and restarts the training home's pipeline at STEP.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# One bootstrap for evaluate and this benchmark: users resampled with a fixed seed, so the
# intervals here match metrics.json's ``ci_low``/``ci_high`` for the same per-user values.
from recsys.evaluation.bootstrap import bootstrap_interval, paired_delta_interval

console = Console(width=160)  # tables stay readable when printed to a file

PAD = -1  # recsys.evaluation.metrics.PAD
KS = (20, 50)
GROUPS = ("all", "shift", "novel")
HEADLINE = (("ndcg", 20), ("recall", 50))
SIMPLE_BASELINES = ("repeat", "blend")
TOLERANCE = 0.02
SERVED = "served (HTTP)"
TABLE = "written back (table)"
STDERR_TAIL = 2_000


class BenchError(Exception):
    """A step failed; ``tail`` is the failing command's output tail (may be empty)."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


# --------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/test_served_quality.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecMatrix:
    """int64 [n_users, k] item ids in the evaluation's user order, padded with -1.

    ``missing``: users with no list at all; ``duplicates``: repeated items dropped from rows
    (a row must not repeat an item for the metrics); ``truncated``: items beyond k dropped.
    """

    recs: np.ndarray
    missing: int = 0
    duplicates: int = 0
    truncated: int = 0


def padded_matrix(lists: Mapping[int, Sequence[int]], user_ids: np.ndarray, k: int) -> RecMatrix:
    """Rows follow ``user_ids``; each row is the user's list (first occurrence of an item kept,
    at most ``k``), padded with -1; a user absent from ``lists`` gets an all -1 row."""
    recs = np.full((len(user_ids), k), PAD, dtype=np.int64)
    missing = duplicates = truncated = 0
    for row, user in enumerate(np.asarray(user_ids).tolist()):
        items = lists.get(int(user))
        if items is None:
            missing += 1
            continue
        unique = list(dict.fromkeys(int(i) for i in items))
        duplicates += len(items) - len(unique)
        truncated += max(len(unique) - k, 0)
        unique = unique[:k]
        recs[row, : len(unique)] = unique
    return RecMatrix(recs, missing, duplicates, truncated)


def lists_from_api(payloads: Mapping[int, Mapping[str, Any]]) -> dict[int, list[int]]:
    """{user_id: [item_id, ...]} from the service's JSON answers, in the answer's order."""
    return {
        int(user): [int(item["item_id"]) for item in payload.get("items", [])]
        for user, payload in payloads.items()
    }


def lists_from_rows(rows: pl.DataFrame) -> dict[int, list[int]]:
    """{user_id: [item_id, ...]} by ascending rank from rows with user_id, rank, item_id."""
    ordered = rows.select("user_id", "rank", "item_id").sort("user_id", "rank")
    grouped = ordered.group_by("user_id", maintain_order=True).agg(pl.col("item_id"))
    return {int(u): [int(i) for i in items] for u, items in grouped.iter_rows()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    if np.isnan(numerator) or np.isnan(denominator):
        return None
    return float(numerator / denominator)


def within(value: float | None, tolerance: float = TOLERANCE) -> bool | None:
    """Whether a ratio is within ``tolerance`` of 1 (None when there is no ratio)."""
    if value is None:
        return None
    return bool(abs(value - 1.0) <= tolerance + 1e-12)


def metric_value(
    results: pl.DataFrame, model: str, group: str, metric: str, k: int
) -> float | None:
    """One value of a long metrics frame (model, group, metric, k, value), None if absent."""
    hit = results.filter(
        (pl.col("model") == model)
        & (pl.col("group") == group)
        & (pl.col("metric") == metric)
        & (pl.col("k") == k)
    )
    return float(hit["value"][0]) if hit.height else None


def chosen_model(rows: list[dict[str, Any]], requested: str | None, default: str) -> str:
    """The model of metrics.json whose figures are "evaluate's": ``requested`` when given;
    else one flagged ``served``/``chosen`` in the rows; else a model named "served"; else
    ``default``."""
    if requested:
        return requested
    for flag in ("served", "chosen"):
        flagged = [r["model"] for r in rows if r.get(flag) is True]
        if flagged:
            return flagged[0]
    if any(r.get("model") == "served" for r in rows):
        return "served"
    return default


def paired_check(
    model: str,
    values: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
) -> list[dict[str, Any]]:
    """For each headline metric ("ndcg@20", "recall@50"): ``model``'s per-user ``values``
    against the best simple baseline's (``baselines[name][metric]``, the same users in the
    same order): the paired mean difference, its 90% bootstrap interval, and ``ok`` = not below
    beyond chance (the interval's upper end >= 0); ``point_below`` says whether the mean is
    lower at all."""
    out = []
    for metric, k in HEADLINE:
        key = f"{metric}@{k}"
        mine = np.asarray(values[key], np.float64)
        best = max(baselines, key=lambda b: float(np.mean(baselines[b][key])))
        reference = np.asarray(baselines[best][key], np.float64)
        low, high = paired_delta_interval(mine, reference)
        delta = float(mine.mean() - reference.mean())
        out.append(
            {
                "model": model,
                "metric": key,
                "value": float(mine.mean()),
                "best_baseline": best,
                "baseline_value": float(reference.mean()),
                "delta": delta,
                "delta_interval": [low, high],
                "point_below": delta < 0,
                "ok": bool(high >= 0),
            }
        )
    return out


def evaluate_delta(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    """``paired_check``'s rows for ``recsys evaluate``'s ``model`` from its metrics.json: the
    paired difference to its best baseline (over every baseline, so at least as strict)."""
    out = []
    for metric, k in HEADLINE:
        row = next(
            (
                r
                for r in rows
                if r["model"] == model
                and r["group"] == "all"
                and (r["metric"], r["k"]) == (metric, k)
            ),
            None,
        )
        if row is None or row.get("delta_vs_best_baseline") is None:
            continue
        delta = row["delta_vs_best_baseline"]
        out.append(
            {
                "model": model,
                "metric": f"{metric}@{k}",
                "value": row["value"],
                "best_baseline": row["best_baseline"],
                "baseline_value": row["value"] - delta,
                "delta": delta,
                "delta_interval": [row["delta_ci_low"], row["delta_ci_high"]],
                "point_below": delta < 0,
                "ok": bool(row["delta_ci_high"] >= 0),
            }
        )
    return out


def stderr_tail(text: str, limit: int = STDERR_TAIL) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


# --------------------------------------------------------------------------------------------
# Scoring with the project's metrics
# --------------------------------------------------------------------------------------------


def score_lists(recs: Mapping[str, np.ndarray], data) -> pl.DataFrame:
    """``metrics.evaluate`` as ``recsys evaluate`` calls it (the six core columns; the
    intervals of the headline metrics come from ``intervals``)."""
    from recsys.evaluation.metrics import RESULT_SCHEMA, evaluate

    results = evaluate(recs, data.truth, data.groups, ks=KS, catalogue_size=data.catalogue_size)
    return results.select(list(RESULT_SCHEMA))


def simple_baselines(data) -> dict[str, np.ndarray]:
    """The ``SIMPLE_BASELINES`` as ``recsys evaluate`` configures them, fitted on the split's
    training events: their recommendation matrices [n_users, max(KS)]."""
    from recsys.config import FeatureConfig
    from recsys.evaluation.run import baseline_factories

    factories = baseline_factories(FeatureConfig())
    return {
        name: factories[name]()
        .fit(data.train, data.split.train_end)
        .recommend(data.user_ids, max(KS))
        for name in SIMPLE_BASELINES
    }


def per_user_values(matrix: np.ndarray, data, group: str, metric: str, k: int) -> np.ndarray:
    """float [n_users of group]: the project's per-user metric (what ``evaluate`` averages)."""
    from recsys.evaluation.metrics import per_user_values as project_values

    if metric not in ("ndcg", "recall", "hit_rate"):
        raise ValueError(f"no per-user values for {metric}")
    values = project_values({"m": matrix}, data.truth, {group: data.groups[group]}, ks=(k,))
    return values[("m", group, metric, k)]


def intervals(matrix: np.ndarray, data, results: pl.DataFrame, model: str) -> dict[str, Any]:
    """{"<group>|<metric>@<k>": [low, high]} for the headline metrics of every group; checks
    that the per-user means equal ``evaluate``'s figures."""
    out: dict[str, Any] = {}
    for group in GROUPS:
        if group not in data.groups:
            continue
        for metric, k in HEADLINE:
            values = per_user_values(matrix, data, group, metric, k)
            reported = metric_value(results, model, group, metric, k)
            if reported is not None and not np.isclose(values.mean(), reported):
                raise BenchError(f"{model}: per-user {metric}@{k} mean != evaluate's figure")
            out[f"{group}|{metric}@{k}"] = list(bootstrap_interval(values))
    return out


# --------------------------------------------------------------------------------------------
# Commands and the service
# --------------------------------------------------------------------------------------------


def recsys_command() -> list[str]:
    script = Path(sys.executable).with_name("recsys")
    return [str(script)] if script.exists() else [sys.executable, "-m", "recsys.cli"]


def run_cli(args: list[str], label: str, log_dir: Path) -> float:
    """Run ``recsys ARGS`` with a spinner; output to ``log_dir/<label>.log``; seconds taken."""
    command = recsys_command() + args
    log = log_dir / f"{label.split()[0]}.log"
    started = time.perf_counter()
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    with console.status(f"{label}: {' '.join(command[1:])}"), log.open("w") as out:
        process = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchError(
            f"{label} failed (exit {process.returncode}, log {log}): {' '.join(command)}",
            stderr_tail(log.read_text(errors="replace")),
        )
    console.print(f"[green]✓[/] {label} ({seconds:.1f}s, log {log})")
    return seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 300.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(
                f"recsys serve exited during startup (exit {process.returncode}, log {log})",
                stderr_tail(log.read_text(errors="replace")),
            )
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            if answer.status_code == 200:
                return answer.json()
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise BenchError(f"recsys serve not ready after {timeout_s:.0f}s (log {log})")


@contextmanager
def service(home: Path, log_dir: Path) -> Iterator[tuple[int, dict]]:
    """``recsys serve`` for ``home`` on 127.0.0.1, ready; yields (port, /readyz body)."""
    port = free_port()
    log = log_dir / "serve.log"
    command = recsys_command() + ["serve", "--home", str(home), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        with console.status(f"starting recsys serve on 127.0.0.1:{port}"):
            ready = wait_ready(port, process, log)
        yield port, ready
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def fetch_served(
    port: int, user_ids: np.ndarray, k: int, exclude_purchased: bool
) -> tuple[dict[int, dict], np.ndarray]:
    """Every user's JSON answer and the per-request latency in ms."""
    import httpx

    payloads: dict[int, dict] = {}
    latencies = np.empty(len(user_ids))
    params = {"k": k, "exclude_purchased": str(exclude_purchased).lower()}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress,
    ):
        task = progress.add_task("GET recommendations", total=len(user_ids))
        for n, user in enumerate(np.asarray(user_ids).tolist()):
            started = time.perf_counter()
            answer = client.get(f"/v1/users/{user}/recommendations", params=params)
            latencies[n] = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise BenchError(
                    f"GET /v1/users/{user}/recommendations -> {answer.status_code}",
                    stderr_tail(answer.text),
                )
            payloads[int(user)] = answer.json()
            progress.advance(task)
    return payloads, latencies


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


@dataclass
class Source:
    path: Path
    fmt: str
    tz: str


@dataclass
class Outcome:
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def simulated_source(args: argparse.Namespace, run_dir: Path, log_dir: Path) -> Source:
    out = run_dir / "simulation"
    run_cli(
        ["simulate", "--users", str(args.users), "--items", str(args.items)]
        + ["--days", str(args.days), "--seed", str(args.seed), "--out", str(out)]
        + ["--home", str(run_dir / "scratch")],
        "simulate",
        log_dir,
    )
    return Source(out / "events.parquet", "parquet", "UTC")


def load_all_events(source: Source, home: Path, log_dir: Path) -> pl.DataFrame:
    """``recsys ingest`` into a scratch home, then its ``events`` table (read-only duckdb)."""
    import duckdb

    run_cli(
        ["ingest", str(source.path), "--format", source.fmt, "--home", str(home)],
        "ingest (scratch home)",
        log_dir,
    )
    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        columns = {r[0] for r in con.execute("describe events").fetchall()}
        wanted = ["user_id", "item_id", "category_id", "behavior", "event_time"]
        wanted += [c for c in ("session_id",) if c in columns]
        return con.sql(f"select {', '.join(wanted)} from events order by event_time").pl()
    finally:
        con.close()


def written_back(home: Path) -> tuple[dict[int, list[int]], dict[str, Any]]:
    """The newest complete run's lists (``latest_recommendations``) and its run row."""
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        rows = con.sql("select user_id, rank, item_id from latest_recommendations").pl()
        run = con.sql(  # every column: the table gains some (ranker, validation) over time
            "select * from recommendation_runs where status = 'complete' "
            "order by run_id desc limit 1"
        ).pl()
    finally:
        con.close()
    if rows.is_empty():
        raise BenchError(f"no written-back recommendations in {home / 'warehouse.duckdb'}")
    info = {
        k: (str(v) if isinstance(v, datetime) else v) for k, v in run.row(0, named=True).items()
    }
    return lists_from_rows(rows), info


def evaluate_metrics(eval_home: Path) -> tuple[list[dict[str, Any]], Path]:
    runs = sorted((eval_home / "evaluation").glob("*/metrics.json"))
    if not runs:
        raise BenchError(f"recsys evaluate wrote no metrics.json under {eval_home / 'evaluation'}")
    return json.loads(runs[-1].read_text()), runs[-1]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from recsys.evaluation.split import build_evaluation_set, last_day_split

    wall = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="served-quality-")).resolve()
    run_dir = workdir / "run"
    if run_dir.exists() and not args.pipeline_from:
        shutil.rmtree(run_dir)
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    scratch, train_home, eval_home = run_dir / "scratch", run_dir / "train", run_dir / "eval"
    console.print(f"workdir {workdir}")
    timings: dict[str, float] = {}

    # 1. all events, the split, the evaluation set
    if args.simulator:
        started = time.perf_counter()
        source = simulated_source(args, run_dir, log_dir)
        timings["simulate"] = time.perf_counter() - started
    else:
        source = Source(Path(args.events).resolve(), args.format, args.tz)
    started = time.perf_counter()
    events = load_all_events(source, scratch, log_dir)
    split = last_day_split(events, tz=source.tz)
    data = build_evaluation_set(events, split)
    test_day = split.train_end.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(source.tz))
    test_day = test_day.date()
    timings["load+split"] = time.perf_counter() - started
    n_groups = {g: data.groups[g].n_users for g in data.groups}
    console.print(
        f"{events.height:,} events; test day {test_day} ({source.tz}): train < {split.train_end}, "
        f"test < {split.test_end} (UTC); test users {n_groups}"
    )

    # 2. training home from the events before T, then the service
    train_file = run_dir / "train_events.parquet"
    split.train(events).write_parquet(train_file)
    config = run_dir / "pipeline.toml"
    config.write_text(
        f'[source]\nevents = "{train_file}"\nformat = "parquet"\n\n'
        f'[evaluation]\ntz = "{source.tz}"\n'
    )
    timings["pipeline"] = run_cli(
        ["pipeline", "--config", str(config), "--home", str(train_home)]
        + (["--from", args.pipeline_from] if args.pipeline_from else []),
        "pipeline",
        log_dir,
    )
    started = time.perf_counter()
    with service(train_home, log_dir) as (port, ready):
        console.print(f"service ready: model {ready.get('model')}")
        payloads, latencies = fetch_served(port, data.user_ids, args.k, args.exclude_purchased)
    timings["serve+requests"] = time.perf_counter() - started
    served_versions = sorted({str(p.get("model_version")) for p in payloads.values()})
    served_rankers = sorted({str(p.get("ranker")) for p in payloads.values()})
    served = padded_matrix(lists_from_api(payloads), data.user_ids, args.k)
    cold = sum(bool(p.get("cold_start")) for p in payloads.values())

    # 3. the written-back run
    table_lists, table_run = written_back(train_home)
    table = padded_matrix(table_lists, data.user_ids, args.k)

    # 4. recsys evaluate on the same split
    timings["evaluate"] = run_cli(
        ["evaluate", "--home", str(eval_home), "--events", str(source.path)]
        + ["--format", source.fmt, "--tz", source.tz, "--test-day", test_day.isoformat()]
        + ["--no-ablations"],
        "evaluate",
        log_dir,
    )
    eval_rows, eval_path = evaluate_metrics(eval_home)
    chosen = chosen_model(eval_rows, args.evaluate_model, "interest_model")
    eval_frame = pl.DataFrame(
        [
            {k: r[k] for k in ("model", "group", "metric", "k", "value", "n_users")}
            for r in eval_rows
        ]
    )
    if chosen not in eval_frame["model"].to_list():
        raise BenchError(
            f"model {chosen!r} not in {eval_path} (models: "
            f"{', '.join(eval_frame['model'].unique(maintain_order=True).to_list())})"
        )
    n_eval = eval_frame.filter((pl.col("model") == chosen) & (pl.col("group") == "all"))
    if n_eval.height and int(n_eval["n_users"][0]) != data.truth.n_users:
        raise BenchError(
            f"evaluate scored {int(n_eval['n_users'][0])} users, this split has "
            f"{data.truth.n_users}: the splits differ"
        )

    # 5. score served and written-back lists; intervals
    ours = score_lists({SERVED: served.recs, TABLE: table.recs}, data)
    results = pl.concat([ours, eval_frame.cast(ours.schema)])
    cis = {
        SERVED: intervals(served.recs, data, ours, SERVED),
        TABLE: intervals(table.recs, data, ours, TABLE),
    }

    # 6. comparison and checks
    comparisons = {}
    for metric, k in HEADLINE:
        s = metric_value(results, SERVED, "all", metric, k)
        for other, label in ((TABLE, "served/table"), (chosen, "served/evaluate")):
            r = ratio(s, metric_value(results, other, "all", metric, k))
            comparisons[f"{label}|{metric}@{k}"] = {"ratio": r, "within_2pct": within(r)}
    # The simple baselines refitted here on the same split, for paired per-user differences
    # (their means match metrics.json's up to the blend's solver noise, ~1e-4).
    simple = simple_baselines(data)
    headline = [(m, k) for m, k in HEADLINE]
    per_user = {
        name: {f"{m}@{k}": per_user_values(matrix, data, "all", m, k) for m, k in headline}
        for name, matrix in {SERVED: served.recs, TABLE: table.recs, **simple}.items()
    }
    reference = {name: per_user[name] for name in simple}
    baselines = [
        *paired_check(SERVED, per_user[SERVED], reference),
        *paired_check(TABLE, per_user[TABLE], reference),
        *evaluate_delta(eval_rows, chosen),
    ]
    models = [SERVED, TABLE, chosen] + [
        m for m in eval_frame["model"].unique(maintain_order=True).to_list() if m != chosen
    ]
    timings["total"] = time.perf_counter() - wall
    report = {
        "source": {"events": str(source.path), "format": source.fmt, "tz": source.tz},
        "workdir": str(workdir),
        "split": {
            "test_day": test_day.isoformat(),
            "train_end_utc": str(split.train_end),
            "test_end_utc": str(split.test_end),
            "n_events": events.height,
            "n_train_events": split.train(events).height,
            "catalogue_size": data.catalogue_size,
            "groups": n_groups,
        },
        "k": args.k,
        "exclude_purchased": args.exclude_purchased,
        "served": {
            "model_version": served_versions,
            "ranker": served_rankers,
            "readyz_model": ready.get("model"),
            "cold_start_users": cold,
            "missing_users": served.missing,
            "duplicate_items_dropped": served.duplicates,
            "short_lists": int((served.recs == PAD).any(axis=1).sum()),
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p99": float(np.percentile(latencies, 99)),
        },
        "table": {
            **table_run,
            "missing_users": table.missing,
            "duplicate_items_dropped": table.duplicates,
            "short_lists": int((table.recs == PAD).any(axis=1).sum()),
        },
        "evaluate": {"metrics_json": str(eval_path), "chosen_model": chosen},
        "models": models,
        "results": results.to_dicts(),
        "intervals_90": cis,
        "comparisons": comparisons,
        "baseline_checks": baselines,
        "timings_s": timings,
    }
    (workdir / "served_quality.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_report(report, results, cis, models)
    return report


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.4f}"
    if interval is not None:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def print_report(
    report: dict[str, Any], results: pl.DataFrame, cis: dict[str, Any], models: list[str]
) -> None:
    split = report["split"]
    title = (
        f"served quality: test day {split['test_day']} ({report['source']['tz']}), "
        f"k={report['k']}, 90% bootstrap CI over users"
    )
    table = Table(title=title)
    table.add_column("model", style="bold", no_wrap=True)
    groups = [g for g in GROUPS if g in split["groups"]]
    for group in groups:
        for metric, k in HEADLINE:
            name = {"ndcg": "NDCG", "recall": "Recall"}[metric]
            table.add_column(f"{group} n={split['groups'][group]}\n{name}@{k}", justify="right")
    for model in models:
        cells = []
        for group in groups:
            for metric, k in HEADLINE:
                key = f"{group}|{metric}@{k}"
                value = metric_value(results, model, group, metric, k)
                cells.append(_fmt(value, cis.get(model, {}).get(key)))
        label = model if model in (SERVED, TABLE) else f"{model} (evaluate)"
        table.add_row(label, *cells, end_section=model == models[2])
    console.print(table)

    def yes(flag: bool | None) -> str:
        return "n/a" if flag is None else ("yes" if flag else "NO")

    parts = []
    for key, c in report["comparisons"].items():
        label, metric = key.split("|")
        r = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
        parts.append(f"{label} {metric} {r} (within 2%: {yes(c['within_2pct'])})")
    console.print("ratios: " + "; ".join(parts))
    checks = report["baseline_checks"]
    for c in checks:
        low, high = c["delta_interval"]
        console.print(
            f"{c['model']} {c['metric']} {c['value']:.4f} - {c['best_baseline']} "
            f"{c['baseline_value']:.4f} = {c['delta']:+.4f} [{low:+.4f}, {high:+.4f}]"
            + ("" if c["ok"] else "  BELOW beyond chance"),
            highlight=False,
        )
    below = [c for c in checks if not c["ok"]]
    console.print(
        f"below the best simple baseline ({', '.join(SIMPLE_BASELINES)}) beyond chance (90% "
        f"paired interval under 0): {'YES: ' + str(len(below)) if below else 'no'} "
        f"({len(checks)} checks; lower point estimates: "
        f"{sum(c['point_below'] for c in checks)})",
        highlight=False,
    )
    s, t = report["served"], report["table"]
    console.print(
        f"served: model_version {s['model_version']}, ranker {s['ranker']}, "
        f"/readyz model {s['readyz_model']!r}, "
        f"cold start {s['cold_start_users']}, short lists {s['short_lists']}, duplicates "
        f"dropped {s['duplicate_items_dropped']}, p50 {s['latency_ms_p50']:.1f} ms, p99 "
        f"{s['latency_ms_p99']:.1f} ms (exclude_purchased={report['exclude_purchased']})",
        highlight=False,
    )
    console.print(
        f"table: run {t.get('run_id')} model_version {t.get('model_version')}, "
        f"ranker {t.get('ranker', '-')}, "
        f"features as of {t.get('features_as_of')}, test users missing {t['missing_users']}, "
        f"short lists {t['short_lists']} (recsys score drops purchased items)",
        highlight=False,
    )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items())
    console.print(f"timings: {timings}")
    console.print(f"wrote {Path(report['workdir']) / 'served_quality.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="event file (all of it; the split is chosen here)")
    source.add_argument("--simulator", action="store_true", help="use `recsys simulate`")
    parser.add_argument("--format", default="csv", help="format of --events (recsys ingest)")
    parser.add_argument("--tz", default="UTC", help="time zone of the day boundaries")
    parser.add_argument("--workdir", help="folder for homes, logs and served_quality.json")
    parser.add_argument("--k", type=int, default=50, help="items per user (>= 50)")
    parser.add_argument(
        "--evaluate-model",
        default=None,
        help="model of evaluate's metrics.json to compare with (default: the one it flags "
        "as served/chosen, else interest_model)",
    )
    parser.add_argument(
        "--exclude-purchased",
        action="store_true",
        help="ask the service to drop purchased items (default: exclude_purchased=false)",
    )
    parser.add_argument(
        "--pipeline-from",
        metavar="STEP",
        help="keep WORKDIR/run from an earlier run and restart the training home's pipeline "
        "at STEP (recsys pipeline --from), e.g. after a failed step",
    )
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.k < max(KS):
        parser.error(f"--k must be at least {max(KS)} (Recall@{max(KS)} is reported)")
    try:
        run_benchmark(args)
    except BenchError as exc:
        if exc.tail:
            console.print(exc.tail, markup=False, highlight=False)
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:  # the project's own errors (split, metrics) as one line
        console.print(f"[red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
