"""Persist and display evaluation results (the long-format frame of ``metrics.evaluate``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from rich.table import Table

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.metrics import EVALUATE_SCHEMA, RESULT_SCHEMA

METRICS_FILE = "metrics.json"
# A metrics.json row: evaluate's columns plus, per model, the policy a learned model served
# (null for baselines) and whether it is the model ``recsys serve`` serves.
MODEL_SCHEMA = {"policy": pl.String, "served": pl.Boolean}
METRICS_JSON_SCHEMA = {**EVALUATE_SCHEMA, **MODEL_SCHEMA}


def check_results(results: pl.DataFrame) -> None:
    """Raise EvaluationError unless ``results`` has the columns of ``evaluate``'s result."""
    missing = [c for c in RESULT_SCHEMA if c not in results.columns]
    if missing:
        raise EvaluationError(f"results frame lacks columns {missing}")
    if results.is_empty():
        raise EvaluationError("results frame is empty")


def normalized(results: pl.DataFrame) -> pl.DataFrame:
    """``results`` with exactly the ``METRICS_JSON_SCHEMA`` columns, in order (absent ones
    null; ``served`` false when absent)."""
    check_results(results)
    missing = {c: t for c, t in METRICS_JSON_SCHEMA.items() if c not in results.columns}
    results = results.with_columns(
        pl.lit(False if c == "served" else None, dtype=t).alias(c) for c, t in missing.items()
    )
    return results.select(pl.col(c).cast(t) for c, t in METRICS_JSON_SCHEMA.items())


def metrics_rows(results: pl.DataFrame) -> list[dict[str, object]]:
    """The rows of metrics.json (also the ``evaluation_runs.metrics`` JSON): one object per
    (model, group, metric, k) with the ``METRICS_JSON_SCHEMA`` keys; NaN becomes null."""
    return normalized(results).fill_nan(None).to_dicts()


def write_metrics_json(results: pl.DataFrame, run_dir: Path) -> Path:
    """Write ``run_dir/metrics.json``: a list of ``metrics_rows(results)``."""
    rows = metrics_rows(results)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / METRICS_FILE
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def read_metrics_json(path: Path) -> pl.DataFrame:
    """The frame a ``write_metrics_json`` call wrote (older files without the interval or
    model columns get them as nulls)."""
    rows = json.loads(path.read_text())
    frame = pl.DataFrame(rows, schema_overrides=RESULT_SCHEMA, infer_schema_length=None)
    return normalized(frame)


def metrics_table(
    results: pl.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    columns: Sequence[tuple[str, str, int]] | None = None,
    title: str = "offline evaluation",
) -> Table:
    """A rich table: one row per model (first-seen order), one column per group x metric@k.

    ``metrics`` limits the columns to those metric names, ``columns`` to exactly those
    (group, metric, k) triples in that order; values show 4 decimals and each group's user count
    appears in its column headers.
    """
    check_results(results)
    if metrics is not None:
        results = results.filter(pl.col("metric").is_in(list(metrics)))
    columns_frame = results.select("group", "metric", "k", "n_users").unique(
        subset=["group", "metric", "k"], maintain_order=True
    )
    if columns is not None:
        wanted = pl.DataFrame(
            list(columns), schema=["group", "metric", "k"], orient="row"
        ).with_columns(pl.col("k").cast(columns_frame.schema["k"]))
        columns_frame = wanted.join(
            columns_frame, on=["group", "metric", "k"], how="inner", maintain_order="left"
        )
    columns = columns_frame
    table = Table(title=title)
    table.add_column("model", style="bold", no_wrap=True)
    for group, metric, k, n_users in columns.rows():
        table.add_column(f"{group}\n{metric}@{k}\nn={n_users}", justify="right")
    values = {(m, g, me, k): v for m, g, me, k, v in results.select(list(RESULT_SCHEMA)[:5]).rows()}
    for model in results["model"].unique(maintain_order=True):
        cells = [values.get((model, g, me, k)) for g, me, k, _ in columns.rows()]
        table.add_row(model, *("-" if v is None else f"{v:.4f}" for v in cells))
    return table
