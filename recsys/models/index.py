"""Top-k retrieval over candidate embeddings: an exportable TFRS index and a NumPy fast path.

* ``build_index`` wraps the query tower and the candidates in a TFRS top-k layer (BruteForce,
  or ScaNN for big catalogues); ``save_index`` / ``load_index`` round-trip it as a SavedModel
  that maps a query-feature dict to (scores [Q, k], ids [Q, k]).
* ``EmbeddingIndex`` is what the service uses: query embedding -> top-k ids and scores
  (NumPy matmul + argpartition for brute force, ScaNN's own NumPy searcher otherwise, with the
  TFRS layer's tree and re-scoring sizes), and scoring of a given candidate set (to rank merged
  repeat + ANN candidates).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import tensorflow as tf
import tensorflow_recommenders as tfrs
from scann import scann_ops_pybind

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.models import ModelInputError
from recsys.ranking.frames import PAD

# Catalogues at least this big use ScaNN under method="auto".
SCANN_MIN_ITEMS = 100_000
METHODS = ("auto", "brute_force", "scann")
# ScaNN searches the scaled dot product ("dot_product"), the towers' similarity.
SCANN_DISTANCE = "dot_product"
# Asymmetric hashing with 2 dimensions per block (TFRS's default compression).
SCANN_DIMENSIONS_PER_BLOCK = 2
# Up to this many queries are searched on the calling thread (ScaNN's parallel batch size).
SCANN_SERIAL_QUERIES = 256
# ScaNN's custom ops live in this namespace; SavedModel refuses unknown op namespaces.
_SAVE_OPTIONS = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])


def resolve_method(method: str, n_items: int) -> str:
    if method not in METHODS:
        raise ModelInputError(f"index method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "scann" if n_items >= SCANN_MIN_ITEMS else "brute_force"
    return method


def _check_candidates(ids: np.ndarray, embeddings: np.ndarray, k: int) -> None:
    if embeddings.ndim != 2 or len(ids) != len(embeddings):
        raise ModelInputError(
            f"candidates need ids [n] and embeddings [n, d]; got {ids.shape}, {embeddings.shape}"
        )
    if not 0 < k <= len(ids):
        raise ModelInputError(f"k must be in 1..{len(ids)} (number of candidates), got {k}")


def _scann_tree(n_items: int) -> dict[str, int]:
    """Leaves of ~sqrt(n) candidates, searching ~10% of them (TFRS's ScaNN arguments)."""
    leaves = max(int(np.sqrt(n_items)), 1)
    return {"num_leaves": leaves, "num_leaves_to_search": max(leaves // 10, 1)}


def _reordered(k: int) -> int:
    """How many of the quantised scores' best are re-scored exactly for a top ``k``."""
    return max(4 * k, 100)


def _topk_layer(query_model: tf.keras.Model | None, n_items: int, *, k: int, method: str):
    if resolve_method(method, n_items) == "scann":
        return tfrs.layers.factorized_top_k.ScaNN(
            query_model,
            k=k,
            distance_measure=SCANN_DISTANCE,
            dimensions_per_block=SCANN_DIMENSIONS_PER_BLOCK,
            num_reordering_candidates=_reordered(k),
            **_scann_tree(n_items),
        )
    return tfrs.layers.factorized_top_k.BruteForce(query_model, k=k)


def build_index(
    query_model: tf.keras.Model,
    candidate_ids: np.ndarray,
    candidate_embeddings: np.ndarray,
    *,
    k: int,
    method: str = "auto",
) -> tfrs.layers.factorized_top_k.TopK:
    """TFRS top-k layer: query-feature dict -> (scores [Q, k] float32, ids [Q, k] int64).

    ``candidate_ids`` [n] are the ids returned (e.g. raw item ids); ``candidate_embeddings``
    [n, d] come from the candidate tower.
    """
    ids = np.asarray(candidate_ids, np.int64)
    embeddings = np.asarray(candidate_embeddings, np.float32)
    _check_candidates(ids, embeddings, k)
    layer = _topk_layer(query_model, len(ids), k=k, method=method)
    layer.index(tf.constant(embeddings), tf.constant(ids))
    return layer


def save_index(index: tfrs.layers.factorized_top_k.TopK, path: str | Path, sample_query) -> None:
    """Export ``index`` (query tower inside) as a SavedModel; ``sample_query`` traces the call."""
    index(sample_query)
    tf.saved_model.save(index, str(path), options=_SAVE_OPTIONS)


def load_index(path: str | Path):
    """The exported index: call it with a query-feature dict to get (scores, ids)."""
    return tf.saved_model.load(str(path))


class EmbeddingIndex:
    """Top-k and candidate scoring on precomputed candidate embeddings (the service's path)."""

    def __init__(
        self, candidate_ids: np.ndarray, candidate_embeddings: np.ndarray, *, method: str = "auto"
    ):
        self.ids = np.asarray(candidate_ids, np.int64)
        self.embeddings = np.ascontiguousarray(candidate_embeddings, np.float32)
        _check_candidates(self.ids, self.embeddings, 1)
        self.method = resolve_method(method, len(self.ids))
        self._row = {int(i): r for r, i in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise ModelInputError("candidate ids must be unique")
        self._scann: scann_ops_pybind.ScannSearcher | None = None

    def top_k(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` candidates by dot product for query embeddings [Q, d] (or [d]).

        Returns (ids [Q, k] int64, scores [Q, k] float32), best first. ScaNN may find fewer
        than ``k`` in the leaves it searches: the rest of the row is id ``PAD`` with score -inf.
        """
        queries = np.atleast_2d(np.asarray(query_embeddings, np.float32))
        k = min(k, len(self.ids))
        if self.method == "scann":
            # ScaNN's NumPy searcher, not the TFRS layer: a request's one or two queries spent
            # more time in Keras and eager dispatch than in the search itself. Batches (recsys
            # score, evaluation) are split over threads; a request stays on its own thread.
            searcher = self._searcher()
            search = (
                searcher.search_batched_parallel
                if len(queries) > SCANN_SERIAL_QUERIES
                else searcher.search_batched
            )
            rows, scores = search(
                queries, final_num_neighbors=k, pre_reorder_num_neighbors=_reordered(k)
            )
            missing = np.isnan(scores)  # ScaNN pads with row 0 and a NaN distance
            return (
                np.where(missing, PAD, self.ids[rows]),
                np.where(missing, -np.inf, scores).astype(np.float32),
            )
        scores = queries @ self.embeddings.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows = np.take_along_axis(top, order, axis=1)
        return self.ids[rows], np.take_along_axis(top_scores, order, axis=1)

    def score(self, query_embedding: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
        """Dot-product scores [m] of one query embedding [d] against the given candidate ids."""
        try:
            rows = np.fromiter((self._row[int(i)] for i in candidate_ids), np.int64)
        except KeyError as err:
            raise ModelInputError(f"candidate id {err.args[0]} is not in the index") from None
        return self.embeddings[rows] @ np.asarray(query_embedding, np.float32)

    def _searcher(self) -> scann_ops_pybind.ScannSearcher:
        """The ScaNN searcher, trained on first use (seconds for a 1M-item catalogue). Every
        k shares it: the number of neighbours and of re-scored ones are set per search."""
        if self._scann is None:
            n = len(self.ids)
            self._scann = (
                scann_ops_pybind.builder(self.embeddings, _reordered(1), SCANN_DISTANCE)
                .tree(**_scann_tree(n))
                .score_ah(SCANN_DIMENSIONS_PER_BLOCK)
                .reorder(_reordered(1))
                .build()
            )
        return self._scann


def search_frame(
    user_ids: np.ndarray, queries: np.ndarray, index: EmbeddingIndex, n: int
) -> pl.DataFrame:
    """(user_id, item_id, ann_score): the ``n`` best items of each query [Q, d] of ``index``
    (fewer where ScaNN found fewer)."""
    if not len(user_ids):
        return pl.DataFrame(
            schema={"user_id": pl.Int64, "item_id": pl.Int64, "ann_score": pl.Float64}
        )
    ids, scores = index.top_k(queries, n)
    found = ids.ravel() != PAD
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids, np.int64), ids.shape[1])[found],
            "item_id": ids.ravel()[found],
            "ann_score": scores.ravel()[found].astype(np.float64),
        }
    )
