"""Quality ceilings: how far can following interest migration go on a dataset, at best?

Issue 10's targets ask a model to beat simple baselines by a ratio (simulator: novel Recall@50
>= 1.5x ``category_interest``, shift-user Recall@20 >= 1.5x the best baseline). This script
measures what those ratios are for *oracles* that are told where each test user's interest goes,
on the split ``recsys evaluate`` uses (the last calendar day in ``--tz``, the project's own
``build_evaluation_set`` and ``metrics.evaluate``, every baseline of ``recsys evaluate`` fitted
in the same run):

- ``oracle_category``: ``category_interest`` (the baseline, same code and half-lives) with the
  user's decayed training interest replaced by the behaviour-weighted category shares of the
  user's **test-window** events: perfect foresight of where the interest goes, items ranked by
  their training popularity share in their category;
- ``oracle_category_unseen``: the same, without the items the user touched in training and without
  the popular fill (every slot goes to a novel item: the novel-item ceiling of category foresight);
- ``oracle_mix``: perfect category foresight for seen and unseen items together. Score(u, i) =
  test share of category(i) x (a x the user's decayed own share of i in that category + (1 - a) x
  i's popularity share), ``a`` picked on the test day itself from ``MIX`` (an optimistic bound);
- ``catalogue``: the share of test positives that are in the training catalogue at all (the
  Recall ceiling of any recommender of known items, at any k);
- ``new_category``: the share of test positives in a category the user never touched before T,
  and (beside a simulation's ``category_associations.parquet``) in a planted "next" category of
  one they touched: what a next-category source could bring at most.

On the simulator a novel view is a Zipf draw inside its category, independent of the user, so
category foresight with popularity is close to the best any model can do there; a model that does
not know the test day's categories cannot beat these oracles, only approach them. The oracles
peek at the test window: they are bounds, never models.

Beside them, one model that tries to earn that foresight: ``learned_category``, a LightGBM
classifier of "the user touches category c on the next day" over (user, category) features as of
midnight (decayed interest at 24 h and 168 h, shares, rank, recency, counts, the category's
popularity and trend), trained on the ``TRAIN_DAYS`` days before T, its probabilities in place
of ``category_interest``'s interest.

Usage:
    python benchmarks/ceilings.py --simulator [--users 1200 --items 8000 --days 14 --seed 3]
    python benchmarks/ceilings.py --events ../shared/data/taobao_user_behavior_sample.csv \
        --format taobao --tz Asia/Shanghai [--test-day 2017-12-02]
Writes WORKDIR/ceilings.json and PNG plots (each metric by model, and by user group) beside it
(default workdir: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
from rich.table import Table
from served_quality import Source, console, load_all_events, simulated_source

from recsys.config import FeatureConfig
from recsys.evaluation.baselines import CategoryInterest, category_interest, user_item_scores
from recsys.evaluation.metrics import BASELINES, evaluate
from recsys.evaluation.plots import write_plots
from recsys.evaluation.run import KS, baseline_factories
from recsys.evaluation.split import EvaluationSet, build_evaluation_set, day_split, last_day_split
from recsys.ranking.frames import decayed_weight, top_k_matrix
from recsys.warehouse.simulate import ASSOCIATIONS_FILE

MIX = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
PLOTS = (("ndcg", 20), ("recall", 20), ("recall", 50))  # by model (all users) and by user group
TRAIN_DAYS = 3  # labelled days before T that train ``learned_category``
CATEGORY_FEATURES = (
    "interest_24h",
    "interest_168h",
    "share_24h",
    "share_168h",
    "rank_24h",
    "hours_since",
    "events",
    "items",
    "buys",
    "carts",
    "categories",
    "popularity_24h",
    "popularity_336h",
    "trend",
)
COLUMNS = (
    ("all", "ndcg", 20),
    ("all", "recall", 50),
    ("shift", "recall", 20),
    ("shift", "recall", 50),
    ("novel", "recall", 50),
)
# Issue 10's simulator targets: (group, metric, k, reference model or None = best baseline, ratio)
TARGETS = (("shift", "recall", 20, None, 1.5), ("novel", "recall", 50, "category_interest", 1.5))


def test_interest(data: EvaluationSet, events: pl.DataFrame, config: FeatureConfig) -> pl.DataFrame:
    """(user_id, category_id, interest, interest_share) of the test users' test-window events
    (behaviour-weighted counts, no decay): the oracle's knowledge of where interest went."""
    test = data.split.test(events).filter(pl.col("user_id").is_in(data.user_ids.tolist()))
    return category_interest(test, data.split.test_end, config, None)


def oracle_category(
    data: EvaluationSet, interest: pl.DataFrame, config: FeatureConfig, *, unseen: bool
) -> np.ndarray:
    """``category_interest`` with the test window's category shares as the user's interest."""
    k = max(KS)
    model = CategoryInterest(config).fit(data.train, data.split.train_end)
    model.interest_ = interest
    candidates = model.candidates(data.user_ids, k * 4 if unseen else k)
    if unseen:
        seen = data.train.select("user_id", "item_id").unique()
        candidates = candidates.join(seen, on=["user_id", "item_id"], how="anti")
    # no popular fill for ``unseen``: it would bring seen items back
    fill = None if unseen else model.popular_
    return top_k_matrix(candidates, data.user_ids, k, fill_items=fill)


def oracle_mix(
    data: EvaluationSet, interest: pl.DataFrame, config: FeatureConfig
) -> dict[float, np.ndarray]:
    """{a: int64 [n_users, max(KS)]}: category foresight over the user's own and popular items."""
    k = max(KS)
    model = CategoryInterest(config).fit(data.train, data.split.train_end)
    own_scores = user_item_scores(
        data.train, data.split.train_end, config, model.interest_half_life_hours
    )
    model.interest_ = interest
    popular = model.candidates(data.user_ids, k).with_columns(pl.col("share").alias("pop"))
    own = (
        own_scores.filter(pl.col("user_id").is_in(data.user_ids.tolist()))
        .join(
            model.items_.select("item_id", "category_id", pl.col("share").alias("pop")),
            on="item_id",
        )
        .with_columns(own=pl.col("score") / pl.col("score").sum().over("user_id", "category_id"))
        .join(interest.select("user_id", "category_id", "interest"), on=["user_id", "category_id"])
    )
    pool = (
        pl.concat(
            [
                popular.select("user_id", "item_id", "interest", "pop", own=pl.lit(0.0)),
                own.select("user_id", "item_id", "interest", "pop", "own"),
            ]
        )
        .group_by("user_id", "item_id")
        .agg(pl.col("interest").max(), pl.col("pop").max(), pl.col("own").max())
    )
    return {
        a: top_k_matrix(
            pool.with_columns(
                score=pl.col("interest") * (a * pl.col("own") + (1 - a) * pl.col("pop"))
            ),
            data.user_ids,
            k,
            fill_items=model.popular_,
        )
        for a in MIX
    }


def category_features(events: pl.DataFrame, as_of: datetime, config: FeatureConfig) -> pl.DataFrame:
    """(user_id, category_id, *CATEGORY_FEATURES) of every category a user touched before
    ``as_of``: what a next-day category model knows at midnight."""
    before = events.filter(pl.col("event_time") < as_of)
    hours = (pl.lit(as_of) - pl.col("event_time")).dt.total_seconds() / 3600.0
    per_pair = before.group_by("user_id", "category_id").agg(
        decayed_weight(config, as_of, 24.0).sum().alias("interest_24h"),
        decayed_weight(config, as_of, 168.0).sum().alias("interest_168h"),
        hours.min().alias("hours_since"),
        pl.len().alias("events"),
        pl.col("item_id").n_unique().alias("items"),
        (pl.col("behavior") == "buy").sum().alias("buys"),
        (pl.col("behavior") == "cart").sum().alias("carts"),
    )
    per_category = before.group_by("category_id").agg(
        decayed_weight(config, as_of, 24.0).sum().alias("popularity_24h"),
        decayed_weight(config, as_of, 336.0).sum().alias("popularity_336h"),
    )
    return (
        per_pair.with_columns(
            share_24h=pl.col("interest_24h") / pl.col("interest_24h").sum().over("user_id"),
            share_168h=pl.col("interest_168h") / pl.col("interest_168h").sum().over("user_id"),
            rank_24h=pl.col("interest_24h").rank("ordinal", descending=True).over("user_id"),
            categories=pl.len().over("user_id"),
        )
        .join(per_category, on="category_id", how="left")
        .with_columns(trend=pl.col("popularity_24h") / pl.col("popularity_336h"))
    )


def learned_category(
    data: EvaluationSet, events: pl.DataFrame, tz: str, config: FeatureConfig
) -> np.ndarray:
    """``category_interest`` with the user's interest replaced by P(user touches the category on
    the test day), from a LightGBM classifier trained on the ``TRAIN_DAYS`` days before T (labels:
    the day's touched categories; features as of that day's midnight). A model, not an oracle:
    it reads nothing at or after T."""
    import lightgbm as lgb

    first_test_day = data.split.train_end.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).date()
    frames = []
    for back in range(1, TRAIN_DAYS + 1):
        day = day_split(first_test_day - timedelta(days=back), tz=tz)
        labels = (
            day.test(events).select("user_id", "category_id").unique().with_columns(y=pl.lit(1.0))
        )
        frames.append(
            category_features(events, day.train_end, config)
            .join(labels.select("user_id").unique(), on="user_id", how="semi")
            .join(labels, on=["user_id", "category_id"], how="left")
            .with_columns(pl.col("y").fill_null(0.0))
        )
    train = pl.concat(frames)
    booster = lgb.train(
        {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "verbose": -1}
        | {"min_data_in_leaf": 50, "num_threads": 1, "seed": 0},
        lgb.Dataset(train.select(CATEGORY_FEATURES).to_numpy(), train["y"].to_numpy()),
        num_boost_round=200,
    )
    today = category_features(events, data.split.train_end, config).filter(
        pl.col("user_id").is_in(data.user_ids.tolist())
    )
    model = CategoryInterest(config).fit(data.train, data.split.train_end)
    model.interest_ = today.select(
        "user_id",
        "category_id",
        interest=booster.predict(today.select(CATEGORY_FEATURES).to_numpy()),
    )
    return model.recommend(data.user_ids, max(KS))


def catalogue_share(data: EvaluationSet) -> dict[str, float]:
    """{group: share of the group's (user, item) positives whose item appears in training}."""
    known = data.train.select("item_id").unique()
    shares = {}
    for group, truth in data.groups.items():
        pairs = truth.to_frame()
        shares[group] = pairs.join(known, on="item_id").height / max(pairs.height, 1)
    return shares


def new_category_share(
    data: EvaluationSet, events: pl.DataFrame, associations: pl.DataFrame | None
) -> dict[str, dict[str, float]]:
    """{group: {"new": share of the group's positives in a category the user never touched
    before T, "associated": share in a category new to the user and a planted "next" category of
    one the user touched (only with ``associations``)}}: the most a next-category source can
    bring, whatever it predicts."""
    items = events.select("item_id", "category_id").unique("item_id", keep="last")
    touched = data.train.select("user_id", "category_id").unique()
    shares: dict[str, dict[str, float]] = {}
    for group, truth in data.groups.items():
        pairs = truth.to_frame().join(items, on="item_id")
        new = pairs.join(touched, on=["user_id", "category_id"], how="anti")
        shares[group] = {"new": new.height / max(pairs.height, 1)}
        if associations is not None:
            nexts = touched.join(
                associations.select(
                    category_id="src_category_id", next_category_id="dst_category_id"
                ),
                on="category_id",
            ).select("user_id", category_id="next_category_id")
            associated = new.join(nexts.unique(), on=["user_id", "category_id"], how="semi")
            shares[group]["associated"] = associated.height / max(pairs.height, 1)
    return shares


def run(
    events: pl.DataFrame,
    tz: str,
    associations: pl.DataFrame | None = None,
    test_day: date | None = None,
) -> dict:
    config = FeatureConfig()
    split = last_day_split(events, tz=tz) if test_day is None else day_split(test_day, tz=tz)
    data = build_evaluation_set(events, split, config=config)
    recs: dict[str, np.ndarray] = {}
    for name, factory in baseline_factories(config).items():
        started = time.perf_counter()
        recs[name] = (
            factory().fit(data.train, data.split.train_end).recommend(data.user_ids, max(KS))
        )
        console.log(f"{name}: {time.perf_counter() - started:.1f}s")
    recs["learned_category"] = learned_category(data, events, tz, config)
    interest = test_interest(data, events, config)
    recs["oracle_category"] = oracle_category(data, interest, config, unseen=False)
    recs["oracle_category_unseen"] = oracle_category(data, interest, config, unseen=True)
    mixes = oracle_mix(data, interest, config)
    shift_recall = evaluate(
        {str(a): m for a, m in mixes.items()}, data.truth, data.groups, ks=KS
    ).filter(group="shift", metric="recall", k=20)
    best_a = float(shift_recall.sort("value", descending=True)["model"][0])
    recs["oracle_mix"] = mixes[best_a]
    results = evaluate(recs, data.truth, data.groups, ks=KS, intervals=True, baselines=BASELINES)
    return {
        "train_end": str(data.split.train_end),
        "test_end": str(data.split.test_end),
        "users": {group: truth.n_users for group, truth in data.groups.items()},
        "oracle_mix_a": best_a,
        "catalogue": catalogue_share(data),
        "new_category": new_category_share(data, events, associations),
        "results": results.to_dicts(),
    }


def value(rows: list[dict], model: str, group: str, metric: str, k: int) -> float:
    return next(
        r["value"]
        for r in rows
        if (r["model"], r["group"], r["metric"], r["k"]) == (model, group, metric, k)
    )


def best_baseline(rows: list[dict], group: str, metric: str, k: int) -> tuple[str, float]:
    return max(((m, value(rows, m, group, metric, k)) for m in BASELINES), key=lambda t: t[1])


def report(summary: dict) -> None:
    rows = summary["results"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    window = f"{summary['train_end']} .. {summary['test_end']}"
    table = Table(title=f"test window {window}, users {summary['users']}")
    table.add_column("model")
    for group, metric, k in COLUMNS:
        table.add_column(f"{group} {metric}@{k}", justify="right")
    for model in models:
        table.add_row(model, *(f"{value(rows, model, *c):.4f}" for c in COLUMNS))
    console.print(table)
    console.print(
        "positives whose item is in the training catalogue: "
        + ", ".join(f"{g} {s:.3f}" for g, s in summary["catalogue"].items())
        + f"; oracle_mix a = {summary['oracle_mix_a']:g}"
    )
    console.print(
        "positives in a category new to the user (of which a planted next category of one they "
        "touched): "
        + ", ".join(
            f"{g} {s['new']:.3f}" + (f" ({s['associated']:.3f})" if "associated" in s else "")
            for g, s in summary["new_category"].items()
        )
    )
    for group, metric, k, reference, ratio in TARGETS:
        name, base = (
            best_baseline(rows, group, metric, k)
            if reference is None
            else (reference, value(rows, reference, group, metric, k))
        )
        for oracle in ("oracle_category", "oracle_category_unseen", "oracle_mix"):
            got = value(rows, oracle, group, metric, k)
            console.print(
                f"{group} {metric}@{k}: {oracle} {got:.4f} = {got / base:.2f}x {name} "
                f"{base:.4f} (target {ratio}x = {ratio * base:.4f})"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", type=Path, help="an event file, as `recsys ingest` reads it")
    source.add_argument("--simulator", action="store_true", help="a fresh `recsys simulate` log")
    parser.add_argument("--format", default="parquet")
    parser.add_argument("--tz", default="UTC")
    parser.add_argument("--users", type=int, default=1200)
    parser.add_argument("--items", type=int, default=8000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--test-day",
        type=date.fromisoformat,
        default=None,
        help="YYYY-MM-DD in --tz (default: the last day); e.g. a validation day",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ceilings-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    src = (
        simulated_source(args, workdir, logs)
        if args.simulator
        else Source(args.events.resolve(), args.format, args.tz)
    )
    events = load_all_events(src, workdir / "home", logs)
    graph = src.path.parent / ASSOCIATIONS_FILE
    summary = run(events, src.tz, pl.read_parquet(graph) if graph.exists() else None, args.test_day)
    (workdir / "ceilings.json").write_text(json.dumps(summary, indent=1, default=str))
    report(summary)
    plots = write_plots(pl.DataFrame(summary["results"]), workdir, plots=PLOTS)
    console.print(f"wrote {workdir / 'ceilings.json'} and {len(plots)} plots beside it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
