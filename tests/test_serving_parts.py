"""The service's pure parts: merging and blending, session interests, catalogue lookups."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from recsys.serving.candidates import Candidate, category_weights, session_category_shares
from recsys.serving.ranking import LinearBlend, merge

from recsys.config import FeatureConfig
from recsys.features.read import UserProfile
from recsys.serving.catalogue import Catalogue


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


def test_merge_normalises_per_source_and_blends_linearly():
    candidates = [
        Candidate(1, 4.0, "repeat", 7),
        Candidate(2, 2.0, "repeat", 7),
        Candidate(2, -1.0, "ann", None),
        Candidate(3, 1.0, "ann", 8),
    ]
    candidates.append(Candidate(1, 3.0, "repeat", 7))  # a source's best score for an item counts
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
