"""``recsys evaluate``: every model on one global time split, with results a script can compare.

Protocol: train on events before T, test on [T, T + window) for users active on both sides,
with features as of T only (each recommender's ``fit(events, as_of=T)`` never reads events at or
after T). Baselines run in the same call on the same split. Output, per run:

- ``DIR/evaluation/<run_id>/metrics.json``: one object per (model, group, metric, k) with the
  mean, a 90% paired bootstrap interval over users and the difference to the best baseline
  (``metrics.evaluate``), and for learned models the policy they served;
- PNG plots beside it (metric by model, metric by user group);
- a row in the warehouse table ``evaluation_runs``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.progress import Progress

from recsys.config import FeatureConfig
from recsys.evaluation.baselines import (
    ALS,
    CandidateBlend,
    CategoryInterest,
    ItemKNN,
    Popularity,
    Recommender,
    Repeat,
)
from recsys.evaluation.metrics import evaluate
from recsys.evaluation.plots import write_plots
from recsys.evaluation.report import metrics_rows, metrics_table, write_metrics_json
from recsys.evaluation.split import (
    EvaluationSet,
    TimeSplit,
    build_evaluation_set,
    day_split,
    last_day_split,
)
from recsys.home import Paths
from recsys.warehouse.connect import connect, load_events

KS = (20, 50)
# The columns shown on screen; metrics.json holds every (group, metric, k).
HEADLINE = (
    ("all", "ndcg", 20),
    ("all", "recall", 50),
    ("all", "hit_rate", 20),
    ("shift", "ndcg", 20),
    ("novel", "recall", 50),
    ("all", "coverage", 50),
)
EVALUATION_RUNS_DDL = """
create table if not exists evaluation_runs (
    run_id varchar primary key,
    created_at timestamp not null,
    train_end timestamp not null,
    test_end timestamp not null,
    n_test_users bigint not null,
    models varchar[] not null,
    metrics json not null,
    metrics_path varchar not null
)
"""

RecommenderFactory = Callable[[], Recommender]


def baseline_factories(config: FeatureConfig) -> dict[str, RecommenderFactory]:
    """The baselines a practitioner reaches for first.

    Settings were chosen on the validation day of the Taobao sample (the day before its test
    day), never on a test day: repeat half-life 14 d, category interest 24 h, item-kNN over the
    5 most recent items, ALS with BM25 weighting.
    """
    return {
        "popularity": lambda: Popularity(config),
        "recent_popularity": lambda: Popularity(config, config.short_half_life_hours),
        "repeat": lambda: Repeat(config, half_life_hours=config.long_half_life_hours),
        "category_interest": lambda: CategoryInterest(
            config, interest_half_life_hours=config.short_half_life_hours
        ),
        "item_knn": lambda: ItemKNN(config, n_recent=5),
        "als": lambda: ALS(config, weighting="bm25", regularization=0.05),
        "blend": lambda: CandidateBlend(config=config),
    }


LEARNED_MODEL = "interest_model"


ABLATIONS = (
    "full",
    "full-no_gnn",
    "full-no_sequence",
    "full-no_next_category",
    "full-no_multi_interest",
)
# Every component on: the GNN embeddings and the sequence encoder in the query tower, the
# next_category source and one ANN query per top short-horizon interest (up to 3).
FULL_TOWERS = {"use_gnn": True, "use_sequence": True}
FULL_RANKING = {"next_categories": True, "ann_interests": 3}
# The full model and its ablations serve the learned policy whatever the validation day says:
# a simple fallback uses none of the components, and a switch between learned policies would
# change two things at once.
LEARNED_POLICIES = ("learned",)


def learned_models(*, ablations: bool) -> dict[str, RecommenderFactory]:
    """The learned interest model as served (its defaults) and, with ``ablations``, the full
    model (every component on: ``FULL_TOWERS``, ``FULL_RANKING``) and the full model without
    one component each (same data, same seeds): ``-full-no_gnn`` (tower inputs without the GNN
    embeddings), ``-full-no_sequence`` (no sequence encoder), ``-full-no_next_category`` (no
    next-category candidate source) and ``-full-no_multi_interest`` (one ANN query per user
    instead of one per interest). These serve the learned policy (``LEARNED_POLICIES``). A
    component is on by default only when removing it from the full model costs more than the
    paired interval."""

    def variant(towers: dict[str, bool] | None = None, **ranking: object) -> RecommenderFactory:
        def make() -> Recommender:
            from dataclasses import replace

            from recsys.models.interest import InterestConfig, InterestModel
            from recsys.models.retrieval import default_tower_config
            from recsys.ranking.policy import RankingSettings

            config = InterestConfig(
                towers=replace(default_tower_config(), **(towers or {})),
                ranking=replace(RankingSettings(), **ranking),
            )
            return InterestModel(
                config if towers is None else replace(config, policies=LEARNED_POLICIES)
            )

        return make

    models = {LEARNED_MODEL: variant()}
    if ablations:
        changes: dict[str, RecommenderFactory] = {
            "full": variant(FULL_TOWERS, **FULL_RANKING),
            "full-no_gnn": variant(FULL_TOWERS | {"use_gnn": False}, **FULL_RANKING),
            "full-no_sequence": variant(FULL_TOWERS | {"use_sequence": False}, **FULL_RANKING),
            "full-no_next_category": variant(
                FULL_TOWERS, **FULL_RANKING | {"next_categories": False}
            ),
            "full-no_multi_interest": variant(FULL_TOWERS, **FULL_RANKING | {"ann_interests": 0}),
        }
        models.update({f"{LEARNED_MODEL}-{name}": changes[name] for name in ABLATIONS})
    return models


@dataclass(frozen=True)
class EvaluationConfig:
    """Which split to evaluate: the last day of data (or ``test_day``) in time zone ``tz``."""

    tz: str = "UTC"
    test_day: date | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass(frozen=True)
class EvaluationRun:
    run_id: str
    split: TimeSplit
    results: pl.DataFrame
    run_dir: Path
    plots: list[Path]
    # model -> the policy it served (learned models only; chosen on its validation window)
    policies: dict[str, str] = field(default_factory=dict)


def choose_split(events: pl.DataFrame, config: EvaluationConfig) -> TimeSplit:
    if config.test_day is not None:
        return day_split(config.test_day, tz=config.tz)
    return last_day_split(events, tz=config.tz)


def run_evaluation(
    paths: Paths,
    *,
    config: EvaluationConfig = EvaluationConfig(),
    models: Mapping[str, RecommenderFactory] | None = None,
    console: Console | None = None,
) -> EvaluationRun:
    """Fit and score every model on one split; write metrics.json, plots and a warehouse row.

    ``models`` are added to the baselines (a learned model under the same protocol).
    """
    console = console or Console()
    events = load_events(paths)
    split = choose_split(events, config)
    data = build_evaluation_set(events, split, config=config.features)
    factories = {**baseline_factories(config.features), **(models or {})}
    recs, policies = _recommend_all(factories, data, console)
    results = with_models(
        evaluate(
            recs,
            data.truth,
            data.groups,
            ks=KS,
            catalogue_size=data.catalogue_size,
            intervals=True,
        ),
        policies,
    )
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = paths.evaluation / run_id
    metrics_path = write_metrics_json(results, run_dir)
    plots = write_plots(results, run_dir)
    _record_run(paths, run_id, split, data, list(factories), results, metrics_path)
    console.print(metrics_table(results, columns=HEADLINE))
    console.print(f"wrote {metrics_path} and {len(plots)} plots")
    return EvaluationRun(run_id, split, results, run_dir, plots, policies)


def with_models(results: pl.DataFrame, policies: Mapping[str, str]) -> pl.DataFrame:
    """``results`` plus ``policy`` (the policy each learned model served, null for the others)
    and ``served`` (true for ``LEARNED_MODEL``, the configuration ``recsys train`` serves)."""
    return results.with_columns(
        pl.col("model")
        .replace_strict(dict(policies), default=None, return_dtype=pl.String)
        .alias("policy"),
        (pl.col("model") == LEARNED_MODEL).alias("served"),
    )


def _recommend_all(
    factories: Mapping[str, RecommenderFactory], data: EvaluationSet, console: Console
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every model's recommendation matrix and the policy of those that choose one."""
    recs: dict[str, np.ndarray] = {}
    policies: dict[str, str] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=len(factories))
        for name, factory in factories.items():
            progress.update(task, description=f"fitting {name}")
            started = time.perf_counter()
            model = factory().fit(data.train, data.split.train_end)
            recs[name] = model.recommend(data.user_ids, max(KS))
            served = ""
            if getattr(model, "policy_", None) is not None:
                policies[name] = str(model.policy_)
                served = f", serves the {model.policy_} policy" + _validation_note(model)
            console.log(f"{name}: {time.perf_counter() - started:.1f}s{served}")
            progress.advance(task)
    return recs, policies


def _validation_note(model: Any) -> str:
    """The validation figures behind a model's choice of policy, for the log (when kept)."""
    validation = getattr(model, "validation_", None) or {}
    parts = []
    for name, figures in validation.items():
        bound = figures.get("ndcg_gain_lower_bound")
        gain = "" if bound is None else f" (gain lower bound {bound:+.4f})"
        parts.append(f"{name} {figures['ndcg_at_20']:.4f}{gain}")
    return f"; validation NDCG@20: {', '.join(parts)}" if parts else ""


def _record_run(
    paths: Paths,
    run_id: str,
    split: TimeSplit,
    data: EvaluationSet,
    models: list[str],
    results: pl.DataFrame,
    metrics_path: Path,
) -> None:
    con = connect(paths)
    try:
        con.execute(EVALUATION_RUNS_DDL)
        con.execute(
            "insert into evaluation_runs values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run_id,
                datetime.now(UTC).replace(tzinfo=None),
                split.train_end,
                split.test_end,
                data.truth.n_users,
                models,
                json.dumps(metrics_rows(results)),
                str(metrics_path),
            ],
        )
    finally:
        con.close()
