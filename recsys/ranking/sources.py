"""Candidate sources: each proposes items for a batch of profiles, with its own features.

A source's ``candidates(profiles, tables)`` returns unique (user_id, item_id) rows and Float64
columns named ``<name>_*``, among them ``<name>_score`` (higher is better). Sources never
filter; ``recsys.ranking.candidates`` merges them and the ranker orders the union.

| source | proposes |
|---|---|
| repeat | the items of the user's recent sequence (decayed behaviour-weighted scores) |
| transition | items that followed the user's latest items within sessions (anyone's) |
| category | popular items of the user's top short-horizon categories |
| next_category | popular items of the categories users move on to from the user's current ones |
| ann | nearest items to the user's query-tower embedding (the two-tower index) |
| popular | the most popular items (fill, and everything a never-seen user gets) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import polars as pl

from recsys.config import FeatureConfig
from recsys.ranking.profiles import (
    SEQ_BEHAVIORS,
    SEQ_CATEGORIES,
    SEQ_GAPS,
    SEQ_ITEMS,
    SHORT_CATEGORIES,
    SHORT_SCORES,
    SHORT_TOTAL,
    conform,
)
from recsys.ranking.tables import ItemTables, best_per_key


@dataclass(frozen=True)
class Users:
    """What the sources read of a batch of profiles, derived once per ranking: the profiles,
    their recent sequences one event per row (``sequence_events``) and their top short-horizon
    categories (``short_interests``)."""

    profiles: pl.DataFrame
    events: pl.DataFrame
    interests: pl.DataFrame

    @classmethod
    def of(cls, profiles: pl.DataFrame) -> Users:
        return cls(profiles, sequence_events(profiles), short_interests(profiles))


class Source(Protocol):
    name: str

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame: ...


class AnnSearch(Protocol):
    """Nearest items of each profile's query embedding: (user_id, item_id, ann_score) rows,
    ``n`` per user (``recsys.models`` implements it with the two-tower towers and index)."""

    def search(self, profiles: pl.DataFrame, n: int) -> pl.DataFrame: ...


def sequence_events(profiles: pl.DataFrame) -> pl.DataFrame:
    """(user_id, position, item_id, category_id, behavior, gap_seconds): the recent sequence
    of each profile, one row per event, position 0 = most recent."""
    return (
        profiles.select(
            "user_id",
            pl.col(SEQ_ITEMS).alias("item_id"),
            pl.col(SEQ_CATEGORIES).alias("category_id"),
            pl.col(SEQ_BEHAVIORS).alias("behavior"),
            pl.col(SEQ_GAPS).alias("gap_seconds"),
        )
        .with_columns(position=pl.int_ranges(pl.col("item_id").list.len()))
        .explode("item_id", "category_id", "behavior", "gap_seconds", "position")
        .drop_nulls("item_id")
    )


def _decayed(config: FeatureConfig, half_life_hours: float) -> pl.Expr:
    weight = pl.col("behavior").replace_strict(config.behavior_weights, return_dtype=pl.Float64)
    return weight * 2.0 ** (-pl.col("gap_seconds") / (half_life_hours * 3600.0))


@dataclass(frozen=True)
class RepeatSource:
    config: FeatureConfig
    name: str = "repeat"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        c, n = self.config, self.name
        return users.events.group_by("user_id", "item_id").agg(
            _decayed(c, c.short_half_life_hours).sum().alias(f"{n}_score"),
            _decayed(c, c.long_half_life_hours).sum().alias(f"{n}_long"),
            *[
                (pl.col("behavior") == b).sum().cast(pl.Float64).alias(f"{n}_n_{b}")
                for b in c.behavior_weights
            ],
            (1.0 / (1.0 + pl.col("gap_seconds").min() / 3600.0)).alias(f"{n}_recency"),
        )


@dataclass(frozen=True)
class TransitionSource:
    """Score = sum over the user's ``n_recent`` latest distinct items of their short-decayed
    weight x the probability that the candidate follows them."""

    config: FeatureConfig
    n_recent: int = 10
    max_candidates: int = 100
    name: str = "transition"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        c, n = self.config, self.name
        recent = (
            users.events.group_by("user_id", "item_id")
            .agg(
                pl.col("position").min(),
                _decayed(c, c.short_half_life_hours).sum().alias("r"),
            )
            .sort("user_id", "position")
            .group_by("user_id", maintain_order=True)
            .head(self.n_recent)
            .select("user_id", pl.col("item_id").alias("src_item_id"), "r")
        )
        return _per_user(
            recent.join(tables.rows("transitions", recent["src_item_id"]), on="src_item_id")
            .group_by("user_id", "item_id")
            .agg(
                (pl.col("r") * pl.col("p")).sum().alias(f"{n}_score"),
                pl.col("p").sum().alias(f"{n}_p"),
                pl.len().cast(pl.Float64).alias(f"{n}_sources"),
            ),
            f"{n}_score",
            self.max_candidates,
        )


def short_interests(profiles: pl.DataFrame) -> pl.DataFrame:
    """(user_id, position, category_id, interest_share): the user's top short-horizon
    categories, strongest first (position 0), and their share of the user's short-horizon
    interest."""
    return (
        profiles.select(
            "user_id",
            pl.col(SHORT_CATEGORIES).alias("category_id"),
            pl.col(SHORT_SCORES).alias("interest"),
            pl.col(SHORT_TOTAL).alias("total"),
        )
        .with_columns(position=pl.int_ranges(pl.col("category_id").list.len()))
        .explode("category_id", "interest", "position")
        .drop_nulls("category_id")
        .with_columns(
            interest_share=pl.when(pl.col("total") > 0)
            .then(pl.col("interest") / pl.col("total"))
            .otherwise(0.0)
        )
        .select("user_id", "position", "category_id", "interest_share")
    )


@dataclass(frozen=True)
class CategorySource:
    """Score = the category's share of the user's short interest x the item's share of the
    category's popularity, over the user's ``n_categories`` top categories."""

    n_categories: int = 20
    items_per_category: int = 50
    name: str = "category"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        n = self.name
        interests = users.interests.filter(pl.col("position") < self.n_categories)
        items = tables.rows(
            "category_items", interests["category_id"], per_key=self.items_per_category
        )
        return (
            interests.join(items, on="category_id")
            .group_by("user_id", "item_id")
            .agg(
                (pl.col("interest_share") * pl.col("share")).max().alias(f"{n}_score"),
                pl.col("interest_share").max().alias(f"{n}_interest_share"),
                pl.col("share").max().alias(f"{n}_item_share"),
            )
        )


@dataclass(frozen=True)
class NextCategorySource:
    """Items of the categories users move on to from the user's current ones, which the user
    has not touched in the recent sequence: interest association.

    Category weight = sum over the user's ``n_categories`` top short-horizon categories s of
    share(s) x P(next category = c | leaving s); the user's own top categories are skipped (the
    category source covers them). Score = weight x the item's share of its category.
    """

    n_categories: int = 5
    n_next: int = 5
    items_per_category: int = 20
    max_candidates: int = 100
    name: str = "next_category"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        n = self.name
        current = users.interests.filter(pl.col("position") < self.n_categories)
        nexts = tables.rows("category_transitions", current["category_id"], per_key=self.n_next)
        weights = (
            current.select("user_id", "interest_share", src_category_id="category_id")
            .join(nexts, on="src_category_id")
            .group_by("user_id", pl.col("dst_category_id").alias("category_id"))
            .agg((pl.col("interest_share") * pl.col("p")).sum().alias("weight"))
            # the user's own top categories are the category source's
            .join(users.interests, on=["user_id", "category_id"], how="anti")
        )
        items = tables.rows(
            "category_items", weights["category_id"], per_key=self.items_per_category
        )
        return _per_user(
            weights.join(items, on="category_id")
            .join(users.events, on=["user_id", "item_id"], how="anti")
            .group_by("user_id", "item_id")
            .agg(
                (pl.col("weight") * pl.col("share")).max().alias(f"{n}_score"),
                pl.col("weight").max().alias(f"{n}_weight"),
            ),
            f"{n}_score",
            self.max_candidates,
        )


def interest_profiles(profiles: pl.DataFrame, n_interests: int) -> pl.DataFrame:
    """One profile per (user, top short-horizon category c), for c among the user's first
    ``n_interests``: the interest arrays hold c alone and the recent sequence keeps only c's
    events, so that the query tower reads one interest at a time."""
    sequence = [SEQ_ITEMS, SEQ_CATEGORIES, SEQ_BEHAVIORS, SEQ_GAPS]
    focused = (
        profiles.with_columns(
            interest=pl.int_ranges(
                pl.col(SHORT_CATEGORIES).list.len().clip(upper_bound=max(n_interests, 0))
            )
        )
        .explode("interest")
        .drop_nulls("interest")
        .with_columns(
            pl.concat_list(pl.col(SHORT_CATEGORIES).list.get(pl.col("interest"))),
            pl.concat_list(pl.col(SHORT_SCORES).list.get(pl.col("interest"))),
        )
        .with_row_index("query")
    )
    kept = (
        focused.select("query", pl.col(SHORT_CATEGORIES).list.first().alias("focus"), *sequence)
        .explode(*sequence)
        .filter(pl.col(SEQ_CATEGORIES) == pl.col("focus"))
        .group_by("query")
        .agg(*sequence)
    )
    return conform(
        focused.drop(sequence).join(kept, on="query", how="left").sort("query").drop("query")
    )


@dataclass(frozen=True)
class AnnSource:
    """The two-tower's nearest items for the whole profile and, multi-interest, for each of
    the user's ``n_interests`` top short-horizon categories alone (``interest_profiles``):
    one ANN query each, merged per item. Columns: ann_score (best inner product over the
    queries), ann_queries (how many queries retrieved the item)."""

    search: AnnSearch
    n_candidates: int = 100
    n_interests: int = 3
    name: str = "ann"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        n = self.name
        queries = pl.concat(
            [
                users.profiles,
                interest_profiles(users.profiles, self.n_interests).drop("interest"),
            ],
            how="diagonal_relaxed",
        )
        found = self.search.search(queries, self.n_candidates)
        return _per_user(
            found.group_by("user_id", "item_id").agg(
                pl.col("ann_score").max().alias(f"{n}_score"),
                pl.len().cast(pl.Float64).alias(f"{n}_queries"),
            ),
            f"{n}_score",
            self.n_candidates,
        )


@dataclass(frozen=True)
class PopularSource:
    n_candidates: int = 100
    name: str = "popular"

    def candidates(self, users: Users, tables: ItemTables) -> pl.DataFrame:
        popular = tables.popular(self.n_candidates).rename({"popular_score": f"{self.name}_score"})
        return users.profiles.select("user_id").join(popular, how="cross")


def _per_user(frame: pl.DataFrame, score: str, n: int) -> pl.DataFrame:
    """The ``n`` best rows per user by ``score`` (ties: lower item id)."""
    return best_per_key(frame, "user_id", score, "item_id", n)
