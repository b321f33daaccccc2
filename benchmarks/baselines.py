"""Reference figures of the non-neural baselines on the Taobao sample (last-day split).

Settings are chosen on the validation split (the day before the test day); the test day is scored
once with the chosen settings. Prints fit/recommend timings and a metrics table, and writes
metrics.json and plots under --out (default: a temporary folder).

    .venv/bin/python benchmarks/baselines.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

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
from recsys.evaluation.report import metrics_table, write_metrics_json
from recsys.evaluation.split import EvaluationSet, build_evaluation_set, last_day_split
from recsys.home import resolve_home
from recsys.warehouse.connect import load_events
from recsys.warehouse.ingest import ingest_file

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_user_behavior_sample.csv"
K = 50
console = Console(width=220)


def load_taobao(path: Path, home: Path) -> pl.DataFrame:
    """Canonical events through the project's own ingest (the truncated tail is quarantined)."""
    paths = resolve_home(home)
    console.print(ingest_file(paths, path, fmt="taobao").summary())
    return load_events(paths)


def run(name: str, model: Recommender, data: EvaluationSet) -> tuple[np.ndarray, float, float]:
    start = time.perf_counter()
    model.fit(data.train, data.split.train_end)
    fitted = time.perf_counter()
    recs = model.recommend(data.user_ids, K)
    done = time.perf_counter()
    console.print(f"  {name:<28} fit {fitted - start:6.2f}s  recommend {done - fitted:6.2f}s")
    return recs, fitted - start, done - fitted


def choose(
    family: str, candidates: dict[str, Callable[[], Recommender]], valid: EvaluationSet
) -> str:
    """The setting with the best validation NDCG@20 (all users)."""
    recs = {name: run(name, make(), valid)[0] for name, make in candidates.items()}
    scores = evaluate(recs, valid.truth, {"all": valid.truth}, ks=(20,)).filter(
        pl.col("metric") == "ndcg"
    )
    best = scores.sort("value", descending=True)["model"][0]
    console.print(
        f"[bold]{family}[/]: validation NDCG@20 {dict(scores.select('model', 'value').rows())}"
    )
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="recsys-baselines-"))
    config = FeatureConfig()
    t0 = time.perf_counter()
    events = load_taobao(DATA, out / "home")
    split = last_day_split(events, tz="Asia/Shanghai")
    test = build_evaluation_set(events, split, config=config)
    valid = build_evaluation_set(events, split.validation(), config=config)
    console.print(
        f"load+split {time.perf_counter() - t0:.2f}s; "
        f"test [{split.train_end}, {split.test_end}) UTC; "
        f"users per group { ({g: t.n_users for g, t in test.groups.items()}) }; "
        f"validation users {valid.truth.n_users}"
    )

    families: dict[str, dict[str, Callable[[], Recommender]]] = {
        "popularity": {"popularity": lambda: Popularity(config)},
        "recent_popularity": {
            "recent_popularity": lambda: Popularity(config, config.short_half_life_hours)
        },
        "repeat": {
            f"repeat(h={h})": (lambda h=h: Repeat(config, half_life_hours=h))
            for h in (6.0, 24.0, 336.0)
        },
        "category_interest": {
            f"category(h={h})": (lambda h=h: CategoryInterest(config, interest_half_life_hours=h))
            for h in (6.0, 24.0, 336.0)
        },
        "item_knn": {
            f"item_knn(recent={n})": (lambda n=n: ItemKNN(config, n_recent=n)) for n in (5, 20, 50)
        },
        "als": {
            f"als({w},reg={r})": (lambda w=w, r=r: ALS(config, weighting=w, regularization=r))
            for w in ("bm25", "confidence")
            for r in (0.05, 1.0)
        },
        "blend": {"blend": lambda: CandidateBlend(config=config)},
    }
    chosen = {family: choose(family, c, valid) for family, c in families.items()}
    console.print(f"chosen on validation: {chosen}")

    console.print("[bold]test day[/]")
    recs = {}
    for family, name in chosen.items():
        recs[family] = run(name, families[family][name](), test)[0]
    metrics = evaluate(
        recs, test.truth, test.groups, ks=(20, 50), catalogue_size=test.catalogue_size
    )
    console.print(metrics_table(metrics, metrics=("ndcg", "recall")))
    path = write_metrics_json(metrics, out)
    plots = write_plots(metrics, out)
    console.print(
        f"wrote {path} and {len(plots)} plots under {out}; total {time.perf_counter() - t0:.1f}s"
    )


if __name__ == "__main__":
    main()
