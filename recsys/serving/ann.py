"""Numpy top-k search over item embeddings, and a query made of the user's recent items.

- ``ExactIndex``: scores every item (matrix-vector product + ``argpartition``); exact, fine up
  to ~100k items.
- ``IvfIndex``: an inverted-file index: items are grouped by their nearest of ``n_lists``
  k-means centroids, and a search scores only the items of the ``n_probe`` lists whose centroids
  score highest (approximate; ~n_probe / n_lists of the work).
- ``RecentItemsQuery``: the query embedding when no trained query tower exists: the decayed,
  behaviour-weighted mean of the embeddings of the user's recent items.

Scores are inner products. Both indexes return ``(item_ids int64 [k'], scores float32 [k'])``,
best first, k' = min(k, items searched).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recsys.config import FeatureConfig
from recsys.serving.profile import UserProfile
from recsys.serving.settings import ServingError


class TopKIndex(Protocol):
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def top_k_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores, largest first (ties: smaller position first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def _checked(item_ids: np.ndarray, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    item_ids = np.asarray(item_ids, dtype=np.int64)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(item_ids):
        raise ServingError(
            f"embeddings must be [n_items, d] with n_items = {len(item_ids)}, "
            f"got {embeddings.shape}"
        )
    return item_ids, embeddings


class ExactIndex:
    """Brute-force inner-product top-k. item_ids int64 [n], embeddings float32 [n, d]."""

    def __init__(self, item_ids: np.ndarray, embeddings: np.ndarray) -> None:
        self.item_ids, self.embeddings = _checked(item_ids, embeddings)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.embeddings @ np.asarray(query, dtype=np.float32)
        best = top_k_positions(scores, k)
        return self.item_ids[best], scores[best]


class IvfIndex:
    """Inverted-file approximate top-k (see the module docstring); build with ``IvfIndex.build``.

    ``centroids`` float32 [n_lists, d]; items are stored grouped by list: ``item_ids`` [n],
    ``embeddings`` [n, d], list j being rows ``offsets[j]:offsets[j + 1]``.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        offsets: np.ndarray,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        n_probe: int,
    ) -> None:
        self.centroids = centroids
        self.offsets = offsets
        self.item_ids = item_ids
        self.embeddings = embeddings
        self.n_probe = n_probe

    @classmethod
    def build(
        cls,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        *,
        n_lists: int,
        n_probe: int,
        iterations: int = 6,
        sample: int = 65_536,
        seed: int = 0,
    ) -> IvfIndex:
        """k-means (on a sample) for the centroids, then every item goes to its nearest one."""
        item_ids, embeddings = _checked(item_ids, embeddings)
        if not 1 <= n_probe <= n_lists <= len(item_ids):
            raise ServingError(
                f"need 1 <= n_probe <= n_lists <= n_items, got {n_probe}, {n_lists}, "
                f"{len(item_ids)}"
            )
        rng = np.random.default_rng(seed)
        train = embeddings[rng.choice(len(item_ids), min(sample, len(item_ids)), replace=False)]
        centroids = train[rng.choice(len(train), n_lists, replace=False)].copy()
        for _ in range(iterations):
            assigned = _nearest(train, centroids)
            for j in range(n_lists):
                members = train[assigned == j]
                if len(members):
                    centroids[j] = members.mean(axis=0)
        lists = _nearest(embeddings, centroids)
        order = np.argsort(lists, kind="stable")
        offsets = np.searchsorted(lists[order], np.arange(n_lists + 1))
        return cls(centroids, offsets, item_ids[order], embeddings[order], n_probe)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = np.asarray(query, dtype=np.float32)
        probed = top_k_positions(self.centroids @ query, self.n_probe)
        rows = np.concatenate([np.arange(self.offsets[j], self.offsets[j + 1]) for j in probed])
        scores = self.embeddings[rows] @ query
        best = top_k_positions(scores, k)
        return self.item_ids[rows[best]], scores[best]


def _nearest(points: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid (L2) of every point, in chunks to bound memory."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        # argmin |p - c|^2 = argmax (p.c - |c|^2 / 2)
        out[start : start + chunk] = np.argmax(block @ centroids.T - half_norms, axis=1)
    return out


@dataclass(frozen=True)
class RecentItemsQuery:
    """Query embedding = sum over recent events of w_behavior * 2^(-gap / short half-life) *
    e_item, L2-normalised; None when no recent item has an embedding.

    ``item_ids`` int64 [n] ascending (``np.unique``), ``embeddings`` float32 [n, d] aligned.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    config: FeatureConfig

    def __call__(self, profile: UserProfile) -> np.ndarray | None:
        sequence = profile.sequence
        if not sequence:
            return None
        items = np.fromiter((s[0] for s in sequence), dtype=np.int64, count=len(sequence))
        gaps = np.fromiter((s[3] for s in sequence), dtype=np.float64, count=len(sequence))
        weights = np.array([self.config.behavior_weights[s[2]] for s in sequence])
        weights *= np.exp2(-gaps / (self.config.short_half_life_hours * 3600.0))
        positions = np.minimum(np.searchsorted(self.item_ids, items), len(self.item_ids) - 1)
        known = self.item_ids[positions] == items
        if not known.any():
            return None
        query = weights[known].astype(np.float32) @ self.embeddings[positions[known]]
        norm = float(np.linalg.norm(query))
        return query / norm if norm > 0 else None
