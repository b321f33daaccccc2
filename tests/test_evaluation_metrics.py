"""Ranking metrics against hand-computed values."""

from math import log2

import numpy as np
import pytest

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.metrics import evaluate
from recsys.ranking.frames import RankingError
from recsys.ranking.metrics import GroundTruth, hits

# user 1: truth {10, 20}; user 2: {30}; user 3: {40, 50, 60}
TRUTH = GroundTruth(
    user_ids=np.array([1, 2, 3]),
    indptr=np.array([0, 2, 3, 6]),
    item_ids=np.array([10, 20, 30, 40, 50, 60]),
)
RECS = np.array([[10, 99, 20], [98, 97, 96], [50, -1, -1]])


def value(frame, group, metric, k):
    row = frame.filter((frame["group"] == group) & (frame["metric"] == metric) & (frame["k"] == k))
    assert row.height == 1
    return row["value"][0]


def test_hits_marks_relevant_positions_and_ignores_padding():
    expected = [[True, False, True], [False, False, False], [True, False, False]]
    assert hits(RECS, TRUTH).tolist() == expected


def test_hand_example_matches_exact_values():
    out = evaluate({"m": RECS}, TRUTH, ks=(1, 3), catalogue_size=10)
    ndcg_u1 = (1 + 1 / log2(4)) / (1 + 1 / log2(3))
    ndcg_u3 = 1 / (1 + 1 / log2(3) + 1 / log2(4))
    expected = {
        ("recall", 3): (1 + 0 + 1 / 3) / 3,
        ("ndcg", 3): (ndcg_u1 + ndcg_u3) / 3,
        ("hit_rate", 3): 2 / 3,
        ("coverage", 3): 7 / 10,
        ("recall", 1): (1 / 2 + 1 / 3) / 3,
        ("ndcg", 1): 2 / 3,
        ("hit_rate", 1): 2 / 3,
        ("coverage", 1): 3 / 10,
    }
    for (metric, k), want in expected.items():
        assert value(out, "all", metric, k) == pytest.approx(want, abs=1e-12), (metric, k)
    assert set(out["n_users"].to_list()) == {3}
    assert set(out.columns) == {"model", "group", "metric", "k", "value", "n_users"}


def test_group_restricts_users_and_truth():
    novel = GroundTruth(np.array([1, 3]), np.array([0, 1, 2]), np.array([99, 60]))
    out = evaluate({"m": RECS}, TRUTH, {"novel": novel}, ks=(3,))
    assert value(out, "novel", "recall", 3) == pytest.approx(0.5, abs=1e-12)  # user 1 hits 99
    assert value(out, "novel", "ndcg", 3) == pytest.approx(1 / log2(3) / 2, abs=1e-12)
    assert out["n_users"].unique().to_list() == [2]


def test_rejects_bad_recommendations():
    # The matrix checks moved to recsys.ranking.metrics, which raises RankingError.
    with pytest.raises(RankingError, match="repeats"):
        evaluate({"m": np.array([[10, 10, 1], [1, 2, 3], [4, 5, 6]])}, TRUTH, ks=(3,))
    with pytest.raises(RankingError, match="shape"):
        evaluate({"m": RECS[:2]}, TRUTH, ks=(3,))
    with pytest.raises(RankingError, match="integer"):
        evaluate({"m": RECS.astype(float)}, TRUTH, ks=(3,))
    with pytest.raises(EvaluationError, match="columns"):
        evaluate({"m": RECS}, TRUTH, ks=(5,))
    outsider = GroundTruth(np.array([7]), np.array([0, 1]), np.array([1]))
    with pytest.raises(EvaluationError, match="outside"):
        evaluate({"m": RECS}, TRUTH, {"x": outsider}, ks=(3,))
