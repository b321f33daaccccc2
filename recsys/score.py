"""``recsys score``: top-k for every known user from the newest trained model, written back.

The run lands in ``recommendations`` / ``recommendation_runs`` atomically (see
``recsys.writeback``) with the model's version, its feature as-of time and the metrics of the
newest evaluation of the learned model, so analysts can compare runs in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import Progress

from recsys.config import Paths
from recsys.evaluate import LEARNED_MODEL
from recsys.writeback import RunReport, open_for_read, write_run

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


def score_all(
    paths: Paths,
    *,
    k: int = 50,
    retention: int = 5,
    batch_users: int = 2_000,
    console: Console | None = None,
) -> RunReport:
    """Recommend ``k`` items to every user in the warehouse and write one run."""
    from recsys.learned.model import InterestModel

    console = console or Console()
    if not 1 <= k <= 1000:
        raise ScoreError(f"k must be in 1..1000, got {k}")
    directory = latest_model_dir(paths)
    model = InterestModel.load(directory)
    users = known_users(paths)
    if not len(users):
        raise ScoreError(f"no users in {paths.warehouse}: run `recsys ingest` first")

    def batches() -> Iterator[pl.DataFrame]:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"scoring {len(users):,} users", total=len(users))
            for start in range(0, len(users), batch_users):
                chunk = users[start : start + batch_users]
                yield model.recommend_frame(chunk, k)
                progress.advance(task, len(chunk))

    return write_run(
        paths,
        batches(),
        model_version=directory.name,
        features_as_of=model.as_of_,
        metrics=evaluation_metrics(paths),
        retention=retention,
    )
