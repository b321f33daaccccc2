"""The oracles of benchmarks/ceilings.py: they know the test window's categories, so they find
what a model fitted before T cannot (and they are never mistaken for models)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.config import FeatureConfig
from recsys.evaluation.metrics import evaluate
from recsys.evaluation.split import build_evaluation_set, day_split

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
T = datetime(2026, 1, 4)


@pytest.fixture(scope="module")
def ceilings():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling served_quality
    spec = importlib.util.spec_from_file_location("ceilings", BENCHMARKS / "ceilings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.modules.pop("served_quality", None)
    sys.path.remove(str(BENCHMARKS))


def _events() -> pl.DataFrame:
    """User 1 browses category 10 for three days, then on the test day moves to category 20,
    whose items 200 (popular) and 201 others viewed before T; item 300 appears only on the test
    day. User 2 keeps to category 20."""
    rows = []
    for day in range(3):
        at = T - timedelta(days=3 - day)
        rows += [(1, 100 + i, 10, "view", at + timedelta(minutes=i)) for i in range(3)]
        rows += [(2, 200, 20, "view", at), (2, 200, 20, "cart", at), (2, 201, 20, "view", at)]
    rows += [
        (1, 200, 20, "view", T + timedelta(hours=2)),
        (1, 300, 20, "view", T + timedelta(hours=3)),
    ]
    rows += [(2, 201, 20, "view", T + timedelta(hours=1))]
    return pl.DataFrame(
        rows, schema=["user_id", "item_id", "category_id", "behavior", "event_time"], orient="row"
    )


def test_oracle_category_follows_the_test_window_and_baseline_does_not(ceilings):
    config = FeatureConfig()
    events = _events()
    data = build_evaluation_set(events, day_split(T.date()), config=config)
    interest = ceilings.test_interest(data, events, config)
    assert set(interest.filter(user_id=1)["category_id"]) == {20}

    recs = {
        "category_interest": ceilings.CategoryInterest(config)
        .fit(data.train, T)
        .recommend(data.user_ids, 50),
        "oracle": ceilings.oracle_category(data, interest, config, unseen=False),
        "oracle_unseen": ceilings.oracle_category(data, interest, config, unseen=True),
    }
    row = {int(u): i for i, u in enumerate(data.user_ids)}[1]
    assert recs["oracle"][row, 0] == 200  # the moved-to category's most popular item first
    assert 200 not in recs["category_interest"][row, :3]  # the baseline stays in category 10
    assert not set(recs["oracle_unseen"][row]) & {100, 101, 102}  # nothing user 1 touched
    results = evaluate(recs, data.truth, ks=(2,))
    recall = dict(results.filter(metric="recall").select("model", "value").iter_rows())
    assert recall["oracle"] > recall["category_interest"]

    mixes = ceilings.oracle_mix(data, interest, config)
    assert set(mixes) == set(ceilings.MIX)
    assert all(m.shape == (len(data.user_ids), 50) for m in mixes.values())


def test_catalogue_share_counts_only_items_known_before_t(ceilings):
    events = _events()
    data = build_evaluation_set(events, day_split(T.date()), config=FeatureConfig())
    # positives: (1, 200), (1, 300), (2, 201); item 300 is new on the test day
    assert ceilings.catalogue_share(data)["all"] == pytest.approx(2 / 3)
    assert np.isfinite(ceilings.catalogue_share(data)["novel"])


def test_new_category_share_counts_moves_to_untouched_and_associated_categories(ceilings):
    events = _events()
    data = build_evaluation_set(events, day_split(T.date()), config=FeatureConfig())
    graph = pl.DataFrame({"src_category_id": [10], "dst_category_id": [20], "weight": [1.0]})
    shares = ceilings.new_category_share(data, events, graph)
    # user 1's two positives are in category 20, new to them and planted after 10; user 2's is not
    assert shares["all"] == pytest.approx({"new": 2 / 3, "associated": 2 / 3})
    assert "associated" not in ceilings.new_category_share(data, events, None)["all"]


def test_learned_category_learns_a_pattern_that_decayed_interest_misses(ceilings):
    """Users alternate between two categories day by day: the 24 h decayed interest points at
    yesterday's category, the next-day classifier (trained on the days before T) at today's."""
    start = T - timedelta(days=5)
    rows = []
    for user in range(200):
        for day in range(6):
            category = 10 if (user + day) % 2 == 0 else 20
            at = start + timedelta(days=day, hours=10)
            rows += [(user, category * 10 + i, category, "view", at) for i in range(2)]
    events = pl.DataFrame(
        rows, schema=["user_id", "item_id", "category_id", "behavior", "event_time"], orient="row"
    )
    config = FeatureConfig()
    data = build_evaluation_set(events, day_split(T.date()), config=config)
    recs = {
        "category_interest": ceilings.CategoryInterest(config)
        .fit(data.train, T)
        .recommend(data.user_ids, 50),
        "learned_category": ceilings.learned_category(data, events, "UTC", config),
    }
    recall = dict(
        evaluate(recs, data.truth, ks=(2,))
        .filter(metric="recall")
        .select("model", "value")
        .iter_rows()
    )
    assert recall["category_interest"] == 0.0
    assert recall["learned_category"] == 1.0
