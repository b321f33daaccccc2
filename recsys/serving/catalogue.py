"""Serving data loaded once from the warehouse: items, their categories and popularity, and
the detected interest migrations.

The warehouse is opened read-only, copied into numpy arrays and closed at once, so requests
never touch DuckDB (analysts and the event drain need its lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recsys.home import Paths
from recsys.serving.settings import ServingError
from recsys.warehouse import connect as warehouse
from recsys.warehouse.ids import Ids
from recsys.warehouse.writeback import open_for_read


@dataclass(frozen=True)
class Migration:
    """One row of ``interest_migrations``."""

    from_category_id: int
    to_category_id: int
    detected_at: datetime
    strength: float


class Catalogue:
    """Items with category and decayed popularity, ranked globally and within each category.

    Arrays (n = number of items): ``item_ids`` int64 [n] ascending, ``category_ids`` int64 [n],
    ``popularity`` float64 [n] (``item_stats.pop_short``). Items first seen in events posted to
    the service are remembered with the category the event carried (``learn``). ``ids``: the
    warehouse's dims (string source ids and their keys), to which the service adds its own.
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        category_ids: np.ndarray,
        popularity: np.ndarray,
        migrations: dict[int, list[Migration]] | None = None,
        ids: Ids | None = None,
    ) -> None:
        order = np.argsort(item_ids, kind="stable")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)[order]
        self.category_ids = np.asarray(category_ids, dtype=np.int64)[order]
        self.popularity = np.asarray(popularity, dtype=np.float64)[order]
        if len(self.item_ids) and np.any(np.diff(self.item_ids) == 0):
            raise ServingError("the catalogue lists an item twice")
        # Global ranking (most popular first; ties: smallest item id) and the same ranking
        # grouped by category, with each category's slice.
        self.trending = np.lexsort((self.item_ids, -self.popularity))
        by_category = np.lexsort((self.item_ids, -self.popularity, self.category_ids))
        self._by_category = by_category
        categories, starts = np.unique(self.category_ids[by_category], return_index=True)
        ends = np.append(starts[1:], len(by_category))[: len(starts)]  # none when empty
        self._category_slices = {
            int(c): (int(s), int(e)) for c, s, e in zip(categories, starts, ends, strict=True)
        }
        self.migrations = migrations or {}
        self.ids = ids or Ids.empty()
        self._learned: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.item_ids)

    def category_of(self, item_id: int) -> int | None:
        """The item's category, or None for an item never seen."""
        return self.categories_of(np.array([item_id], dtype=np.int64))[0]

    def categories_of(self, item_ids: np.ndarray) -> list[int | None]:
        """``category_of`` for each item of an int64 [n] array, in one search."""
        if not len(self.item_ids):
            return [self._learned.get(item) for item in item_ids.tolist()]
        positions = np.minimum(np.searchsorted(self.item_ids, item_ids), len(self.item_ids) - 1)
        known = (self.item_ids[positions] == item_ids).tolist()
        categories = self.category_ids[positions].tolist()
        return [
            category if found else self._learned.get(item)
            for item, category, found in zip(item_ids.tolist(), categories, known, strict=True)
        ]

    def learn(self, item_id: int, category_id: int) -> None:
        """Remember the category of an item that the warehouse did not know at startup."""
        if self.category_of(item_id) is None:
            self._learned[item_id] = category_id

    def top_items(self, k: int) -> list[tuple[int, int, float]]:
        """The k most popular items as (item_id, category_id, popularity)."""
        return self._rows(self.trending[:k])

    def top_in_category(self, category_id: int, k: int) -> list[tuple[int, int, float]]:
        """The k most popular items of one category (empty for an unknown category)."""
        start, end = self._category_slices.get(category_id, (0, 0))
        return self._rows(self._by_category[start : min(end, start + k)])

    def _rows(self, positions: np.ndarray) -> list[tuple[int, int, float]]:
        return list(
            zip(
                self.item_ids[positions].tolist(),
                self.category_ids[positions].tolist(),
                self.popularity[positions].tolist(),
                strict=True,
            )
        )

    def recent_migrations(self, user_id: int, since: datetime) -> list[Migration]:
        """The user's migrations detected at or after ``since``, newest first."""
        return [m for m in self.migrations.get(user_id, []) if m.detected_at >= since]


def load_catalogue(paths: Paths, *, lock_timeout_s: float) -> Catalogue:
    """Copy ``item_stats``, ``interest_migrations`` and the dims out of the warehouse
    (read-only, closed before returning). Raises ``ServingError`` when the marts are missing."""
    if not paths.warehouse.exists():
        raise ServingError(f"no warehouse at {paths.warehouse}: run `recsys pipeline` first")
    with open_for_read(paths, lock_timeout_s=lock_timeout_s) as con:
        for table in ("item_stats", "interest_migrations"):
            if not warehouse.table_exists(con, table):
                raise ServingError(f"the warehouse has no {table} mart: run `recsys build` first")
        items = con.execute("select item_id, category_id, pop_short from item_stats").fetchnumpy()
        rows = con.execute(
            "select user_id, from_category_id, to_category_id, detected_at, strength "
            "from interest_migrations order by user_id, detected_at desc"
        ).fetchall()
        ids = Ids.load(con)
    migrations: dict[int, list[Migration]] = {}
    for user_id, from_category, to_category, detected_at, strength in rows:
        migrations.setdefault(user_id, []).append(
            Migration(from_category, to_category, detected_at, strength)
        )
    return Catalogue(
        items["item_id"], items["category_id"], items["pop_short"], migrations=migrations, ids=ids
    )
