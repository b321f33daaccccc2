"""Top-K ranking metrics over a [n_users, K] matrix of recommended item ids (-1 = no item).

Relevance is binary: an item is relevant when it is in the user's ground-truth set. A row must not
repeat an item (padding aside), so a hit is counted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from recsys.evaluation.bootstrap import INTERVAL_SCHEMA, RESAMPLES, SEED, interval_frame
from recsys.evaluation.errors import EvaluationError
from recsys.ranking.frames import PAD
from recsys.ranking.metrics import (
    GroundTruth,
    check_recs,
    hit_rate_at_k,
    hits,
    ndcg_at_k,
    recall_at_k,
)

METRICS = ("recall", "ndcg", "hit_rate", "coverage")
# The non-learned models of ``recsys evaluate`` (run.baseline_factories): deltas and their
# intervals are taken against the best of them on each group, metric and k.
BASELINES = (
    "popularity",
    "recent_popularity",
    "repeat",
    "category_interest",
    "item_knn",
    "als",
    "blend",
)
KEY_SCHEMA = {"model": pl.String, "group": pl.String, "metric": pl.String, "k": pl.Int64}
# The columns every results frame has (``check_results``).
RESULT_SCHEMA = {**KEY_SCHEMA, "value": pl.Float64, "n_users": pl.Int64}
# ``evaluate``'s full result: RESULT_SCHEMA + the bootstrap columns (null for coverage).
EVALUATE_SCHEMA = {**RESULT_SCHEMA, **INTERVAL_SCHEMA}


def coverage_at_k(recs: np.ndarray, k: int, catalogue_size: int) -> float:
    """Distinct items recommended in the top k across all rows / catalogue size."""
    if catalogue_size <= 0:
        raise EvaluationError("catalogue_size must be positive")
    top = recs[:, :k]
    return len(np.unique(top[top != PAD])) / catalogue_size


def per_user_values(
    recs: Mapping[str, np.ndarray],
    truth: GroundTruth,
    groups: Mapping[str, GroundTruth] | None = None,
    ks: Sequence[int] = (20, 50),
) -> dict[tuple[str, str, str, int], np.ndarray]:
    """{(model, group, metric, k): float [n_users of the group]} for the per-user metrics
    (recall, ndcg, hit_rate), users in each group's ``user_ids`` order (the same for every
    model). ``evaluate``'s values are their means. Empty groups are left out."""
    groups = {"all": truth} if groups is None else groups
    out: dict[tuple[str, str, str, int], np.ndarray] = {}
    for model, matrix in recs.items():
        matrix = _checked(model, matrix, truth, ks)
        for group, group_truth in groups.items():
            if group_truth.n_users == 0:
                continue
            sub = matrix[_positions(group, truth, group_truth)]
            for (metric, k), values in _user_metrics(sub, group_truth, ks).items():
                out[(model, group, metric, k)] = values
    return out


def evaluate(
    recs: Mapping[str, np.ndarray],
    truth: GroundTruth,
    groups: Mapping[str, GroundTruth] | None = None,
    ks: Sequence[int] = (20, 50),
    *,
    catalogue_size: int | None = None,
    intervals: bool = False,
    baselines: Sequence[str] = BASELINES,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> pl.DataFrame:
    """Score every model on every user group, long format.

    ``recs`` maps a model name to an int matrix [truth.n_users, K >= max(ks)] whose rows follow
    ``truth.user_ids``. ``groups`` maps a group name to a ground truth over a subset of those users
    (defaults to {"all": truth}). Coverage is reported when ``catalogue_size`` is given.
    Returns columns model, group, metric, k, value (mean over the group's users), n_users and,
    with ``intervals``, the paired bootstrap columns of ``bootstrap.interval_frame`` (90%
    intervals over users, ``resamples`` resamples with ``seed``; deltas against the best of
    ``baselines``; null on coverage rows), as ``recsys evaluate`` writes them.
    """
    groups = {"all": truth} if groups is None else groups
    per_user = per_user_values(recs, truth, groups, ks)
    rows: list[dict[str, object]] = []
    for model, matrix in recs.items():
        matrix = _checked(model, matrix, truth, ks)
        for group, group_truth in groups.items():
            n = group_truth.n_users
            if n == 0:
                continue
            for k in ks:
                for metric in METRICS:
                    if metric == "coverage":
                        if catalogue_size is None:
                            continue
                        sub = matrix[_positions(group, truth, group_truth)]
                        value = coverage_at_k(sub, k, catalogue_size)
                    else:
                        value = per_user[(model, group, metric, k)].mean()
                    rows.append(
                        {
                            "model": model,
                            "group": group,
                            "metric": metric,
                            "k": k,
                            "value": float(value),
                            "n_users": n,
                        }
                    )
    results = pl.DataFrame(rows, schema=RESULT_SCHEMA)
    if not intervals:
        return results
    if per_user:
        ci = interval_frame(per_user, baselines=baselines, resamples=resamples, seed=seed)
    else:
        ci = pl.DataFrame(schema={**KEY_SCHEMA, **INTERVAL_SCHEMA})
    return results.join(ci, on=list(KEY_SCHEMA), how="left", maintain_order="left")


def _checked(model: str, matrix: np.ndarray, truth: GroundTruth, ks: Sequence[int]) -> np.ndarray:
    matrix = check_recs(matrix, truth.n_users)
    if matrix.shape[1] < max(ks):
        raise EvaluationError(f"{model}: {matrix.shape[1]} columns < k={max(ks)}")
    return matrix


def _positions(group: str, truth: GroundTruth, group_truth: GroundTruth) -> np.ndarray:
    """Rows of ``truth``'s users that ``group_truth`` holds (every one must be there)."""
    positions = np.searchsorted(truth.user_ids, group_truth.user_ids)
    if np.any(positions >= truth.n_users) or np.any(
        truth.user_ids[np.minimum(positions, truth.n_users - 1)] != group_truth.user_ids
    ):
        raise EvaluationError(f"group {group!r} has users outside the evaluated users")
    return positions


def _user_metrics(
    sub: np.ndarray, group_truth: GroundTruth, ks: Sequence[int]
) -> dict[tuple[str, int], np.ndarray]:
    hit = hits(sub, group_truth)
    sizes = group_truth.sizes
    out: dict[tuple[str, int], np.ndarray] = {}
    for k in ks:
        out[("recall", k)] = recall_at_k(hit, sizes, k)
        out[("ndcg", k)] = ndcg_at_k(hit, sizes, k)
        out[("hit_rate", k)] = hit_rate_at_k(hit, k)
    return out
