"""The item-side tables a ranking reads, computed from events strictly before one time.

- ``items``: item_id, category_id (its latest), pop_short, pop_long (behaviour-weighted decayed
  popularity at the short and long half-lives), trend (pop_short / pop_long share ratio);
- ``transitions``: src_item_id, item_id, p: within-session next-item probabilities (consecutive
  distinct items of one user with a gap under the session gap, weighted by the next event's
  behaviour, normalised per source item; the best ``max_next_items`` per source);
- ``category_items``: category_id, item_id, share: each category's most popular items and their
  share of the category's long-horizon popularity;
- ``category_transitions``: src_category_id, dst_category_id, p: how often users who leave one
  category for another choose each destination (session category changes and detected
  migrations; see ``recsys.ranking.sources.NextCategorySource``).

Saved with a model as Parquet, so the service ranks with the very tables the model was
validated with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.ranking.frames import RankingError, behavior_weight, decayed_weight, events_before

TABLES = ("items", "transitions", "category_items", "category_transitions")
# Each table is sorted by its key first, so that rows of a few keys are found by binary search
# (a request must not scan a million-item table).
KEYS = {
    "items": "item_id",
    "transitions": "src_item_id",
    "category_items": "category_id",
    "category_transitions": "src_category_id",
}
# Popular items kept ranked for the popular source and cold start.
POPULAR_LIMIT = 1000


@dataclass(frozen=True)
class TableSettings:
    """Sizes of the tables (chosen on validation days, never on a test day)."""

    category_items: int = 50
    max_next_items: int = 50
    max_next_categories: int = 10


@dataclass(frozen=True)
class ItemTables:
    """See the module docstring; ``as_of`` is the time the tables describe."""

    as_of: datetime
    items: pl.DataFrame
    transitions: pl.DataFrame
    category_items: pl.DataFrame
    category_transitions: pl.DataFrame
    _keys: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def rows(self, table: str, keys: pl.Series | np.ndarray) -> pl.DataFrame:
        """The rows of ``table`` whose key (``KEYS``) is one of ``keys``, in table order."""
        frame = getattr(self, table)
        sorted_keys = self._keys.get(table)
        if sorted_keys is None:
            sorted_keys = frame[KEYS[table]].to_numpy()
            if len(sorted_keys) and np.any(np.diff(sorted_keys) < 0):
                raise RankingError(f"the {table} table is not sorted by {KEYS[table]}")
            self._keys[table] = sorted_keys
        wanted = np.unique(np.asarray(keys, dtype=sorted_keys.dtype))
        starts = np.searchsorted(sorted_keys, wanted, side="left")
        lengths = np.searchsorted(sorted_keys, wanted, side="right") - starts
        # positions starts[j] .. starts[j] + lengths[j] - 1 for every wanted key j, in one go
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        return frame[offsets + np.arange(lengths.sum())]

    def popular(self, n: int) -> pl.DataFrame:
        """(item_id, popular_score): the ``n`` items of highest long-horizon popularity."""
        ranked = self._keys.get("popular")
        if ranked is None:
            order = np.lexsort(
                (self.items["item_id"].to_numpy(), -self.items["pop_long"].to_numpy())
            )
            ranked = self._keys["popular"] = order[:POPULAR_LIMIT]
        return self.items[ranked[:n]].select("item_id", pl.col("pop_long").alias("popular_score"))

    @classmethod
    def from_events(
        cls,
        events: pl.DataFrame,
        as_of: datetime,
        config: FeatureConfig,
        settings: TableSettings = TableSettings(),
    ) -> ItemTables:
        events = events_before(events, as_of).sort("user_id", "event_time", "item_id")
        return cls(
            as_of=as_of,
            items=_items(events, as_of, config),
            transitions=_transitions(events, config, settings.max_next_items),
            category_items=_category_items(events, as_of, config, settings.category_items),
            category_transitions=_category_transitions(
                events, config, settings.max_next_categories
            ),
        )

    def save(self, directory: Path) -> None:
        for name in TABLES:
            getattr(self, name).write_parquet(Path(directory) / f"{name}.parquet")

    @classmethod
    def load(cls, directory: Path, as_of: datetime) -> ItemTables:
        missing = [n for n in TABLES if not (Path(directory) / f"{n}.parquet").exists()]
        if missing:
            raise RankingError(f"{directory} lacks the tables {', '.join(missing)}")
        return cls(as_of, **{n: pl.read_parquet(Path(directory) / f"{n}.parquet") for n in TABLES})


def _items(events: pl.DataFrame, as_of: datetime, config: FeatureConfig) -> pl.DataFrame:
    c = config
    return (
        events.group_by("item_id")
        .agg(
            pl.col("category_id").last(),
            decayed_weight(c, as_of, c.short_half_life_hours).sum().alias("pop_short"),
            decayed_weight(c, as_of, c.long_half_life_hours).sum().alias("pop_long"),
        )
        .with_columns(
            trend=(pl.col("pop_short") / pl.col("pop_short").sum())
            / (pl.col("pop_long") / pl.col("pop_long").sum())
        )
        .sort("item_id")
    )


def _session_pairs(events: pl.DataFrame, config: FeatureConfig, key: str) -> pl.DataFrame:
    """(src, dst, w): consecutive events of one user, within the session gap, whose ``key``
    changes; ``w`` is the behaviour weight of the later event. ``events`` sorted by user, time."""
    gap = pl.duration(minutes=config.session_gap_minutes)
    return (
        events.with_columns(
            src=pl.col(key).shift(1).over("user_id"),
            src_time=pl.col("event_time").shift(1).over("user_id"),
            w=behavior_weight(config),
        )
        .filter((pl.col("event_time") - pl.col("src_time") <= gap) & (pl.col("src") != pl.col(key)))
        .select("src", pl.col(key).alias("dst"), "w")
    )


def _normalised(pairs: pl.DataFrame, keep: int) -> pl.DataFrame:
    """(src, dst, p) with p = w / sum of w over src, the ``keep`` best dst per src."""
    return (
        pairs.group_by("src", "dst")
        .agg(pl.col("w").sum())
        .with_columns(p=pl.col("w") / pl.col("w").sum().over("src"))
        .sort(["src", "p", "dst"], descending=[False, True, False])
        .group_by("src", maintain_order=True)
        .head(keep)
        .select("src", "dst", "p")
    )


def _transitions(events: pl.DataFrame, config: FeatureConfig, keep: int) -> pl.DataFrame:
    return _normalised(_session_pairs(events, config, "item_id"), keep).rename(
        {"src": "src_item_id", "dst": "item_id"}
    )


def _category_items(
    events: pl.DataFrame, as_of: datetime, config: FeatureConfig, keep: int
) -> pl.DataFrame:
    return (
        events.group_by("item_id")
        .agg(
            pl.col("category_id").last(),
            decayed_weight(config, as_of, config.long_half_life_hours).sum().alias("pop"),
        )
        .with_columns(share=pl.col("pop") / pl.col("pop").sum().over("category_id"))
        .sort(["category_id", "share", "item_id"], descending=[False, True, False])
        .group_by("category_id", maintain_order=True)
        .head(keep)
        .select("category_id", "item_id", "share")
    )


def _category_transitions(events: pl.DataFrame, config: FeatureConfig, keep: int) -> pl.DataFrame:
    """Category changes within sessions: where users go when they leave a category."""
    return _normalised(_session_pairs(events, config, "category_id"), keep).rename(
        {"src": "src_category_id", "dst": "dst_category_id"}
    )
