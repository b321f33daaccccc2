"""Top-K ranking metrics over a [n_users, K] matrix of recommended item ids (-1 = no item).

Relevance is binary: an item is relevant when it is in the user's ground-truth set. A row must not
repeat an item (padding aside), so a hit is counted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

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
RESULT_SCHEMA = {
    "model": pl.String,
    "group": pl.String,
    "metric": pl.String,
    "k": pl.Int64,
    "value": pl.Float64,
    "n_users": pl.Int64,
}


def coverage_at_k(recs: np.ndarray, k: int, catalogue_size: int) -> float:
    """Distinct items recommended in the top k across all rows / catalogue size."""
    if catalogue_size <= 0:
        raise EvaluationError("catalogue_size must be positive")
    top = recs[:, :k]
    return len(np.unique(top[top != PAD])) / catalogue_size


def evaluate(
    recs: Mapping[str, np.ndarray],
    truth: GroundTruth,
    groups: Mapping[str, GroundTruth] | None = None,
    ks: Sequence[int] = (20, 50),
    *,
    catalogue_size: int | None = None,
) -> pl.DataFrame:
    """Score every model on every user group, long format.

    ``recs`` maps a model name to an int matrix [truth.n_users, K >= max(ks)] whose rows follow
    ``truth.user_ids``. ``groups`` maps a group name to a ground truth over a subset of those users
    (defaults to {"all": truth}). Coverage is reported when ``catalogue_size`` is given.
    Returns columns model, group, metric, k, value (mean over the group's users), n_users.
    """
    groups = {"all": truth} if groups is None else groups
    rows: list[dict[str, object]] = []
    for model, matrix in recs.items():
        matrix = check_recs(matrix, truth.n_users)
        if matrix.shape[1] < max(ks):
            raise EvaluationError(f"{model}: {matrix.shape[1]} columns < k={max(ks)}")
        for group, group_truth in groups.items():
            rows.extend(_group_rows(model, group, matrix, truth, group_truth, ks, catalogue_size))
    return pl.DataFrame(rows, schema=RESULT_SCHEMA)


def _group_rows(
    model: str,
    group: str,
    matrix: np.ndarray,
    truth: GroundTruth,
    group_truth: GroundTruth,
    ks: Sequence[int],
    catalogue_size: int | None,
) -> list[dict[str, object]]:
    n = group_truth.n_users
    if n == 0:
        return []
    positions = np.searchsorted(truth.user_ids, group_truth.user_ids)
    if np.any(positions >= truth.n_users) or np.any(
        truth.user_ids[positions] != group_truth.user_ids
    ):
        raise EvaluationError(f"group {group!r} has users outside the evaluated users")
    sub = matrix[positions]
    hit = hits(sub, group_truth)
    sizes = group_truth.sizes
    out = []
    for k in ks:
        values = {
            "recall": recall_at_k(hit, sizes, k).mean(),
            "ndcg": ndcg_at_k(hit, sizes, k).mean(),
            "hit_rate": hit_rate_at_k(hit, k).mean(),
        }
        if catalogue_size is not None:
            values["coverage"] = coverage_at_k(sub, k, catalogue_size)
        out.extend(
            {"model": model, "group": group, "metric": m, "k": k, "value": float(v), "n_users": n}
            for m, v in values.items()
        )
    return out
