"""The service's pure parts: the ranking it serves (candidate merge, the repeat policy, a
learned ranker's blend, the category source), migrations and catalogue lookups."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys.config import FeatureConfig
from recsys.features.read import UserProfile
from recsys.ranking.candidates import candidate_table
from recsys.ranking.policy import POLICIES, Ranking
from recsys.ranking.profiles import (
    SEQ_BEHAVIORS,
    SEQ_CATEGORIES,
    SEQ_GAPS,
    SEQ_ITEMS,
    SHORT_CATEGORIES,
    SHORT_SCORES,
    SHORT_TOTAL,
    profiles_from_features,
)
from recsys.ranking.ranker import LogisticRanker
from recsys.ranking.score import cold_start
from recsys.ranking.sources import CategorySource, Rows, Users
from recsys.ranking.tables import ItemTables
from recsys.serving.catalogue import Catalogue, Migration
from recsys.serving.service import current_migration

T = datetime(2026, 1, 1)
CONFIG = FeatureConfig()  # half-lives 24 h / 14 days; weights view 1, fav 2, cart 3, buy 4


def _tables() -> ItemTables:
    return ItemTables(
        as_of=T,
        items=pl.DataFrame(
            {
                "item_id": [10, 11, 12, 13, 14],
                "category_id": [1, 1, 2, 2, 3],
                "pop_short": [1.0, 1.0, 1.0, 1.0, 1.0],
                "pop_long": [5.0, 4.0, 3.0, 2.0, 1.0],
                "trend": [1.0] * 5,
            }
        ),
        transitions=pl.DataFrame(
            schema={"src_item_id": pl.Int64, "item_id": pl.Int64, "p": pl.Float64}
        ),
        category_items=pl.DataFrame(
            {
                "category_id": [1, 1, 2, 2, 3],
                "item_id": [10, 11, 12, 13, 14],
                "share": [0.6, 0.4, 0.75, 0.25, 1.0],
            }
        ),
        category_transitions=pl.DataFrame(
            schema={"src_category_id": pl.Int64, "dst_category_id": pl.Int64, "p": pl.Float64}
        ),
    )


def _profiles(sequence, interests=(), user: int = 1) -> pl.DataFrame:
    """One profile from (item, category, behavior, gap_seconds) events, most recent first."""
    items, categories, behaviors, gaps = (list(c) for c in zip(*sequence, strict=True))
    features = {
        SEQ_ITEMS: items,
        SEQ_CATEGORIES: categories,
        SEQ_BEHAVIORS: behaviors,
        SEQ_GAPS: gaps,
        SHORT_CATEGORIES: [c for c, _ in interests],
        SHORT_SCORES: [s for _, s in interests],
        SHORT_TOTAL: sum(s for _, s in interests),
    }
    return profiles_from_features([(user, T, features)])


@dataclass(frozen=True)
class FixedSource:
    name: str
    rows: list[tuple[int, float]]

    def candidates(self, users: Users, tables: ItemTables) -> Rows:
        items, scores = (np.array(c) for c in zip(*sorted(self.rows), strict=True))
        n_users = len(users.user_id)
        return Rows(
            np.repeat(users.user_id, len(items)),
            np.tile(items, n_users),
            {f"{self.name}_score": np.tile(scores.astype(np.float64), n_users)},
        )


def test_candidates_are_merged_with_a_reciprocal_rank_and_presence_per_source():
    profiles = _profiles([(99, 7, "view", 0.0)])
    table = candidate_table(
        profiles,
        _tables(),
        [
            FixedSource("repeat", [(10, 4.0), (12, 2.0)]),
            FixedSource("ann", [(12, -1.0), (99, 1.0)]),
        ],
        context=False,
    )
    assert table["item_id"].to_list() == [10, 12, 99]
    # Items the tables do not know keep the category their events carried.
    assert table["category_id"].to_list() == [1, 2, 7]
    assert table["repeat_rr"].to_list() == [1.0, 0.5, 0.0]
    assert table["ann_rr"].to_list() == [0.0, 0.5, 1.0]
    assert table["repeat_present"].to_list() == [1.0, 1.0, 0.0]
    assert table["ann_score"].to_list() == [0.0, -1.0, 1.0]  # absent: 0
    assert table["item_pop_long"].to_list() == [5.0, 3.0, 0.0]


def test_the_repeat_policy_ranks_own_items_by_long_score_then_popular_items():
    hour = 3600.0
    profiles = _profiles([(12, 2, "view", 0.0), (12, 2, "cart", hour), (10, 1, "buy", 2 * hour)])
    ranking = Ranking(POLICIES["repeat"], CONFIG, _tables())
    ranked = ranking.rank(profiles, 4)
    decay = 2.0 ** (-1 / (14 * 24))  # one hour at the long half-life
    assert ranked["item_id"].to_list() == [12, 10, 11, 13]  # 1 + 3 d > 4 d^2, then popular
    # Popular only fills: below the lowest own item, lowest - 2 + its reciprocal rank (2nd, 4th).
    lowest = 4 * decay**2
    assert ranked["score"].to_list() == pytest.approx(
        [1 + 3 * decay, lowest, lowest - 2 + 1 / 2, lowest - 2 + 1 / 4]
    )
    assert ranked["rank"].to_list() == [1, 2, 3, 4]
    assert ranked["source"].to_list() == ["repeat", "repeat", "popular", "popular"]
    assert ranked["sources"].to_list()[1] == ["repeat", "popular"]  # repeat leads when present
    assert ranked["reason"].to_list()[0] == "you keep coming back to category 2"
    excluded = ranking.rank(profiles, 4, exclude_purchased=True)
    assert excluded["item_id"].to_list() == [12, 11, 13, 14]  # bought item 10 left out
    assert excluded["rank"].to_list() == [1, 2, 3, 4]


def test_a_learned_ranker_blends_the_named_features_and_round_trips():
    """The blend policy scores candidates with its ranker over ``feature_names`` (features a
    source did not propose are 0) and puts items only the popular source proposed below them;
    saved as JSON it ranks the same."""
    weights = {"repeat_score": 2.0, "category_score": 10.0, "category_interest": 1.0}
    ranker = LogisticRanker.from_dict(
        {
            "kind": "logistic",
            "l2": 0.0,
            "mean": [0.0] * 3,
            "scale": [1.0] * 3,
            "weights": [*weights.values(), -1.0],
        }
    )
    ranking = Ranking(
        POLICIES["blend"], CONFIG, _tables(), ranker=ranker, feature_names=tuple(weights)
    )
    profiles = _profiles([(14, 3, "view", 0.0)], interests=[(2, 3.0), (3, 1.0)])
    ranked = ranking.rank(profiles, 5)
    table = ranking.candidates(profiles)
    logits = (
        sum(w * np.log1p(table[name].to_numpy()) for name, w in weights.items()) - 1.0
    )  # features are >= 0: sign(x) log1p(|x|) = log1p(x)
    filler = (
        table["repeat_present"] + table["transition_present"] + table["category_present"]
    ).to_numpy() == 0
    assert filler.any() and (~filler).any()
    expected = np.where(filler, logits[~filler].min() - 2 + table["popular_rr"].to_numpy(), logits)
    order = np.lexsort((table["item_id"].to_numpy(), -expected))
    assert ranked["item_id"].to_list() == table["item_id"].to_numpy()[order].tolist()
    assert ranked["score"].to_list() == pytest.approx(expected[order].tolist())
    again = Ranking.from_dict(ranking.to_dict(), config=CONFIG, tables=_tables(), ann=None)
    assert again.rank(profiles, 5).equals(ranked)


def test_the_category_source_weighs_item_shares_by_short_interest_shares():
    profiles = _profiles([(14, 3, "view", 0.0)], interests=[(2, 3.0), (3, 1.0)])
    ranking = Ranking(POLICIES["blend"], CONFIG, _tables())
    ranking.sources = lambda: [CategorySource()]  # the category source alone
    got = ranking.candidates(profiles)
    assert got["item_id"].to_list() == [12, 13, 14]
    assert got["category_score"].to_list() == pytest.approx([0.75 * 0.75, 0.75 * 0.25, 0.25])


def test_cold_start_users_get_the_popular_items_as_trending():
    rows = cold_start(Ranking(POLICIES["repeat"], CONFIG, _tables()), np.array([5, 6]), 2)
    assert rows["user_id"].to_list() == [5, 5, 6, 6]
    assert rows["item_id"].to_list() == [10, 11, 10, 11]
    assert rows["score"].to_list() == [5.0, 4.0, 5.0, 4.0]
    assert set(rows["reason"]) == {"trending now"} and set(rows["source"]) == {"popular"}


def _user(features: dict) -> UserProfile:
    return UserProfile(user_id=1, as_of=T, features={f"v__{k}": v for k, v in features.items()})


def test_the_current_migration_is_the_online_shift_else_a_recent_warehouse_one():
    moved = Migration(4, 5, T - timedelta(days=2), 0.8)
    catalogue = Catalogue(np.array([1]), np.array([1]), np.array([1.0]), migrations={1: [moved]})
    online = current_migration(
        _user({"top_category_changed": True, "top_category_long": 7, "top_category_short": 8}),
        catalogue,
        timedelta(days=7),
    )
    assert (online.from_category_id, online.to_category_id, online.origin) == (7, 8, "online")
    steady = _user({"top_category_changed": False})
    warehouse = current_migration(steady, catalogue, timedelta(days=7))
    assert (warehouse.from_category_id, warehouse.to_category_id) == (4, 5)
    assert warehouse.origin == "warehouse" and warehouse.detected_at == moved.detected_at
    assert current_migration(steady, catalogue, timedelta(days=1)) is None


def test_catalogue_categories_of_known_learned_and_unknown_items():
    catalogue = Catalogue(np.array([30, 10, 20]), np.array([3, 1, 2]), np.array([0.3, 0.1, 0.2]))
    catalogue.learn(25, 9)
    catalogue.learn(10, 99)  # known items keep their warehouse category
    items = np.array([20, 5, 25, 30, 10, 99], dtype=np.int64)
    assert catalogue.categories_of(items) == [2, None, 9, 3, 1, None]
    assert [catalogue.category_of(i) for i in items.tolist()] == [2, None, 9, 3, 1, None]
    empty = Catalogue(np.array([], np.int64), np.array([], np.int64), np.array([]))
    empty.learn(4, 8)
    assert empty.categories_of(np.array([4, 5], dtype=np.int64)) == [8, None]
