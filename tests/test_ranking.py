"""The ranking package on hand-made profiles and item tables: every expected value below is
computed by hand from the fixtures (formulas written out, never read back from the code)."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys.config import FeatureConfig
from recsys.ranking.candidates import candidate_table
from recsys.ranking.frames import RankingError
from recsys.ranking.metrics import GroundTruth
from recsys.ranking.policy import (
    POLICIES,
    SIMPLE_POLICIES,
    Ranking,
    RankingSettings,
    policy_settings,
)
from recsys.ranking.profiles import (
    LONG_CATEGORIES,
    LONG_SCORES,
    LONG_TOTAL,
    SEQ_BEHAVIORS,
    SEQ_CATEGORIES,
    SEQ_GAPS,
    SEQ_ITEMS,
    SHORT_CATEGORIES,
    SHORT_SCORES,
    SHORT_TOTAL,
    profiles_from_features,
)
from recsys.ranking.ranker import GbdtRanker, LogisticRanker, SegmentedRanker, ranker_from_dict
from recsys.ranking.reasons import COLD_START_REASON, category_label, reason_for
from recsys.ranking.select import Validation, choose, gain_lower_bound, pool_recall, validate
from recsys.ranking.sources import (
    AnnSource,
    CategorySource,
    NextCategorySource,
    PopularSource,
    RepeatSource,
    TransitionSource,
    Users,
    interest_profiles,
)
from recsys.ranking.tables import ItemTables
from recsys.warehouse.schema import SOURCES

AS_OF = datetime(2026, 1, 10)
CONFIG = FeatureConfig()  # weights view 1, fav 2, cart 3, buy 4; half-lives 24h and 336h
SHORT_S, LONG_S = 24 * 3600.0, 336 * 3600.0
H = 3600.0


def decayed(weight: float, gap_seconds: float, half_life_seconds: float) -> float:
    return weight * 2.0 ** (-gap_seconds / half_life_seconds)


# --- profiles ---------------------------------------------------------------------------------
# User 1: recent sequence (most recent first) 101 view 1h, 102 buy 2h, 101 cart 10h, 103 view
# 72h, 301 view 96h. Short interest: categories 1, 2, 4 with 6, 2, 1 of a total 10 (shares .6,
# .2, .1). Long interest: 2, 1 with 5, 3 of 10. Interest moved from category 2 (long) to 1.
# User 2: 201 buy 10min, 999 (unknown to the tables, category 7) view 20min, 302 (category 4)
# view 30 days ago; short = long = category 3 (all of it: category 4 fell out of the top list).
# User 3: nothing at all (a profile with empty arrays).
U1_SEQ = [(101, 1, "view", 1 * H), (102, 1, "buy", 2 * H), (101, 1, "cart", 10 * H)]
U1_SEQ += [(103, 2, "view", 72 * H), (301, 4, "view", 96 * H)]
U2_SEQ = [(201, 3, "buy", 600.0), (999, 7, "view", 1200.0), (302, 4, "view", 720 * H)]


def features(seq, short, short_total, long, long_total, shift=None) -> dict:
    out = {
        SEQ_ITEMS: [s[0] for s in seq],
        SEQ_CATEGORIES: [s[1] for s in seq],
        SEQ_BEHAVIORS: [s[2] for s in seq],
        SEQ_GAPS: [s[3] for s in seq],
        SHORT_CATEGORIES: [c for c, _ in short],
        SHORT_SCORES: [s for _, s in short],
        SHORT_TOTAL: short_total,
        LONG_CATEGORIES: [c for c, _ in long],
        LONG_SCORES: [s for _, s in long],
        LONG_TOTAL: long_total,
    }
    if shift is not None:
        out["user_interest_shift__top_category_long"] = shift[0]
        out["user_interest_shift__top_category_short"] = shift[1]
    return out


ROWS = [
    (
        1,
        AS_OF,
        features(U1_SEQ, [(1, 6.0), (2, 2.0), (4, 1.0)], 10.0, [(2, 5.0), (1, 3.0)], 10.0, (2, 1)),
    ),
    (2, AS_OF, features(U2_SEQ, [(3, 2.0)], 2.0, [(3, 2.0)], 2.0, (3, 3))),
    (3, AS_OF, {}),
]
PROFILES = profiles_from_features(ROWS)
USERS = Users.of(PROFILES)

# --- item tables ------------------------------------------------------------------------------
# Long popularity: 301 (10), 104 (9), 105 (8), 101 (7), 401 (6), 102 (5), 201 (4), 302 (3),
# 103 (2), then 60 filler items 1000.. of category 9 below 1.
NAMED = {  # item: (category, pop_long)
    301: (4, 10.0),
    104: (1, 9.0),
    105: (2, 8.0),
    101: (1, 7.0),
    401: (5, 6.0),
    102: (1, 5.0),
    201: (3, 4.0),
    302: (4, 3.0),
    103: (2, 2.0),
}
FILLER = {1000 + i: (9, 0.9 - i / 100) for i in range(60)}
ITEMS = {**NAMED, **FILLER}
POPULAR_ORDER = list(ITEMS)  # by descending pop_long
TABLES = ItemTables(
    as_of=AS_OF,
    items=pl.DataFrame(
        {
            "item_id": list(ITEMS),
            "category_id": [c for c, _ in ITEMS.values()],
            "pop_short": [p / 2 for _, p in ITEMS.values()],
            "pop_long": [p for _, p in ITEMS.values()],
            "trend": [1.0] * len(ITEMS),
        }
    ).sort("item_id"),
    transitions=pl.DataFrame(
        {
            "src_item_id": [101, 101, 102, 103, 201],
            "item_id": [104, 105, 301, 401, 302],
            "p": [0.6, 0.4, 1.0, 1.0, 1.0],
        }
    ),
    category_items=pl.DataFrame(
        {
            "category_id": [1, 1, 1, 2, 2, 3, 4, 4, 5],
            "item_id": [104, 101, 102, 105, 103, 201, 301, 302, 401],
            "share": [0.5, 0.3, 0.2, 0.7, 0.3, 1.0, 0.6, 0.4, 1.0],
        }
    ),
    category_transitions=pl.DataFrame(
        {
            "src_category_id": [1, 1, 2, 3],
            "dst_category_id": [4, 2, 5, 4],
            "p": [0.7, 0.3, 1.0, 1.0],
        }
    ),
)


def by_pair(frame: pl.DataFrame, column: str) -> dict[tuple[int, int], float]:
    return {(u, i): v for u, i, v in frame.select("user_id", "item_id", column).iter_rows()}


def items_of(ranked: pl.DataFrame, user: int) -> list[int]:
    return ranked.filter(pl.col("user_id") == user).sort("rank")["item_id"].to_list()


# --- sources ----------------------------------------------------------------------------------


def test_repeat_source_sums_decayed_behaviour_weights_by_hand():
    got = RepeatSource(CONFIG).candidates(USERS, TABLES).frame()
    expected_short, expected_long = {}, {}
    for user, seq in ((1, U1_SEQ), (2, U2_SEQ)):
        for item, _, behavior, gap in seq:
            w = CONFIG.behavior_weights[behavior]
            key = (user, item)
            expected_short[key] = expected_short.get(key, 0.0) + decayed(w, gap, SHORT_S)
            expected_long[key] = expected_long.get(key, 0.0) + decayed(w, gap, LONG_S)
    assert by_pair(got, "repeat_score") == pytest.approx(expected_short, rel=1e-12)
    assert by_pair(got, "repeat_long") == pytest.approx(expected_long, rel=1e-12)
    # item 101 of user 1: 1 * 2^(-1/24) + 3 * 2^(-10/24), a view and a cart
    assert by_pair(got, "repeat_score")[(1, 101)] == pytest.approx(
        2 ** (-1 / 24) + 3 * 2 ** (-10 / 24)
    )
    row = got.filter((pl.col("user_id") == 1) & (pl.col("item_id") == 101)).row(0, named=True)
    assert (row["repeat_n_view"], row["repeat_n_cart"], row["repeat_n_buy"]) == (1.0, 1.0, 0.0)
    assert row["repeat_recency"] == pytest.approx(1 / (1 + 1))  # nearest event 1h ago
    assert 3 not in got["user_id"].to_list()


def test_transition_source_follows_only_the_latest_distinct_items():
    r101 = decayed(1, 1 * H, SHORT_S) + decayed(3, 10 * H, SHORT_S)
    r102 = decayed(4, 2 * H, SHORT_S)
    r103 = decayed(1, 72 * H, SHORT_S)
    r201 = decayed(4, 600, SHORT_S)
    # n_recent=2: user 1's latest distinct items are 101 and 102, so 103 -> 401 is out.
    two = by_pair(
        TransitionSource(CONFIG, n_recent=2).candidates(USERS, TABLES).frame(), "transition_score"
    )
    assert two == pytest.approx(
        {
            (1, 104): r101 * 0.6,
            (1, 105): r101 * 0.4,
            (1, 301): r102 * 1.0,
            (2, 302): r201 * 1.0,  # 999 has no transitions
        },
        rel=1e-12,
    )
    # n_recent=3 reaches 103 (positions 0, 1, 2 hold 101, 102, 101: distinct items count once).
    three = by_pair(
        TransitionSource(CONFIG, n_recent=3).candidates(USERS, TABLES).frame(), "transition_score"
    )
    assert three == pytest.approx(two | {(1, 401): r103 * 1.0}, rel=1e-12)


def test_category_source_scores_interest_share_times_item_share():
    got = CategorySource(n_categories=2, items_per_category=2).candidates(USERS, TABLES).frame()
    # user 1: categories 1 (.6) and 2 (.2), their two best items; category 4 is third.
    assert by_pair(got, "category_score") == pytest.approx(
        {
            (1, 104): 0.6 * 0.5,
            (1, 101): 0.6 * 0.3,
            (1, 105): 0.2 * 0.7,
            (1, 103): 0.2 * 0.3,
            (2, 201): 1.0 * 1.0,
        },
        rel=1e-12,
    )
    assert by_pair(got, "category_interest_share")[(1, 105)] == pytest.approx(0.2)
    # the raw short-horizon interest: 6 in category 1, 2 in category 2, 2 for user 2's 3
    assert by_pair(got, "category_interest") == {
        (1, 104): 6.0,
        (1, 101): 6.0,
        (1, 105): 2.0,
        (1, 103): 2.0,
        (2, 201): 2.0,
    }
    assert by_pair(got, "category_item_share")[(1, 105)] == pytest.approx(0.7)


def test_next_category_source_skips_own_categories_and_sequence_items():
    got = NextCategorySource(n_categories=2).candidates(USERS, TABLES).frame()
    # user 1: current categories 1 (.6), 2 (.2). From 1: 4 (.7) and 2 (.3), both the user's own
    # top categories (4 is third): skipped; from 2: 5 (1.0), whose item is 401.
    # user 2: current 3 (1.0); from 3: 4 (1.0): 301 (.6), and 302 (.4) which is in the sequence.
    assert by_pair(got, "next_category_score") == pytest.approx(
        {(1, 401): 0.2 * 1.0 * 1.0, (2, 301): 1.0 * 0.6}, rel=1e-12
    )
    assert by_pair(got, "next_category_weight") == pytest.approx({(1, 401): 0.2, (2, 301): 1.0})
    own = {1: {1, 2, 4}, 2: {3}}
    seen = {1: {s[0] for s in U1_SEQ}, 2: {s[0] for s in U2_SEQ}}
    for user, item in got.select("user_id", "item_id").iter_rows():
        assert ITEMS[item][0] not in own[user] and item not in seen[user]


def test_popular_source_gives_everybody_the_same_items():
    got = PopularSource(n_candidates=3).candidates(USERS, TABLES).frame()
    assert by_pair(got, "popular_score") == {
        (u, i): ITEMS[i][1] for u in (1, 2, 3) for i in (301, 104, 105)
    }


class StubAnn:
    """Nearest items for everybody: 105, 401, 1000 with falling scores."""

    def search(self, users: Users, n: int) -> pl.DataFrame:
        items = [105, 401, 1000][:n]
        users = users.user_id.tolist()
        return pl.DataFrame(
            {
                "user_id": [u for u in users for _ in items],
                "item_id": items * len(users),
                "ann_score": [0.9, 0.8, 0.7][:n] * len(users),
            }
        )


def test_ann_source_merges_one_query_per_interest():
    got = AnnSource(StubAnn(), n_candidates=2, n_interests=2).candidates(USERS, TABLES).frame()
    assert by_pair(got, "ann_score") == {
        (u, i): s for u in (1, 2, 3) for i, s in ((105, 0.9), (401, 0.8))
    }
    # the whole profile, plus one query per top short category up to 2: user 1 has 3, user 2
    # one, user 3 none
    queries = {1: 3.0, 2: 2.0, 3: 1.0}
    assert by_pair(got, "ann_queries") == {
        (u, i): queries[u] for u in (1, 2, 3) for i in (105, 401)
    }


def test_interest_profiles_focus_on_one_category_each():
    focused = interest_profiles(PROFILES, 2)
    rows = focused.select(
        "user_id", SHORT_CATEGORIES, SHORT_SCORES, SHORT_TOTAL, SEQ_ITEMS, SEQ_GAPS
    ).rows()
    assert rows == [
        (1, [1], [6.0], 10.0, [101, 102, 101], [1 * H, 2 * H, 10 * H]),
        (1, [2], [2.0], 10.0, [103], [72 * H]),
        (2, [3], [2.0], 2.0, [201], [600.0]),
    ]


# --- candidate table --------------------------------------------------------------------------


def test_candidate_table_ranks_flags_and_category_context():
    sources = [RepeatSource(CONFIG), CategorySource(2, 2), PopularSource(3)]
    table = candidate_table(PROFILES, TABLES, sources, context=True)
    rows = {(r["user_id"], r["item_id"]): r for r in table.iter_rows(named=True)}
    assert table.select("user_id", "item_id").rows() == sorted(rows)  # sorted, unique
    # user 1: repeat by short score: 102 (4 * 2^(-2/24) = 3.78) > 101 (0.97 + 3 * 2^(-10/24)
    # = 3.22) > 103 (2^-3) > 301 (2^-4); category: 104 > 101 > 105 > 103; popular: 301 > 104
    # > 105.
    assert decayed(4, 2 * H, SHORT_S) > decayed(1, H, SHORT_S) + decayed(3, 10 * H, SHORT_S)
    expected_rr = {
        "repeat": {102: 1, 101: 1 / 2, 103: 1 / 3, 301: 1 / 4},
        "category": {104: 1, 101: 1 / 2, 105: 1 / 3, 103: 1 / 4},
        "popular": {301: 1, 104: 1 / 2, 105: 1 / 3},
    }
    user_1 = {item for (user, item) in rows if user == 1}
    assert user_1 == {101, 102, 103, 104, 105, 301}
    for name, ranks in expected_rr.items():
        for item in user_1:
            row = rows[(1, item)]
            assert row[f"{name}_rr"] == pytest.approx(ranks.get(item, 0.0)), (name, item)
            assert row[f"{name}_present"] == (1.0 if item in ranks else 0.0), (name, item)
    # absent sources leave 0 in their columns
    assert rows[(1, 104)]["repeat_score"] == rows[(1, 301)]["category_score"] == 0.0
    # context: short shares 1: .6, 2: .2, 4: .1; long shares 2: .5, 1: .3 (4 is not there)
    for item, short, long in ((104, 0.6, 0.3), (105, 0.2, 0.5), (301, 0.1, 0.0)):
        row = rows[(1, item)]
        assert row["ctx_share_short"] == pytest.approx(short)
        assert row["ctx_share_long"] == pytest.approx(long)
        assert row["ctx_rise"] == pytest.approx(short - long)
    assert rows[(1, 104)]["item_pop_long"] == 9.0 and rows[(1, 104)]["item_pop_short"] == 4.5
    assert rows[(1, 104)]["category_id"] == 1
    # user 2's item 999 is unknown to the tables: its category comes from the sequence
    assert (rows[(2, 999)]["category_id"], rows[(2, 999)]["item_pop_long"]) == (7, 0.0)
    assert rows[(2, 201)]["ctx_share_short"] == rows[(2, 201)]["ctx_share_long"] == 1.0
    # user 3 only gets the popular items, with no context
    assert {item for (user, item) in rows if user == 3} == {301, 104, 105}
    assert rows[(3, 104)]["ctx_share_short"] == 0.0
    without = candidate_table(PROFILES, TABLES, sources, context=False)
    assert not [c for c in without.columns if c.startswith("ctx_")]


# --- policies ---------------------------------------------------------------------------------


def repeat_ranking() -> Ranking:
    return Ranking(POLICIES["repeat"], CONFIG, TABLES)


def test_repeat_policy_orders_own_items_by_long_score_then_popular():
    ranked = repeat_ranking().rank(PROFILES, 9)
    # user 1's own items by long-decayed score: 102 (4 * 2^(-2/336) = 3.98), 101 (2^(-1/336) +
    # 3 * 2^(-10/336) = 3.94), 103 (2^(-72/336)), 301 (2^(-96/336)); then popular.
    long_102 = decayed(4, 2 * H, LONG_S)
    long_101 = decayed(1, H, LONG_S) + decayed(3, 10 * H, LONG_S)
    assert long_102 > long_101
    assert items_of(ranked, 1) == [102, 101, 103, 301, 104, 105, 401, 201, 302]
    assert items_of(ranked, 2) == [201, 999, 302, 301, 104, 105, 101, 401, 102]
    assert items_of(ranked, 3) == POPULAR_ORDER[:9]
    user_1 = ranked.filter(pl.col("user_id") == 1).sort("rank")
    assert user_1["rank"].to_list() == list(range(1, 10))
    assert user_1["score"][:2].to_list() == pytest.approx([long_102, long_101], rel=1e-12)
    assert (user_1["score"][4:] <= 0).all()  # popular fill ranks below every own item
    assert ranked.columns == [
        "user_id",
        "rank",
        "item_id",
        "score",
        "category_id",
        "source",
        "sources",
        "reason",
    ]
    rows = {r["item_id"]: r for r in user_1.iter_rows(named=True)}
    # repeat leads the sources even where the popular rank is better (301 is the most popular)
    assert rows[301]["sources"] == ["repeat", "popular"] and rows[301]["source"] == "repeat"
    assert rows[104]["sources"] == ["popular"]
    # user 1's interest moved from 2 to 1: items of category 1 give the move as their reason
    moved = "you moved from category 2 to 1 this week"
    assert [rows[i]["reason"] for i in (102, 101, 104)] == [moved] * 3
    assert rows[103]["reason"] == "you keep coming back to category 2"
    assert rows[105]["reason"] == "popular in category 2 right now"
    user_2 = ranked.filter(pl.col("user_id") == 2).sort("rank")
    assert user_2["reason"][0] == "you keep coming back to category 3"  # no move for user 2
    assert user_2["category_id"][1] == 7  # 999 keeps its sequence category


def test_exclude_purchased_removes_bought_sequence_items():
    ranked = repeat_ranking().rank(PROFILES, 9, exclude_purchased=True)
    assert items_of(ranked, 1) == [101, 103, 301, 104, 105, 401, 201, 302, 1000]
    assert items_of(ranked, 2) == [999, 302, 301, 104, 105, 101, 401, 102, 103]
    assert items_of(ranked, 3) == POPULAR_ORDER[:9]


POSITIVES = pl.DataFrame({"user_id": [1, 1, 2, 3, 3], "item_id": [102, 104, 302, 105, 401]})


def fitted(policy: str, **settings) -> Ranking:
    ranking = Ranking(POLICIES[policy], CONFIG, TABLES, RankingSettings(**settings), ann=StubAnn())
    return ranking.fit(PROFILES, POSITIVES)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_top_20_is_a_prefix_of_top_50(policy):
    ranking = fitted(policy)
    for exclude in (False, True):
        top_50 = ranking.rank(PROFILES, 50, exclude_purchased=exclude)
        top_20 = ranking.rank(PROFILES, 20, exclude_purchased=exclude)
        assert top_50.group_by("user_id").len()["len"].to_list() == [50] * 3
        assert_frame_equal(top_20, top_50.filter(pl.col("rank") <= 20))


def test_learned_policy_uses_every_source_and_a_segmented_ranker():
    ranking = fitted("learned", next_categories=True)
    assert [s.name for s in ranking.sources()] == list(SOURCES)
    assert "next_category" not in [s.name for s in fitted("learned").sources()]  # off by default
    assert isinstance(ranking.ranker, SegmentedRanker)
    assert {"ctx_share_short", "ann_rr", "next_category_present"} <= set(ranking.feature_names)
    assert [s.name for s in fitted("blend").sources()] == [
        "repeat",
        "transition",
        "category",
        "popular",
    ]
    assert isinstance(fitted("blend").ranker, LogisticRanker)
    without_ann = Ranking(POLICIES["learned"], CONFIG, TABLES)
    assert "ann" not in [s.name for s in without_ann.sources()]


def test_users_from_features_equals_users_of_the_profile_frame():
    flat = Users.from_features(ROWS)
    assert flat.features is not None and flat.moves == USERS.moves
    for part in ("events", "short", "long"):
        for name, want in vars(getattr(USERS, part)).items():
            got = getattr(getattr(flat, part), name)
            np.testing.assert_array_equal(got, want, err_msg=f"{part}.{name}")
            assert got.dtype == want.dtype or name == "behavior", (part, name)
    np.testing.assert_array_equal(flat.user_id, USERS.user_id)
    assert_frame_equal(flat.profiles, PROFILES)  # built on demand


def test_users_from_features_refuses_null_elements():
    row = features(U1_SEQ, [(1, 6.0)], 6.0, [(1, 6.0)], 6.0)
    row[SEQ_ITEMS] = [101, None, 101, 103, 301]
    with pytest.raises(RankingError, match="null elements"):
        Users.from_features([(1, AS_OF, row)])


@pytest.mark.parametrize("policy", ["repeat", "blend"])
def test_popular_items_only_fill_the_simple_policies(policy):
    ranking = fitted(policy)
    assert not any(n.startswith("popular_") for n in ranking.feature_names)
    ranked = ranking.rank(PROFILES, 50)
    for user in (1, 2):
        rows = ranked.filter(pl.col("user_id") == user).sort("rank")
        fill = rows["sources"].list.join(",") == "popular"
        assert fill.any() and not fill.all()
        # every fill item after every ranked one, in popularity order, below the lowest score
        assert fill.arg_true().min() == (~fill).sum()
        filled = rows.filter(fill)["item_id"].to_list()
        assert filled == [i for i in POPULAR_ORDER if i in filled]
        assert rows.filter(fill)["score"].max() <= rows.filter(~fill)["score"].min() - 1 + 1e-12
    assert items_of(ranked, 3) == POPULAR_ORDER[:50]  # no profile events: popular only


@pytest.mark.parametrize("policy", list(POLICIES))
def test_one_user_ranked_alone_gets_the_batch_rows(policy):
    ranking = fitted(policy)
    batch = ranking.rank(PROFILES, 30)
    for row in ROWS:
        alone = ranking.rank_users(Users.from_features([row]), 30)
        assert (
            alone.items()
            == batch.filter(pl.col("user_id") == row[0]).drop("user_id", "rank").to_dicts()
        )
        assert_frame_equal(alone.frame(), batch.filter(pl.col("user_id") == row[0]))


def test_a_learned_policy_must_be_fitted_before_it_ranks():
    with pytest.raises(RankingError, match="blend policy must be fitted"):
        Ranking(POLICIES["blend"], CONFIG, TABLES).rank(PROFILES, 5)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_ranking_round_trips_through_json(policy):
    ranking = fitted(policy, transition_recent=2, categories=2, popular_candidates=40)
    state = json.loads(json.dumps(ranking.to_dict()))
    restored = Ranking.from_dict(state, config=CONFIG, tables=TABLES, ann=StubAnn())
    assert restored.settings == ranking.settings and restored.spec == ranking.spec
    assert restored.feature_names == ranking.feature_names
    for exclude in (False, True):
        assert_frame_equal(
            restored.rank(PROFILES, 30, exclude_purchased=exclude),
            ranking.rank(PROFILES, 30, exclude_purchased=exclude),
        )


def test_unknown_policy_in_a_saved_state_is_refused():
    state = repeat_ranking().to_dict() | {"policy": "bandit"}
    with pytest.raises(RankingError, match="unknown ranking policy 'bandit'"):
        Ranking.from_dict(state, config=CONFIG, tables=TABLES, ann=None)


# --- rankers ----------------------------------------------------------------------------------


def planted(seed: int = 3, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Column 2 is a 0/1 segment; label = x0 - x1 > 0 in segment 1, x1 - x0 > 0 in segment 0."""
    rng = np.random.default_rng(seed)
    x = rng.exponential(size=(n, 3))
    x[:, 2] = rng.integers(0, 2, size=n)
    direction = np.where(x[:, 2] > 0.5, x[:, 0] - x[:, 1], x[:, 1] - x[:, 0])
    y = (direction + rng.normal(scale=0.1, size=n) > 0).astype(float)
    return x, y


def test_logistic_ranker_round_trips_exactly():
    x, y = planted()
    ranker = LogisticRanker(l2=0.01).fit(x, y)
    restored = LogisticRanker.from_dict(json.loads(json.dumps(ranker.to_dict())))
    assert restored.l2 == 0.01
    np.testing.assert_array_equal(restored.score(x), ranker.score(x))
    with pytest.raises(RankingError, match="not a logistic ranker"):
        LogisticRanker.from_dict(ranker.to_dict() | {"kind": "segmented"})
    with pytest.raises(RankingError, match="fitted before it is saved"):
        LogisticRanker().to_dict()


def test_segmented_ranker_scores_each_segment_with_its_own_part_and_round_trips():
    x, y = planted()
    ranker = SegmentedRanker(segment=2).fit(x, y)
    assert set(ranker.parts_) == {"seen", "unseen"}
    seen = x[:, 2] > 0.5
    scores = ranker.score(x)
    np.testing.assert_array_equal(scores[seen], ranker.parts_["seen"].score(x[seen]))
    np.testing.assert_array_equal(scores[~seen], ranker.parts_["unseen"].score(x[~seen]))
    # the planted directions differ by segment, and each part learned its own
    assert ranker.parts_["seen"].weights_[0] > 0 > ranker.parts_["unseen"].weights_[0]
    restored = SegmentedRanker.from_dict(json.loads(json.dumps(ranker.to_dict())))
    np.testing.assert_array_equal(restored.score(x), scores)


def test_segment_without_both_labels_uses_the_pooled_ranker():
    x, y = planted()
    y = np.where(x[:, 2] > 0.5, 1.0, y)  # every "seen" row is positive
    ranker = SegmentedRanker(segment=2).fit(x, y)
    assert set(ranker.parts_) == {"unseen"}
    seen = x[:, 2] > 0.5
    np.testing.assert_array_equal(ranker.score(x)[seen], ranker.pooled_.score(x[seen]))
    restored = SegmentedRanker.from_dict(json.loads(json.dumps(ranker.to_dict())))
    np.testing.assert_array_equal(restored.score(x), ranker.score(x))


def test_lambdarank_ranker_round_trips_exactly():
    x, y = planted()
    groups = np.full(8, 50)  # 8 users of 50 candidates each
    ranker = GbdtRanker(n_estimators=20, min_child_samples=5).fit(x, y, groups)
    scores = ranker.score(x)
    restored = ranker_from_dict(json.loads(json.dumps(ranker.to_dict())))
    assert isinstance(restored, GbdtRanker)
    np.testing.assert_array_equal(restored.score(x), scores)
    with pytest.raises(RankingError, match="row count of every user"):
        GbdtRanker().fit(x, y, np.array([3]))
    with pytest.raises(RankingError, match="unknown ranker kind 'bandit'"):
        ranker_from_dict({"kind": "bandit"})


# --- selection --------------------------------------------------------------------------------


def validations(**ndcg: list[float]) -> dict[str, Validation]:
    return {
        name: Validation({"ndcg_at_20": float(np.mean(v))}, np.asarray(v, np.float64))
        for name, v in ndcg.items()
    }


SURE = [0.3, 0.5, 0.4, 0.6]  # +0.1 for every user against the 0.2-0.5 rows below
LUCKY = [0.9, 0.0, 0.9, 0.0]  # a higher mean than SIMPLE's, but no consistent gain
SIMPLE = [0.2, 0.4, 0.3, 0.5]


@pytest.mark.parametrize(
    ("ndcg", "chosen"),
    [
        ({"repeat": [0.1] * 4, "blend": SIMPLE, "learned": SURE}, "learned"),
        ({"repeat": [0.1] * 4, "blend": SIMPLE, "learned": LUCKY}, "blend"),  # chance, not a win
        ({"repeat": [0.1] * 4, "blend": SIMPLE, "learned": SIMPLE}, "blend"),  # a tie
        ({"repeat": SURE, "blend": SIMPLE, "learned": SURE}, "repeat"),
        ({"repeat": SIMPLE, "blend": SIMPLE, "learned": [0.0] * 4}, "repeat"),  # ties: simpler
        ({"repeat": [0.1] * 4, "blend": SIMPLE}, "blend"),
        ({"repeat": [0.1], "blend": [0.2], "learned": [0.9]}, "blend"),  # one user decides nothing
        ({"learned": SIMPLE, "learned_gbdt": SURE}, "learned_gbdt"),  # only learned ones compete
    ],
)
def test_choose_serves_learned_only_when_it_beats_the_best_simple_policy_beyond_chance(
    ndcg, chosen
):
    assert choose(validations(**ndcg), simple=SIMPLE_POLICIES) == chosen


def test_gain_lower_bound_by_hand():
    gain = np.array([0.1, 0.3, -0.1, 0.1])
    want = gain.mean() - 1.2816 * gain.std(ddof=1) / 2
    assert gain_lower_bound(gain, np.zeros(4)) == pytest.approx(want)
    assert gain_lower_bound(np.ones(1), np.zeros(1)) == float("-inf")


def test_validation_figures_by_hand():
    ranked = pl.DataFrame({"user_id": [1, 1, 2, 9], "rank": [1, 2, 1, 1], "item_id": [5, 6, 7, 8]})
    truth = GroundTruth.from_frame(pl.DataFrame({"user_id": [1, 2], "item_id": [6, 8]}))
    got = validate(ranked, truth)
    # user 1 hits at rank 2 (NDCG 1/log2(3)), user 2 misses; user 9 has no truth
    assert got.figures == pytest.approx(
        {"ndcg_at_20": (1 / np.log2(3)) / 2, "recall_at_50": 0.5, "n_users": 2}
    )
    np.testing.assert_allclose(got.ndcg, [1 / np.log2(3), 0.0])


# --- reasons ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "plain", "with_category"),
    [
        ("repeat", "you showed interest in this item before", "you keep coming back to category 7"),
        (
            "transition",
            "often viewed next after items you just looked at",
            "often viewed next after items you just looked at in category 7",
        ),
        (
            "category",
            "popular in one of your current interests",
            "popular in category 7, one of your current interests",
        ),
        (
            "next_category",
            "where shoppers with your interests go next",
            "shoppers with your interests move on to category 7",
        ),
        ("ann", "similar to items you engaged with", "similar to what you like in category 7"),
        ("popular", "popular right now", "popular in category 7 right now"),
    ],
)
def test_reason_for_each_source(source, plain, with_category):
    assert reason_for(source) == plain
    assert reason_for(source, category=7) == with_category
    assert reason_for(source, category=np.int64(7)) == with_category


def test_every_source_has_a_reason():
    # one distinct plain reason per source of the vocabulary
    assert len({reason_for(s) for s in SOURCES}) == len(SOURCES)
    assert COLD_START_REASON == "trending now"


@pytest.mark.parametrize(
    ("moved_from", "category", "reason"),
    [
        (123, 456, "you moved from category 123 to 456 this week"),
        ("shoes", "bags", "you moved from shoes to bags this week"),
        (123, "bags", "you moved from category 123 to bags this week"),
        ("shoes", 456, "you moved from shoes to category 456 this week"),
    ],
)
def test_reason_for_a_move_whatever_the_source(moved_from, category, reason):
    for source in SOURCES:
        assert reason_for(source, category=category, moved_from=moved_from) == reason


@pytest.mark.parametrize(
    ("source", "kwargs", "message"),
    [
        ("bandit", {}, "source must be one of repeat, transition, .*got 'bandit'"),
        ("ann", {"moved_from": 1}, "a move needs the category it went to"),
        ("popular", {"category": " "}, "a category name must not be empty"),
    ],
)
def test_reason_for_rejects_bad_arguments(source, kwargs, message):
    with pytest.raises(RankingError, match=message):
        reason_for(source, **kwargs)


def test_category_label():
    assert (category_label(5), category_label(" tea ")) == ("category 5", "tea")


def test_pool_recall_counts_positives_and_novel_positives_per_source():
    table = candidate_table(PROFILES, TABLES, fitted("blend").sources(), context=False)
    repeat = set(table.filter(pl.col("repeat_present") > 0)["item_id"].to_list())
    proposed = set(table.filter(pl.col("user_id") == 1)["item_id"].to_list())
    own = sorted(repeat & proposed)
    fresh = sorted(proposed - repeat)
    positives = pl.DataFrame(
        {"user_id": [1, 1, 1, 9], "item_id": [own[0], fresh[0], 999_999, own[0]]}
    )  # user 9 has no profile: left out
    pool = pool_recall(table, positives, PROFILES)
    assert pool["any"] == {
        "positives": 2,
        "novel_positives": 1,
        "of_positives": 3,
        "of_novel": 2,
    }
    assert pool["repeat"]["positives"] == 1 and pool["repeat"]["novel_positives"] == 0


def test_each_policy_ranks_with_its_own_sizes_over_the_base_settings():
    base = RankingSettings(ann_candidates=7, categories=3)
    gbdt = policy_settings("learned_gbdt", base)
    assert (gbdt.categories, gbdt.items_per_category, gbdt.ann_candidates) == (20, 50, 7)
    for name in ("repeat", "blend", "learned"):
        assert policy_settings(name, base) == base
    # the wider pool reaches the category source the policy builds
    ranking = Ranking(POLICIES["learned_gbdt"], CONFIG, TABLES, gbdt, ann=StubAnn())
    category = next(s for s in ranking.sources() if s.name == "category")
    assert (category.n_categories, category.items_per_category) == (20, 50)
