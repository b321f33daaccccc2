"""Feast feature rows -> the input dicts of ``recsys.models.two_tower``'s towers.

One encoder serves training (point-in-time ``two_tower_v1_query`` / ``two_tower_v1_candidate``
rows from Feast) and the service (a ``user_profile_v1`` online row, same views and names, via
``profile_frame``, or ``encode_query_row`` per request without polars), so the query tower sees
identically encoded inputs in both.

Query inputs (n rows; N = ``interest_slots``, L = ``sequence_length``, see the two-tower module):
``user_id`` int64 [n] (raw), ``dense`` float32 [n, len(QUERY_DENSE)] (log-compressed),
``interest_categories`` int64 [n, N] / ``interest_scores`` float32 [n, N] (short-horizon top
categories and their shares), ``seq_items`` int64 [n, L], ``seq_behaviors`` int64 [n, L],
``seq_gap_hours`` float32 [n, L] (recent events, most recent first), ``gnn_user`` float32 [n, G].
Candidate inputs: ``item_id`` / ``category_id`` int64 [n], ``item_dense`` float32
[n, len(ITEM_DENSE)], ``gnn_item`` float32 [n, G]. Item and category ids become vocabulary
positions 0..n-1; padding and ids unknown to the vocabulary are -1.

``FeatureEncoder.save`` / ``load`` store an encoder as open files: sizes in ``encoder.json``,
vocabularies in ``encoder.npz`` (``recsys.models.artifacts.ENCODER_JSON`` / ``ENCODER_ARRAYS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.models.artifacts import (
    ENCODER_ARRAYS,
    ENCODER_JSON,
    ArtifactError,
    load_arrays,
    read_json,
    save_arrays,
    write_json,
)
from recsys.models.data import LearnedModelError
from recsys.ranking.frames import IdIndex
from recsys.warehouse.schema import BEHAVIORS

QUERY_DENSE = (
    "user_interest_short__interest_total_short",
    "user_interest_long__interest_total_long",
    "user_interest_shift__js_divergence",
    "user_interest_shift__novel_category_share",
    "user_interest_shift__entropy_short",
    "user_interest_shift__entropy_long",
    "user_behavior_funnel__n_view",
    "user_behavior_funnel__n_cart",
    "user_behavior_funnel__n_fav",
    "user_behavior_funnel__n_buy",
    "user_behavior_funnel__buy_rate",
    "user_behavior_funnel__hours_since_last_event",
    "user_recent_sequence__seq_len",
)
ITEM_DENSE = (
    "item_stats__pop_short",
    "item_stats__pop_long",
    "item_stats__n_users",
    "item_stats__buy_rate",
    "item_stats__trend",
    "item_stats__hours_since_last_event",
)
INTEREST_CATEGORIES = "user_interest_short__top_categories_short"
INTEREST_SCORES = "user_interest_short__top_scores_short"
SEQ_ITEMS = "user_recent_sequence__seq_item_ids"
SEQ_BEHAVIORS = "user_recent_sequence__seq_behaviors"
SEQ_GAPS = "user_recent_sequence__seq_gap_seconds"
# A missing "hours since" means "never": far in the past.
NEVER_HOURS = 10_000.0
_BEHAVIOR_INDEX = {b: float(i) for i, b in enumerate(BEHAVIORS)}


def _compress(values: np.ndarray) -> np.ndarray:
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32)


def _dense(frame: pl.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """float32 [n, len(columns)]: log-compressed; nulls -> 0, missing hours -> 'never'."""
    out = []
    for column in columns:
        fill = NEVER_HOURS if "hours_since" in column else 0.0
        series = frame[column].cast(pl.Float64).fill_nan(None).fill_null(fill)
        out.append(series.to_numpy())
    return _compress(np.stack(out, axis=1))


def _padded(lists: pl.Series, length: int) -> np.ndarray:
    """The first ``length`` entries of a numeric list column: float64 [n, length], NaN padded."""
    lists = lists.cast(pl.List(pl.Float64)).fill_null([]).list.head(length)
    out = np.full((len(lists), length), np.nan)
    lens = lists.list.len().to_numpy()
    flat = lists.explode().drop_nulls().to_numpy()
    rows = np.repeat(np.arange(len(lists)), lens)
    cols = np.concatenate([np.arange(n) for n in lens]) if len(lens) else np.zeros(0, int)
    out[rows, cols] = flat
    return out


def _padded_row(values: Any, length: int) -> np.ndarray:
    """``_padded`` for one row's list (None = empty): float64 [1, length], NaN padded."""
    out = np.full((1, length), np.nan)
    head = np.asarray([] if values is None else list(values)[:length], np.float64)
    out[0, : len(head)] = head
    return out


def _dense_value(value: Any, column: str) -> float:
    """One ``_dense`` input before compression: None/NaN -> 0, or 'never' for hours."""
    if value is None or np.isnan(value := float(value)):
        return NEVER_HOURS if "hours_since" in column else 0.0
    return value


def _positions(padded: np.ndarray, index: IdIndex) -> np.ndarray:
    """Vocabulary positions of a NaN-padded id array; -1 at pads and unknown ids."""
    known = ~np.isnan(padded)
    out = np.full(padded.shape, -1, np.int64)
    out[known] = index.positions(padded[known].astype(np.int64))
    return out


@dataclass(frozen=True)
class FeatureEncoder:
    """Vocabularies and sizes that turn feature rows into tower inputs (module doc)."""

    items: IdIndex
    categories: IdIndex
    interest_slots: int
    sequence_length: int

    def save(self, directory: Path) -> None:
        """Write ``ENCODER_JSON`` (sizes) and ``ENCODER_ARRAYS`` (vocabularies) to ``directory``."""
        write_json(
            Path(directory) / ENCODER_JSON,
            {"interest_slots": self.interest_slots, "sequence_length": self.sequence_length},
        )
        save_arrays(
            Path(directory) / ENCODER_ARRAYS, items=self.items.ids, categories=self.categories.ids
        )

    @classmethod
    def load(cls, directory: Path) -> FeatureEncoder:
        """The encoder ``save`` wrote to ``directory``; ArtifactError if its files are malformed."""
        sizes = read_json(Path(directory) / ENCODER_JSON)
        arrays = load_arrays(Path(directory) / ENCODER_ARRAYS)
        if not isinstance(sizes, dict) or not all(
            type(sizes.get(key)) is int for key in ("interest_slots", "sequence_length")
        ):
            raise ArtifactError(f"{directory}: {ENCODER_JSON} lacks integer sizes")
        if not all(
            key in arrays and arrays[key].ndim == 1 and arrays[key].dtype == np.int64
            for key in ("items", "categories")
        ):
            raise ArtifactError(f"{directory}: {ENCODER_ARRAYS} lacks int64 items/categories")
        return cls(
            IdIndex(arrays["items"]),
            IdIndex(arrays["categories"]),
            interest_slots=sizes["interest_slots"],
            sequence_length=sizes["sequence_length"],
        )

    def encode_queries(self, features: pl.DataFrame, gnn_user: np.ndarray) -> dict[str, np.ndarray]:
        """Query inputs from ``two_tower_v1_query``-named rows and their GNN user embeddings."""
        n, length = features.height, self.sequence_length
        interest_scores = np.nan_to_num(_padded(features[INTEREST_SCORES], self.interest_slots))
        total = interest_scores.sum(axis=1, keepdims=True)
        behaviors = (
            features[SEQ_BEHAVIORS]
            .cast(pl.List(pl.String))
            .list.eval(pl.element().replace_strict(_BEHAVIOR_INDEX, return_dtype=pl.Float64))
        )
        gaps = _padded(features[SEQ_GAPS], length)
        return {
            "user_id": features["user_id"].cast(pl.Int64).to_numpy(),
            "dense": _dense(features, QUERY_DENSE),
            "interest_categories": _positions(
                _padded(features[INTEREST_CATEGORIES], self.interest_slots), self.categories
            ),
            "interest_scores": (interest_scores / np.where(total > 0, total, 1.0)).astype(
                np.float32
            ),
            "seq_items": _positions(_padded(features[SEQ_ITEMS], length), self.items),
            "seq_behaviors": np.nan_to_num(_padded(behaviors, length)).astype(np.int64),
            "seq_gap_hours": (np.nan_to_num(gaps) / 3600.0).astype(np.float32),
            "gnn_user": _rows(gnn_user, n),
        }

    def encode_query_row(
        self, user_id: int, features: Mapping[str, Any], gnn_user: np.ndarray
    ) -> dict[str, np.ndarray]:
        """``encode_queries(profile_frame(user_id, features), gnn_user)`` without polars: the
        same dict (batch of 1, same dtypes and shapes) for one online profile; ``gnn_user``
        float32 [G] or [1, G]. The service calls this per request, where building a frame costs
        several times the query tower itself."""
        length = self.sequence_length
        dense = np.array([[_dense_value(features.get(c), c) for c in QUERY_DENSE]])
        interest_scores = np.nan_to_num(
            _padded_row(features.get(INTEREST_SCORES), self.interest_slots)
        )
        total = interest_scores.sum(axis=1, keepdims=True)
        behaviors = list(features.get(SEQ_BEHAVIORS) or ())
        unknown = set(behaviors) - _BEHAVIOR_INDEX.keys()
        if unknown:
            raise LearnedModelError(f"unknown behaviours {sorted(map(str, unknown))} in profile")
        gaps = _padded_row(features.get(SEQ_GAPS), length)
        return {
            "user_id": np.array([user_id], np.int64),
            "dense": _compress(dense),
            "interest_categories": _positions(
                _padded_row(features.get(INTEREST_CATEGORIES), self.interest_slots),
                self.categories,
            ),
            "interest_scores": (interest_scores / np.where(total > 0, total, 1.0)).astype(
                np.float32
            ),
            "seq_items": _positions(_padded_row(features.get(SEQ_ITEMS), length), self.items),
            "seq_behaviors": np.nan_to_num(
                _padded_row([_BEHAVIOR_INDEX[b] for b in behaviors[:length]], length)
            ).astype(np.int64),
            "seq_gap_hours": (np.nan_to_num(gaps) / 3600.0).astype(np.float32),
            "gnn_user": _rows(np.reshape(gnn_user, (1, -1)), 1),
        }

    def encode_candidates(
        self, features: pl.DataFrame, gnn_item: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Candidate inputs from ``two_tower_v1_candidate`` rows (item_id, item_stats__*)."""
        categories = features["item_stats__category_id"].cast(pl.Float64).to_numpy()
        return {
            "item_id": self.items.positions(features["item_id"].to_numpy()),
            "category_id": _positions(categories[:, None], self.categories)[:, 0],
            "item_dense": _dense(features, ITEM_DENSE),
            "gnn_item": _rows(gnn_item, features.height),
        }


def _rows(embeddings: np.ndarray, n: int) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or len(embeddings) != n:
        raise LearnedModelError(f"expected {n} GNN embedding rows, got shape {embeddings.shape}")
    return embeddings


def profile_frame(user_id: int, features: Mapping[str, Any]) -> pl.DataFrame:
    """One online profile row (flat ``<view>__<feature>`` dict) as the one-row frame
    ``FeatureEncoder.encode_queries`` reads; list columns keep their element types."""
    lists = {INTEREST_CATEGORIES, INTEREST_SCORES, SEQ_ITEMS, SEQ_BEHAVIORS, SEQ_GAPS}
    row = {
        column: [list(features.get(column) or [])] if column in lists else [features.get(column)]
        for column in (*QUERY_DENSE, *lists)
    }
    schema = {column: pl.List(pl.Float64) for column in lists} | {SEQ_BEHAVIORS: pl.List(pl.String)}
    schema |= {column: pl.Float64 for column in QUERY_DENSE}
    return pl.DataFrame({"user_id": [user_id], **row}, schema_overrides=schema)
