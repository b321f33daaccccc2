"""``recsys score``: top-k for every known user, ranked by a trained model, written back.

Profiles are read from the home's Feast exports as of their newest snapshot: the rows
``recsys features materialize`` puts online, so the service returns the same lists until new
events arrive. The run lands in ``recommendations`` / ``recommendation_runs`` atomically (see
``recsys.warehouse.writeback``) with the model's version, the policy that ranked, the
validation figures it was chosen on and the newest evaluation's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import Progress

from recsys.home import Paths
from recsys.ranking.policy import EXCLUDE_PURCHASED, Ranking
from recsys.ranking.profiles import profiles_at
from recsys.ranking.reasons import COLD_START_REASON
from recsys.warehouse.writeback import RunReport, open_for_read, write_run

EVALUATED_MODEL = "interest_model"


class ScoreError(Exception):
    """Scoring cannot start: no trained model or no users; the message says what to run."""


class Scorer(Protocol):
    """What scoring needs of a model: ``InterestModel`` in production, a stub in tests."""

    ranking_: Ranking
    as_of_: datetime

    def summary(self) -> dict[str, Any]: ...


def evaluation_metrics(paths: Paths, model: str = EVALUATED_MODEL) -> dict[str, float]:
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


def cold_start(ranking: Ranking, user_ids: np.ndarray, k: int) -> pl.DataFrame:
    """The rows of users without a profile: the popular items, "trending now"."""
    popular = ranking.tables.popular(k)
    items = ranking.tables.items.select("item_id", "category_id")
    return (
        pl.DataFrame({"user_id": np.asarray(user_ids, np.int64)})
        .join(
            popular.with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32)),
            how="cross",
        )
        .join(items, on="item_id", how="left")
        .select(
            "user_id",
            "rank",
            "item_id",
            pl.col("popular_score").alias("score"),
            "category_id",
            source=pl.lit("popular"),
            sources=pl.lit(["popular"], pl.List(pl.String)),
            reason=pl.lit(COLD_START_REASON),
        )
    )


def score_users(
    paths: Paths,
    model: Scorer,
    *,
    model_version: str,
    k: int = 50,
    exclude_purchased: bool = EXCLUDE_PURCHASED,
    retention: int = 5,
    batch_users: int = 2_000,
    console: Console | None = None,
) -> RunReport:
    """Rank ``k`` items for every user of the warehouse with ``model`` and write one run.

    With ``exclude_purchased`` (the policy option, as in the API), items the user bought within
    the recent sequence never come back."""
    from recsys.features.materialize import export_time_range

    console = console or Console()
    if not 1 <= k <= 1000:
        raise ScoreError(f"k must be in 1..1000, got {k}")
    users = known_users(paths)
    if not len(users):
        raise ScoreError(f"no users in {paths.warehouse}: run `recsys ingest` first")
    _, as_of = export_time_range(paths)
    ranking = model.ranking_

    def batches() -> Iterator[pl.DataFrame]:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"scoring {len(users):,} users", total=len(users))
            for start in range(0, len(users), batch_users):
                chunk = users[start : start + batch_users]
                profiles = profiles_at(paths, chunk, as_of)
                ranked = ranking.rank(profiles, k, exclude_purchased=exclude_purchased)
                cold = np.setdiff1d(chunk, profiles["user_id"].to_numpy())
                yield pl.concat([ranked, cold_start(ranking, cold, k)]) if len(cold) else ranked
                progress.advance(task, len(chunk))

    summary = model.summary()
    return write_run(
        paths,
        batches(),
        model_version=model_version,
        features_as_of=as_of,
        metrics=evaluation_metrics(paths),
        ranker=summary["policy"],
        validation=summary["validation"],
        retention=retention,
    )
