"""Baselines and the candidate blend on hand examples and planted structure."""

from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from event_frames import T
from event_frames import frame as _frame

from recsys.evaluation.baselines import (
    ALS,
    CandidateBlend,
    CategoryInterest,
    ItemKNN,
    Popularity,
    Repeat,
)
from recsys.evaluation.errors import EvaluationError
from recsys.ranking.frames import RankingError, top_k_matrix
from recsys.ranking.ranker import LogisticRanker


def frame(rows):
    """rows: (user, item, category, behavior, hours before T)."""
    return _frame(rows, hours_before_t=True)


# Half-life 24h scores of user 1: item 10 = 2^(-1/24) = 0.97, item 20 = 4 * 2^(-2) = 1.0,
# item 30 = 2^(-2/24) = 0.94. Undecayed popularity: 40 (6), 20 (4), then 10, 30, 50 (1 each).
HAND = frame(
    [
        (1, 10, 1, "view", 1),
        (1, 20, 1, "buy", 48),
        (1, 30, 2, "view", 2),
        (2, 40, 2, "cart", 3),
        (2, 40, 2, "cart", 4),
        (2, 50, 3, "view", 5),
        (1, 60, 3, "buy", 0),  # at T: must be ignored by every model fitted as of T
    ]
)


def test_repeat_orders_own_items_by_decayed_score_then_fills_with_popular():
    model = Repeat(half_life_hours=24.0).fit(HAND, T)
    recs = model.recommend(np.array([1, 99]), 6)
    assert recs.tolist() == [[20, 10, 30, 40, 50, -1], [40, 20, 10, 30, 50, -1]]


def test_popularity_plain_and_recent():
    assert Popularity().fit(HAND, T).recommend(np.array([1]), 3).tolist() == [[40, 20, 10]]
    # 24h decay: 40 = 3 * (2^(-3/24) + 2^(-4/24)) = 5.43, 10 = 0.97, 30 = 0.94, 50 = 0.87,
    # 20 = 4 * 2^(-2) = 1.0
    recent = Popularity(half_life_hours=24.0).fit(HAND, T)
    assert recent.recommend(np.array([1, 2]), 5).tolist() == [[40, 20, 10, 30, 50]] * 2


def test_category_interest_prefers_the_users_category():
    # user 1 interest (24h): category 1 = 0.97 + 1.0 beats category 2 = 0.94. Shares in
    # category 1 (336h decay): 20 = 4 * 2^(-48/336) = 3.6 over 10 = 2^(-1/336) = 1.0.
    # Popularity fills the rest: 40 first.
    recs = CategoryInterest(n_categories=1).fit(HAND, T).recommend(np.array([1]), 3)
    assert recs.tolist() == [[20, 10, 40]]


def test_fit_needs_events_before_as_of():
    # events_before moved to recsys.ranking.frames, which raises RankingError.
    with pytest.raises(RankingError, match="no events before"):
        Repeat().fit(HAND, T - timedelta(days=30))
    with pytest.raises(EvaluationError, match="fitted"):
        Repeat().recommend(np.array([1]), 3)


def test_top_k_matrix_pads_and_skips_duplicate_fill():
    scored = pl.DataFrame({"user_id": [5, 5], "item_id": [7, 8], "score": [1.0, 2.0]})
    recs = top_k_matrix(scored, np.array([6, 5]), 4, fill_items=np.array([8, 9]))
    assert recs.tolist() == [[8, 9, -1, -1], [8, 7, 9, -1]]


def planted_blocks(seed=0):
    """Two blocks: users 0-19 touch items 0-19 only, users 20-39 items 100-119 only."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(40):
        base = 0 if user < 20 else 100
        for item in rng.choice(20, size=10, replace=False):
            rows.append((user, base + int(item), base, "view", float(rng.uniform(1, 100))))
    return frame(rows)


@pytest.mark.parametrize(
    "model",
    [
        ItemKNN(exclude_seen=True),
        ALS(factors=4, exclude_seen=True),
    ],
    ids=["item_knn", "als"],
)
def test_cf_recommends_unseen_items_of_the_users_block(model):
    events = planted_blocks()
    users = np.arange(40)
    recs = model.fit(events, T).recommend(users, 5)
    seen = events.group_by("user_id").agg("item_id").sort("user_id")["item_id"].to_list()
    for user, row in zip(users, recs, strict=True):
        assert (row >= 0).all()
        assert not set(row.tolist()) & set(seen[user])
        block = 0 if user < 20 else 100
        assert ((row >= block) & (row < block + 20)).all(), (user, row)


def test_logistic_ranker_learns_a_planted_direction():
    rng = np.random.default_rng(1)
    x = rng.exponential(size=(2000, 3))
    y = (x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=2000) > 0).astype(float)
    ranker = LogisticRanker().fit(x, y)
    assert ranker.weights_[0] > 0 > ranker.weights_[1]
    scores = ranker.score(x)
    assert scores[y == 1].mean() > scores[y == 0].mean()
    with pytest.raises(RankingError, match="both classes"):
        LogisticRanker().fit(x, np.zeros(2000))


def bought_items_come_back():
    """Each day every user views 6 items and buys 1; the next day they view the bought one
    again plus new items. Returns (events, as_of, each user's last purchase before as_of)."""
    rng = np.random.default_rng(2)
    rows, bought = [], {}
    for day in range(6, -1, -1):  # days before T (day 0 = the test day, excluded from fit)
        for user in range(30):
            hour = 24 * day - 1
            items = rng.choice(10_000, size=6, replace=False) + user * 10_000
            rows += [(user, int(i), user, "view", hour - j * 0.1) for j, i in enumerate(items)]
            if user in bought:
                rows.append((user, bought[user], user, "view", hour - 1))
            bought[user] = int(items[0])
            rows.append((user, bought[user], user, "buy", hour - 2))
    events = frame(rows)
    as_of = T - timedelta(days=1)  # day 0 stays unseen
    last_buy = (
        events.filter((pl.col("event_time") < as_of) & (pl.col("behavior") == "buy"))
        .sort("event_time")
        .group_by("user_id")
        .agg(pl.col("item_id").last())
        .sort("user_id")["item_id"]
        .to_numpy()
    )
    return events, as_of, last_buy


def test_blend_learns_that_bought_items_come_back():
    """The blend must put yesterday's purchase first."""
    events, as_of, last_buy = bought_items_come_back()
    blend = CandidateBlend().fit(events, as_of)
    recs = blend.recommend(np.arange(30), 10)
    assert (recs[:, 0] == last_buy).mean() >= 0.9
    assert set(blend.feature_names_) >= {"repeat_score", "transition_rr", "category_present"}
    # The baseline keeps its generators' own features: no category context (that is the
    # learned policy's, in recsys.ranking).
    assert not any(name.startswith("ctx_") for name in blend.feature_names_)
    table = blend.features(np.arange(30))
    np.testing.assert_allclose(
        blend.score(table), blend.ranker.score(table.select(blend.feature_names_).to_numpy())
    )
