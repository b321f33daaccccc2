"""The union of the sources' candidates, one feature row per (user, item).

Columns: user_id, item_id, category_id, then float64 features: every source column
(``<source>_*``), a reciprocal rank and a presence flag per source (``<source>_rr``,
``<source>_present``; 0 where the source did not propose the item), the item's popularity
(``item_pop_short``, ``item_pop_long``, ``item_trend``) and, with ``context``, where the user's
interest in the item's category stands and moves (``ctx_share_short``, ``ctx_share_long``: the
category's share of the user's short / long-horizon interest, 0 outside the top categories;
``ctx_rise`` = short - long, > 0 when interest is migrating towards the category).
Rows are sorted by user_id, item_id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.ranking.arrays import Groups, match, ranked_within
from recsys.ranking.sources import Rows, Source, Users
from recsys.ranking.tables import ItemTables

KEYS = ("user_id", "item_id", "category_id")


@dataclass(frozen=True)
class Candidates:
    """The candidate table as arrays: ``rows`` (user_id, item_id and the float64 features, in
    the module docstring's order) and ``category_id`` int64 [n] with ``category_known`` bool [n]
    (False for an item neither the tables nor the user's sequence place in a category)."""

    rows: Rows
    category_id: np.ndarray
    category_known: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pl.DataFrame:
        category = pl.Series("category_id", self.category_id, pl.Int64)
        if not self.category_known.all():
            category = category.scatter(np.flatnonzero(~self.category_known), None)
        return self.rows.frame().insert_column(2, category)


def candidate_arrays(
    users: Users, tables: ItemTables, sources: Sequence[Source], *, context: bool
) -> Candidates:
    """See the module docstring."""
    if not sources:
        raise ValueError("a ranking needs at least one source")
    parts = [source.candidates(users, tables) for source in sources]
    union = Groups.of(
        np.concatenate([p.user_id for p in parts]), np.concatenate([p.item_id for p in parts])
    )
    group = union.ids()
    user_id = union.first(np.concatenate([p.user_id for p in parts]))
    item_id = union.first(np.concatenate([p.item_id for p in parts]))
    columns: dict[str, np.ndarray] = {}
    offset = 0
    for source, part in zip(sources, parts, strict=True):
        rows = group[offset : offset + len(part)]
        offset += len(part)
        rank = ranked_within(part.user_id, part.columns[f"{source.name}_score"], part.item_id)
        for name, values in (
            *part.columns.items(),
            (f"{source.name}_rr", 1.0 / (rank + 1.0)),
            (f"{source.name}_present", np.ones(len(part))),
        ):
            columns[name] = np.zeros(len(union))
            columns[name][rows] = values
    # Items the tables do not know (first seen online) keep the category their events carried.
    # A binary search in the sorted items table: a join (``match``) would sort all its rows.
    item = np.full(len(item_id), -1, np.int64)
    found, rows = tables.lookup("items", item_id, per_key=1)
    item[found] = rows
    known = item >= 0
    e = users.events
    events = Groups.of(e.user_id, e.item_id)  # stable: an item's first row is its latest event
    seen = match((user_id, item_id), (events.first(e.user_id), events.first(e.item_id)))
    # masked assignments: a user without events (or empty tables) has nothing to index
    from_events = ~known & (seen >= 0)
    category_id = np.zeros(len(item_id), np.int64)
    category_id[known] = tables.column("items", "category_id")[item[known]]
    category_id[from_events] = events.first(e.category_id)[seen[from_events]]
    category_known = known | from_events
    for name, column in (
        ("item_pop_short", "pop_short"),
        ("item_pop_long", "pop_long"),
        ("item_trend", "trend"),
    ):
        columns[name] = np.zeros(len(item_id))
        columns[name][known] = tables.column("items", column)[item[known]]
    if context:
        for name, interests in (("ctx_share_short", users.short), ("ctx_share_long", users.long)):
            at = match((user_id, category_id), (interests.user_id, interests.category_id))
            inside = (at >= 0) & category_known
            columns[name] = np.zeros(len(item_id))
            columns[name][inside] = interests.share[at[inside]]
        columns["ctx_rise"] = columns["ctx_share_short"] - columns["ctx_share_long"]
    return Candidates(Rows(user_id, item_id, columns), category_id, category_known)


def candidate_table(
    profiles: pl.DataFrame, tables: ItemTables, sources: Sequence[Source], *, context: bool
) -> pl.DataFrame:
    """See the module docstring (``candidate_arrays`` as a polars frame)."""
    return candidate_arrays(Users.of(profiles), tables, sources, context=context).frame()
