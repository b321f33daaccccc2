"""Event frames and ids shared by ranking, models and evaluation: decayed behaviour weights,
dense id positions and top-k matrices."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.warehouse.schema import BEHAVIORS, REQUIRED_COLUMNS

PAD = -1


class RankingError(ValueError):
    """Bad input to a ranking step, a metric or a fitted ranker (one-line message)."""


def behavior_weight(config: FeatureConfig) -> pl.Expr:
    """Expression: the configured weight of each event's behaviour (Float64)."""
    return pl.col("behavior").replace_strict(config.behavior_weights, return_dtype=pl.Float64)


def check_events(events: pl.DataFrame) -> None:
    """Raise RankingError unless ``events`` has the canonical columns and behaviours."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise RankingError(f"events lack columns {missing}")
    unknown = set(events["behavior"].unique().to_list()) - set(BEHAVIORS)
    if unknown:
        raise RankingError(f"events have unknown behaviours {sorted(unknown)}")


def events_before(events: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """The events a model fitted as of ``as_of`` may see (strictly earlier), validated."""
    check_events(events)
    before = events.filter(pl.col("event_time") < as_of)
    if before.is_empty():
        raise RankingError(f"no events before {as_of} to fit on")
    return before


def decayed_weight(
    config: FeatureConfig, as_of: datetime, half_life_hours: float | None
) -> pl.Expr:
    """Expression: behaviour weight x 2^(-age / half-life) per event (no decay when None)."""
    weight = behavior_weight(config)
    if half_life_hours is None:
        return weight
    age_s = (pl.lit(as_of) - pl.col("event_time")).dt.total_microseconds() / 1e6
    return weight * (2.0 ** (-age_s / (half_life_hours * 3600.0)))


class IdIndex:
    """Dense positions 0..n-1 for a set of int64 ids."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, values: np.ndarray) -> np.ndarray:
        """int64 positions of ``values``; -1 where a value is not in the index."""
        values = np.asarray(values, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(values), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, values), len(self.ids) - 1)
        return np.where(self.ids[pos] == values, pos, -1).astype(np.int64)


def top_k_matrix(
    scored: pl.DataFrame,
    user_ids: np.ndarray,
    k: int,
    *,
    fill_items: np.ndarray | None = None,
) -> np.ndarray:
    """int64 [len(user_ids), k]: each user's items by descending ``score`` (ties: lower item id).

    ``scored`` has columns user_id, item_id, score with unique (user_id, item_id) pairs. Rows with
    fewer than k items are topped up from ``fill_items`` (best first, skipping items already in the
    row), then padded with -1.
    """
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if len(np.unique(user_ids)) != len(user_ids):
        raise RankingError("user_ids must be unique")
    rows = pl.DataFrame({"user_id": user_ids, "row": np.arange(len(user_ids))})
    ranked = (
        scored.select("user_id", "item_id", "score")
        .join(rows.select("user_id"), on="user_id")
        .sort(["user_id", "score", "item_id"], descending=[False, True, False])
        .select("user_id", "item_id")
    )
    if fill_items is not None and len(fill_items):
        # k fill items always suffice: at most k - 1 of them can collide with the row's own items
        # before the row is full.
        fill = rows.select("user_id").join(
            pl.DataFrame({"item_id": np.asarray(fill_items[:k], dtype=np.int64)}), how="cross"
        )
        ranked = pl.concat([ranked, fill]).unique(keep="first", maintain_order=True)
    ranked = (
        ranked.group_by("user_id", maintain_order=True)
        .head(k)
        .with_columns(col=pl.int_range(pl.len()).over("user_id"))
        .join(rows, on="user_id")
    )
    out = np.full((len(user_ids), k), PAD, dtype=np.int64)
    out[ranked["row"].to_numpy(), ranked["col"].to_numpy()] = ranked["item_id"].to_numpy()
    return out
