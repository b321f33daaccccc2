"""The service's pure parts: top-k indexes, merging and blending, session interests."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from recsys.config import FeatureConfig
from recsys.serving.ann import ExactIndex, IvfIndex, RecentItemsQuery, top_k_positions
from recsys.serving.candidates import Candidate, category_weights, session_category_shares
from recsys.serving.profile import UserProfile
from recsys.serving.ranking import LinearBlend, merge


def _profile(sequence, interests=()) -> UserProfile:
    items, categories, behaviors, gaps = (list(c) for c in zip(*sequence, strict=True))
    features = {
        "v__seq_item_ids": items,
        "v__seq_category_ids": categories,
        "v__seq_behaviors": behaviors,
        "v__seq_gap_seconds": gaps,
        "v__top_categories_short": [c for c, _ in interests],
        "v__top_scores_short": [s for _, s in interests],
    }
    return UserProfile(user_id=1, as_of=datetime(2026, 1, 1), features=features)


def test_top_k_positions_orders_and_breaks_ties_by_position():
    scores = np.array([0.5, 2.0, 0.5, 3.0, -1.0])
    assert top_k_positions(scores, 3).tolist() == [3, 1, 0]
    assert top_k_positions(scores, 10).tolist() == [3, 1, 0, 2, 4]


def test_ivf_probing_every_list_is_exact_and_few_lists_recall_well():
    rng = np.random.default_rng(1)
    ids = np.arange(5000, dtype=np.int64) * 3
    emb = rng.standard_normal((5000, 16)).astype(np.float32)
    exact = ExactIndex(ids, emb)
    full = IvfIndex.build(ids, emb, n_lists=20, n_probe=20)
    query = rng.standard_normal(16).astype(np.float32)
    want_ids, want_scores = exact.search(query, 10)
    got_ids, got_scores = full.search(query, 10)
    assert got_ids.tolist() == want_ids.tolist()
    assert got_scores == pytest.approx(want_scores, rel=1e-5)
    # Hand check of the exact index against a full sort.
    assert want_ids.tolist() == ids[np.argsort(-(emb @ query), kind="stable")[:10]].tolist()
    probed = IvfIndex.build(ids, emb, n_lists=20, n_probe=5)
    hits = [
        len(set(probed.search(q, 10)[0]) & set(exact.search(q, 10)[0]))
        for q in rng.standard_normal((20, 16)).astype(np.float32)
    ]
    assert np.mean(hits) >= 5  # 1/4 of the lists still finds most of the true top 10


def test_recent_items_query_is_the_decayed_weighted_mean():
    config = FeatureConfig()
    ids = np.array([10, 20, 30])
    emb = np.eye(3, dtype=np.float32)
    query = RecentItemsQuery(ids, emb, config)
    # buy (4) now, view (1) one short half-life ago -> 0.5; item 99 has no embedding.
    profile = _profile([(20, 1, "buy", 0.0), (10, 1, "view", 86400.0), (99, 1, "view", 0.0)])
    want = np.array([0.5, 4.0, 0.0]) / np.linalg.norm([0.5, 4.0])
    assert query(profile) == pytest.approx(want, rel=1e-6)
    assert query(_profile([(99, 1, "view", 0.0)])) is None


def test_merge_normalises_per_source_and_blends_linearly():
    candidates = [
        Candidate(1, 4.0, "repeat", 7),
        Candidate(2, 2.0, "repeat", 7),
        Candidate(2, -1.0, "ann", None),
        Candidate(3, 1.0, "ann", 8),
    ]
    merged = merge(candidates, ["repeat", "ann"])
    assert merged.item_ids == [1, 2, 3]
    assert merged.category_ids == [7, 7, 8]
    # repeat: /4; ann: shift by +1 then /2.
    assert merged.normalised.tolist() == [[1.0, 0.0], [0.5, 0.0], [0.0, 1.0]]
    scores = LinearBlend({"repeat": 1.0, "ann": 0.8})(None, merged)
    assert scores.tolist() == pytest.approx([1.0, 0.5, 0.8])


def test_session_share_follows_the_latest_session_only():
    config = FeatureConfig()  # 30 min session gap; weights view 1, cart 3
    sequence = [
        (1, 5, "view", 0.0),
        (2, 5, "cart", 600.0),
        (3, 6, "view", 1200.0),
        (4, 9, "buy", 1200.0 + 3600.0),  # an hour before: another session
    ]
    profile = _profile(sequence, interests=[(9, 6.0), (6, 2.0)])
    assert session_category_shares(profile, config) == pytest.approx({5: 0.8, 6: 0.2})
    weights = category_weights(profile, config)
    assert weights == pytest.approx({9: 0.375, 6: 0.125 + 0.1, 5: 0.4})
