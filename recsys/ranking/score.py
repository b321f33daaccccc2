"""``recsys score``: top-k for every known user from the newest trained model, written back.

The run lands in ``recommendations`` / ``recommendation_runs`` atomically (see
``recsys.warehouse.writeback``) with the model's version, its feature as-of time and the metrics of the
newest evaluation of the learned model, so analysts can compare runs in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import Progress

from recsys.evaluation.run import LEARNED_MODEL
from recsys.home import Paths
from recsys.warehouse.writeback import RunReport, open_for_read, write_run

MANIFEST = "manifest.json"


class ScoreError(Exception):
    """Scoring cannot start: no trained model or no users; the message says what to run."""


def latest_model_dir(paths: Paths) -> Path:
    """The newest saved model under ``paths.models`` (by its manifest's as-of, then name)."""
    saved = [p.parent for p in paths.models.glob(f"*/{MANIFEST}")]
    if not saved:
        raise ScoreError(f"no trained model in {paths.models}: run `recsys train` first")

    def key(directory: Path) -> tuple[str, str]:
        return json.loads((directory / MANIFEST).read_text()).get("as_of", ""), directory.name

    return max(saved, key=key)


def evaluation_metrics(paths: Paths, model: str = LEARNED_MODEL) -> dict[str, float]:
    """The newest evaluation's figures for ``model`` as {"<group>_<metric>_at_<k>": value};
    the "all" group drops its prefix (``recall_at_20``). Empty when never evaluated."""
    with open_for_read(paths) as con:
        exists = con.execute(
            "select count(*) from information_schema.tables where table_name = 'evaluation_runs'"
        ).fetchone()[0]
        row = (
            con.execute(
                "select metrics from evaluation_runs order by created_at desc limit 1"
            ).fetchone()
            if exists
            else None
        )
    if row is None:
        return {}
    return {
        ("" if r["group"] == "all" else f"{r['group']}_") + f"{r['metric']}_at_{r['k']}": r["value"]
        for r in json.loads(row[0])
        if r["model"] == model
    }


def known_users(paths: Paths) -> np.ndarray:
    with open_for_read(paths) as con:
        users = con.execute("select distinct user_id from events order by 1").fetchnumpy()
    return users["user_id"].astype(np.int64)


def purchases(paths: Paths) -> pl.DataFrame:
    """(user_id, item_id) of every purchase in the warehouse."""
    with open_for_read(paths) as con:
        return con.sql("select distinct user_id, item_id from events where behavior = 'buy'").pl()


class Scorer(Protocol):
    """What scoring needs of a model: ``InterestModel`` in production, a stub in tests."""

    as_of_: datetime

    def recommend_frame(self, user_ids: np.ndarray, k: int) -> pl.DataFrame: ...


def score_all(
    paths: Paths,
    *,
    k: int = 50,
    exclude_purchased: bool = True,
    retention: int = 5,
    console: Console | None = None,
) -> RunReport:
    """Recommend ``k`` items to every user in the warehouse with the newest saved model."""
    from recsys.models.interest import InterestModel

    directory = latest_model_dir(paths)
    return score_users(
        paths,
        InterestModel.load(directory),
        model_version=directory.name,
        k=k,
        exclude_purchased=exclude_purchased,
        retention=retention,
        console=console,
    )


def score_users(
    paths: Paths,
    model: Scorer,
    *,
    model_version: str,
    k: int = 50,
    exclude_purchased: bool = True,
    retention: int = 5,
    batch_users: int = 2_000,
    console: Console | None = None,
) -> RunReport:
    """Score every known user with ``model`` and write one run.

    With ``exclude_purchased`` (the policy option), items a user already bought never come
    back: the model is asked for ``k`` plus that user batch's largest purchase count, bought
    items are dropped, and the rest are re-ranked 1..k.
    """
    console = console or Console()
    if not 1 <= k <= 1000:
        raise ScoreError(f"k must be in 1..1000, got {k}")
    users = known_users(paths)
    if not len(users):
        raise ScoreError(f"no users in {paths.warehouse}: run `recsys ingest` first")
    bought = (
        purchases(paths)
        if exclude_purchased
        else pl.DataFrame(schema={"user_id": pl.Int64, "item_id": pl.Int64})
    )

    def top_k(chunk: np.ndarray) -> pl.DataFrame:
        mine = bought.filter(pl.col("user_id").is_in(chunk.tolist()))
        extra = int(mine.group_by("user_id").len()["len"].max() or 0) if mine.height else 0
        frame = model.recommend_frame(chunk, k + extra)
        if not extra:
            return frame
        return (
            frame.join(mine, on=["user_id", "item_id"], how="anti")
            .sort("user_id", "rank")
            .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int32))
            .filter(pl.col("rank") <= k)
        )

    def batches() -> Iterator[pl.DataFrame]:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"scoring {len(users):,} users", total=len(users))
            for start in range(0, len(users), batch_users):
                chunk = users[start : start + batch_users]
                yield top_k(chunk)
                progress.advance(task, len(chunk))

    return write_run(
        paths,
        batches(),
        model_version=model_version,
        features_as_of=model.as_of_,
        metrics=evaluation_metrics(paths),
        retention=retention,
    )
