"""PNG charts of evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.report import check_results

DEFAULT_PLOTS: tuple[tuple[str, int], ...] = (("ndcg", 20), ("recall", 50))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _select(results: pl.DataFrame, metric: str, k: int) -> pl.DataFrame:
    check_results(results)
    chosen = results.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    if chosen.is_empty():
        raise EvaluationError(f"no {metric}@{k} values to plot")
    return chosen


def plot_metric_by_model(
    results: pl.DataFrame, path: Path, *, metric: str, k: int, group: str = "all"
) -> Path:
    """Horizontal bars: ``metric@k`` of each model on one user group, with the 90% bootstrap
    interval as an error bar where the results have one (``ci_low``/``ci_high``)."""
    chosen = _select(results, metric, k).filter(pl.col("group") == group)
    if chosen.is_empty():
        raise EvaluationError(f"no {metric}@{k} values for group {group!r}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * chosen.height + 1.5))
    values = chosen["value"].to_numpy()
    xerr = None
    if {"ci_low", "ci_high"} <= set(chosen.columns):
        low = chosen["ci_low"].fill_null(float("nan")).to_numpy().astype(float)
        high = chosen["ci_high"].fill_null(float("nan")).to_numpy().astype(float)
        if not np.isnan(low).all():
            spread = np.stack([values - low, high - values])
            xerr = np.clip(np.nan_to_num(spread), 0.0, None)
    ax.barh(chosen["model"].to_list(), values, color="tab:blue", xerr=xerr, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}@{k}")
    ax.set_title(f"{metric}@{k} by model ({group}, n={chosen['n_users'][0]})")
    return _save(fig, plt, path)


def plot_metric_by_group(results: pl.DataFrame, path: Path, *, metric: str, k: int) -> Path:
    """Grouped bars: ``metric@k`` per user group (x) for every model (one bar colour each)."""
    chosen = _select(results, metric, k)
    groups = chosen["group"].unique(maintain_order=True).to_list()
    models = chosen["model"].unique(maintain_order=True).to_list()
    values = {(m, g): v for m, g, v in chosen.select("model", "group", "value").rows()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(models)) / 3), 4))
    width = 0.8 / len(models)
    x = np.arange(len(groups))
    for i, model in enumerate(models):
        heights = [values.get((model, g), 0.0) for g in groups]
        ax.bar(x + i * width - 0.4 + width / 2, heights, width, label=model)
    ax.set_xticks(x, groups)
    ax.set_ylabel(f"{metric}@{k}")
    ax.set_title(f"{metric}@{k} by user group")
    ax.legend(fontsize="small", ncols=2)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(
    results: pl.DataFrame, run_dir: Path, *, plots: Sequence[tuple[str, int]] = DEFAULT_PLOTS
) -> list[Path]:
    """For each (metric, k): ``<metric>@<k>_by_model.png`` (group "all") and ``_by_group.png``."""
    written = []
    for metric, k in plots:
        written.append(
            plot_metric_by_model(
                results, run_dir / f"{metric}@{k}_by_model.png", metric=metric, k=k
            )
        )
        written.append(
            plot_metric_by_group(
                results, run_dir / f"{metric}@{k}_by_group.png", metric=metric, k=k
            )
        )
    return written
