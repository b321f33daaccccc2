"""The union of the sources' candidates, one feature row per (user, item).

Columns: user_id, item_id, category_id, then Float64 features: every source column
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

import polars as pl

from recsys.ranking.profiles import (
    LONG_CATEGORIES,
    LONG_SCORES,
    LONG_TOTAL,
    SHORT_CATEGORIES,
    SHORT_SCORES,
    SHORT_TOTAL,
)
from recsys.ranking.sources import Source, Users
from recsys.ranking.tables import ItemTables

KEYS = ("user_id", "item_id", "category_id")


def candidate_table(
    profiles: pl.DataFrame, tables: ItemTables, sources: Sequence[Source], *, context: bool
) -> pl.DataFrame:
    """See the module docstring."""
    users = Users.of(profiles)
    frames = []
    for source in sources:
        score = f"{source.name}_score"
        frames.append(
            source.candidates(users, tables)
            .sort("user_id", "item_id")
            .with_columns(
                (1.0 / pl.col(score).rank("ordinal", descending=True).over("user_id")).alias(
                    f"{source.name}_rr"
                ),
                pl.lit(1.0).alias(f"{source.name}_present"),
            )
        )
    if not frames:
        raise ValueError("a ranking needs at least one source")
    # One group-by over the stacked frames: each source's columns are null in the others' rows,
    # so max() takes the proposing source's value (cheaper than a chain of full joins).
    table = (
        pl.concat(frames, how="diagonal_relaxed").group_by("user_id", "item_id").agg(pl.all().max())
    )
    items = tables.rows("items", table["item_id"]).select(
        "item_id",
        "category_id",
        pl.col("pop_short").alias("item_pop_short"),
        pl.col("pop_long").alias("item_pop_long"),
        pl.col("trend").alias("item_trend"),
    )
    # Items the tables do not know (first seen online) keep the category their events carried.
    seen = users.events.group_by("user_id", "item_id").agg(
        pl.col("category_id").first().alias("seq_category_id")
    )
    table = (
        table.join(items, on="item_id", how="left")
        .join(seen, on=["user_id", "item_id"], how="left")
        .with_columns(pl.coalesce("category_id", "seq_category_id").alias("category_id"))
        .drop("seq_category_id")
    )
    if context:
        table = table.join(
            _category_shares(profiles), on=["user_id", "category_id"], how="left"
        ).with_columns(
            ctx_rise=pl.col("ctx_share_short").fill_null(0.0)
            - pl.col("ctx_share_long").fill_null(0.0)
        )
    return table.with_columns(pl.exclude(KEYS).cast(pl.Float64).fill_null(0.0)).sort(
        "user_id", "item_id"
    )


def _category_shares(profiles: pl.DataFrame) -> pl.DataFrame:
    """(user_id, category_id, ctx_share_short, ctx_share_long) from the top-category arrays."""

    def shares(categories: str, scores: str, total: str, name: str) -> pl.DataFrame:
        return (
            profiles.select(
                "user_id",
                pl.col(categories).alias("category_id"),
                pl.col(scores).alias("score"),
                pl.col(total).alias("total"),
            )
            .explode("category_id", "score")
            .drop_nulls("category_id")
            .select(
                "user_id",
                "category_id",
                pl.when(pl.col("total") > 0)
                .then(pl.col("score") / pl.col("total"))
                .otherwise(0.0)
                .alias(name),
            )
        )

    return shares(SHORT_CATEGORIES, SHORT_SCORES, SHORT_TOTAL, "ctx_share_short").join(
        shares(LONG_CATEGORIES, LONG_SCORES, LONG_TOTAL, "ctx_share_long"),
        on=["user_id", "category_id"],
        how="full",
        coalesce=True,
    )
