"""The item-side tables a ranking reads, taken from the SQL marts built as of one time.

- ``items``: item_id, category_id, pop_short, pop_long (behaviour-weighted decayed popularity
  at the short and long half-lives), trend (the ``item_stats`` mart);
- ``transitions``: src_item_id, item_id, p: within-session next-item probabilities (the
  ``edges_item_item`` mart), the best ``max_next_items`` per source item;
- ``category_items``: category_id, item_id, share: each category's most popular items and their
  share of the category's long-horizon popularity;
- ``category_transitions``: src_category_id, dst_category_id, p: where users go when they leave
  a category (the ``category_transitions`` mart: session category changes and detected
  migrations), the strongest ``max_next_categories`` per source category; read by
  ``recsys.ranking.sources.NextCategorySource``.

Saved with a model as Parquet, so the service ranks with the very tables the model was
validated with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from recsys.home import Paths
from recsys.ranking.arrays import expand
from recsys.ranking.frames import RankingError

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
    _columns: dict[tuple[str, str], np.ndarray] = field(
        default_factory=dict, compare=False, repr=False
    )

    def column(self, table: str, name: str) -> np.ndarray:
        """Column ``name`` of ``table`` as a numpy array (converted once, then cached)."""
        cached = self._columns.get((table, name))
        if cached is None:
            cached = getattr(self, table)[name].to_numpy()
            if name == KEYS.get(table) and len(cached) and np.any(np.diff(cached) < 0):
                raise RankingError(f"the {table} table is not sorted by {name}")
            self._columns[(table, name)] = cached
        return cached

    def lookup(
        self, table: str, keys: np.ndarray, *, per_key: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(key_index, row) int64 arrays: each position of ``keys`` paired with the rows of
        ``table`` whose key (``KEYS``) equals it, in table order (best first within a key);
        with ``per_key``, only the first that many of each key."""
        return expand(self.column(table, KEYS[table]), keys, per_key)

    def popular_rows(self, n: int) -> np.ndarray:
        """int64 rows of ``items``: the ``n`` items of highest long-horizon popularity (ties:
        lower item id), best first."""
        ranked = self._columns.get(("items", "popular"))
        if ranked is None:
            order = np.lexsort((self.column("items", "item_id"), -self.column("items", "pop_long")))
            ranked = self._columns[("items", "popular")] = order[:POPULAR_LIMIT]
        return ranked[:n]

    def popular(self, n: int) -> pl.DataFrame:
        """(item_id, popular_score): the ``n`` items of highest long-horizon popularity."""
        return self.items[self.popular_rows(n)].select(
            "item_id", pl.col("pop_long").alias("popular_score")
        )

    @classmethod
    def from_marts(
        cls,
        as_of: datetime,
        *,
        item_stats: pl.DataFrame,
        item_item: pl.DataFrame,
        category_transitions: pl.DataFrame,
        settings: TableSettings = TableSettings(),
    ) -> ItemTables:
        """The tables from the marts ``item_stats``, ``edges_item_item`` and
        ``category_transitions``, all built as of ``as_of``."""
        items = item_stats.select(
            pl.col("item_id").cast(pl.Int64),
            pl.col("category_id").cast(pl.Int64),
            pl.col("pop_short").cast(pl.Float64),
            pl.col("pop_long").cast(pl.Float64),
            pl.col("trend").cast(pl.Float64).fill_null(0.0),
        ).sort("item_id")
        return cls(
            as_of=as_of,
            items=items,
            transitions=best_per_key(
                item_item.select(
                    pl.col("src_item_id").cast(pl.Int64),
                    pl.col("dst_item_id").cast(pl.Int64).alias("item_id"),
                    pl.col("weight").cast(pl.Float64).alias("p"),
                ),
                "src_item_id",
                "p",
                "item_id",
                settings.max_next_items,
            ),
            category_items=best_per_key(
                items.with_columns(
                    share=pl.col("pop_long") / pl.col("pop_long").sum().over("category_id")
                ).select("category_id", "item_id", "share"),
                "category_id",
                "share",
                "item_id",
                settings.category_items,
            ),
            category_transitions=best_per_key(
                category_transitions.select(
                    pl.col("src_category_id").cast(pl.Int64),
                    pl.col("dst_category_id").cast(pl.Int64),
                    pl.col("p").cast(pl.Float64),
                ),
                "src_category_id",
                "p",
                "dst_category_id",
                settings.max_next_categories,
            ),
        )

    @classmethod
    def from_warehouse(
        cls, paths: Paths, settings: TableSettings = TableSettings(), *, lock_timeout_s: float = 30
    ) -> ItemTables:
        """The tables from a built warehouse's marts (as of its last build)."""
        from recsys.warehouse.writeback import open_for_read

        with open_for_read(paths, lock_timeout_s=lock_timeout_s) as con:
            (as_of,) = con.execute("select as_of from recsys_params").fetchone()
            marts = {
                name: pl.DataFrame(con.execute(f"select * from {name}").fetchnumpy())
                for name in ("item_stats", "edges_item_item", "category_transitions")
            }
        return cls.from_marts(
            as_of,
            item_stats=marts["item_stats"],
            item_item=marts["edges_item_item"],
            category_transitions=marts["category_transitions"],
            settings=settings,
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


def best_per_key(frame: pl.DataFrame, key: str, score: str, tie: str, keep: int) -> pl.DataFrame:
    """The ``keep`` rows of highest ``score`` per ``key`` (ties: lower ``tie``), sorted by key
    and then best first (the order ``ItemTables.rows`` and the sources rely on)."""
    return (
        frame.sort([key, score, tie], descending=[False, True, False])
        .group_by(key, maintain_order=True)
        .head(keep)
    )
