"""Ground truth and the per-user top-K metrics (binary relevance) that both model selection
(``recsys.ranking.select``) and ``recsys evaluate`` score with.

Recommendations are a [n_users, K] matrix of item ids (-1 = no item); a row must not repeat an
item (padding aside), so a hit is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.ranking.frames import PAD, RankingError


@dataclass(frozen=True)
class GroundTruth:
    """Per-user sets of relevant items in CSR layout.

    ``user_ids`` int64 [n_users] sorted and unique; ``indptr`` int64 [n_users + 1];
    ``item_ids`` int64 [nnz], the items of user r at ``item_ids[indptr[r]:indptr[r + 1]]``,
    sorted and unique. Every user has at least one item.
    """

    user_ids: np.ndarray
    indptr: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        if len(self.indptr) != len(self.user_ids) + 1 or self.indptr[-1] != len(self.item_ids):
            raise RankingError("GroundTruth indptr does not match user_ids and item_ids")
        if np.any(np.diff(self.indptr) <= 0):
            raise RankingError("GroundTruth has a user without relevant items")
        if np.any(np.diff(self.user_ids) <= 0):
            raise RankingError("GroundTruth user_ids must be sorted and unique")

    @classmethod
    def from_frame(cls, pairs: pl.DataFrame) -> GroundTruth:
        """From a frame with ``user_id`` and ``item_id`` columns (duplicates collapse)."""
        pairs = pairs.select("user_id", "item_id").unique().sort("user_id", "item_id")
        users = pairs["user_id"].to_numpy().astype(np.int64)
        user_ids, starts = np.unique(users, return_index=True)
        indptr = np.append(starts, len(users)).astype(np.int64)
        return cls(user_ids, indptr, pairs["item_id"].to_numpy().astype(np.int64))

    def to_frame(self) -> pl.DataFrame:
        """Long form: one row per (user_id, item_id)."""
        return pl.DataFrame(
            {"user_id": np.repeat(self.user_ids, self.sizes), "item_id": self.item_ids}
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def sizes(self) -> np.ndarray:
        """Number of relevant items per user, int64 [n_users]."""
        return np.diff(self.indptr)

    def filter_pairs(self, keep: pl.DataFrame) -> GroundTruth:
        """Only the (user_id, item_id) pairs present in ``keep``; users left empty drop out."""
        kept = self.to_frame().join(keep.select("user_id", "item_id"), on=["user_id", "item_id"])
        return GroundTruth.from_frame(kept)

    def select_users(self, user_ids: np.ndarray) -> GroundTruth:
        """Only the given users (each must be present)."""
        rows = np.searchsorted(self.user_ids, user_ids)
        if np.any(rows >= self.n_users) or np.any(self.user_ids[rows] != user_ids):
            raise RankingError("select_users got users that are not in the ground truth")
        return GroundTruth.from_frame(
            self.to_frame().filter(pl.col("user_id").is_in(np.asarray(user_ids).tolist()))
        )


def check_recs(recs: np.ndarray, n_users: int) -> np.ndarray:
    """Validate a recommendation matrix: int [n_users, K], no repeated item within a row."""
    recs = np.asarray(recs)
    if recs.ndim != 2 or recs.shape[0] != n_users:
        raise RankingError(f"recs must have shape [{n_users}, K], got {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise RankingError(f"recs must hold integer item ids, got {recs.dtype}")
    ordered = np.sort(recs, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)):
        raise RankingError("a recommendation row repeats an item")
    return recs


def hits(recs: np.ndarray, truth: GroundTruth) -> np.ndarray:
    """bool [n_users, K]: whether ``recs[r, j]`` is in the truth set of ``truth.user_ids[r]``."""
    recs = check_recs(recs, truth.n_users)
    rows = np.repeat(np.arange(truth.n_users, dtype=np.int64), truth.sizes)
    # Dense codes keep the (row, item) keys inside int64 whatever the raw item ids are.
    vocab, codes = np.unique(np.concatenate([truth.item_ids, recs.ravel()]), return_inverse=True)
    n = len(vocab)
    truth_keys = rows * n + codes[: len(truth.item_ids)]
    rec_rows = np.arange(truth.n_users, dtype=np.int64)[:, None]
    rec_keys = rec_rows * n + codes[len(truth.item_ids) :].reshape(recs.shape)
    return np.isin(rec_keys, truth_keys) & (recs != PAD)


def recall_at_k(hit: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """float [n_users]: hits in the top k / number of relevant items."""
    return hit[:, :k].sum(axis=1) / sizes


def hit_rate_at_k(hit: np.ndarray, k: int) -> np.ndarray:
    """float [n_users]: 1 when the top k holds at least one relevant item."""
    return hit[:, :k].any(axis=1).astype(np.float64)


def ndcg_at_k(hit: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """float [n_users]: DCG of the top k over the ideal DCG of min(|truth|, k) hits."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit[:, :k] * discounts[: hit[:, :k].shape[1]]).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(sizes, k)]
    return dcg / ideal
