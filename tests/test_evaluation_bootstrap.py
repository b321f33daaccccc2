"""Paired bootstrap intervals over users (recsys.evaluation.bootstrap) and evaluate's columns."""

import numpy as np
import polars as pl
import pytest

from recsys.evaluation.bootstrap import (
    bootstrap_interval,
    bootstrap_means,
    interval_frame,
    paired_delta_interval,
    resample_counts,
)
from recsys.evaluation.metrics import evaluate, per_user_values
from recsys.ranking.metrics import GroundTruth

RNG = np.random.default_rng(3)
BASE = RNG.random(400)


def test_resamples_draw_n_users_each_and_are_deterministic():
    chunks = list(resample_counts(50, resamples=250, seed=1))
    assert [c.shape for c in chunks] == [(100, 50), (100, 50), (50, 50)]
    assert all((c.sum(axis=1) == 50).all() for c in chunks)
    again = np.concatenate(list(resample_counts(50, resamples=250, seed=1)))
    assert np.array_equal(np.concatenate(chunks), again)
    other = np.concatenate(list(resample_counts(50, resamples=250, seed=2)))
    assert not np.array_equal(again, other)


def test_interval_brackets_the_mean_and_shrinks_with_more_users():
    low, high = bootstrap_interval(BASE)
    assert low < BASE.mean() < high
    wide = bootstrap_interval(BASE[:40])
    assert wide[1] - wide[0] > high - low
    assert bootstrap_interval(np.full(7, 0.25)) == pytest.approx((0.25, 0.25))
    assert all(np.isnan(bootstrap_interval(np.array([]))))


def test_deterministic_with_the_seed():
    assert bootstrap_interval(BASE, seed=5) == bootstrap_interval(BASE, seed=5)
    assert bootstrap_interval(BASE, seed=5) != bootstrap_interval(BASE, seed=6)
    frame = _frame({"a": BASE, "repeat": BASE[::-1]})
    assert frame.equals(_frame({"a": BASE, "repeat": BASE[::-1]}))


def test_series_of_one_group_are_resampled_on_the_same_users():
    stacked = np.stack([BASE, 2 * BASE], axis=1)
    means = bootstrap_means(stacked, resamples=200)
    assert means.shape == (200, 2)
    assert np.allclose(means[:, 1], 2 * means[:, 0])
    assert np.allclose(means[:, 0], bootstrap_means(BASE, resamples=200))


def test_identical_models_have_a_zero_delta_interval():
    assert paired_delta_interval(BASE, BASE.copy()) == (0.0, 0.0)
    frame = _frame({"model": BASE, "repeat": BASE.copy()})
    row = frame.filter(pl.col("model") == "model").row(0, named=True)
    assert row["best_baseline"] == "repeat"
    assert (row["delta_vs_best_baseline"], row["delta_ci_low"], row["delta_ci_high"]) == (
        0.0,
        0.0,
        0.0,
    )
    # The model's own interval is not zero-width: only the paired difference is.
    assert row["ci_low"] < row["ci_high"]


def test_a_model_better_on_every_user_has_a_positive_delta_interval():
    noisy = RNG.random(400)
    gain = 0.005 + 0.01 * RNG.random(400)  # strictly better on every user, by a small margin
    better = noisy + gain
    low, high = paired_delta_interval(better, noisy)
    assert 0.005 < low < gain.mean() < high
    # Unpaired, the two intervals overlap widely: pairing is what shows the gain.
    assert bootstrap_interval(better)[0] < bootstrap_interval(noisy)[1]
    frame = _frame({"model": better, "repeat": noisy, "popularity": noisy - 0.5})
    row = frame.filter(pl.col("model") == "model").row(0, named=True)
    assert row["best_baseline"] == "repeat"
    assert row["delta_ci_low"] > 0
    assert row["delta_vs_best_baseline"] == pytest.approx(gain.mean())


def test_no_baseline_leaves_the_delta_null():
    row = _frame({"model": BASE}).row(0, named=True)
    assert row["ci_low"] < row["ci_high"]
    assert row["best_baseline"] is None and row["delta_ci_low"] is None


def _frame(series: dict[str, np.ndarray]) -> pl.DataFrame:
    per_user = {(model, "all", "ndcg", 20): values for model, values in series.items()}
    return interval_frame(per_user, baselines=("repeat", "popularity"))


TRUTH = GroundTruth.from_frame(
    pl.DataFrame(
        {"user_id": [1, 1, 2, 3, 3, 4], "item_id": [10, 11, 20, 30, 31, 40]},
    )
)
SHIFT = GroundTruth.from_frame(pl.DataFrame({"user_id": [2, 4], "item_id": [20, 40]}))


def test_evaluate_rows_gain_intervals_from_the_per_user_values():
    recs = {
        "repeat": np.array([[10, 99], [98, 97], [30, 96], [95, 94]]),
        "popularity": np.array([[99, 98], [97, 96], [95, 94], [93, 92]]),
        "model": np.array([[10, 11], [20, 99], [30, 31], [98, 97]]),
    }
    groups = {"all": TRUTH, "shift": SHIFT}
    results = evaluate(recs, TRUTH, groups, ks=(1, 2), catalogue_size=100, intervals=True)
    per_user = per_user_values(recs, TRUTH, groups, ks=(1, 2))
    assert per_user[("model", "shift", "recall", 2)].tolist() == [1.0, 0.0]
    for row in results.iter_rows(named=True):
        if row["metric"] == "coverage":
            assert row["ci_low"] is None and row["best_baseline"] is None
            continue
        values = per_user[(row["model"], row["group"], row["metric"], row["k"])]
        assert row["value"] == pytest.approx(values.mean())
        assert (row["ci_low"], row["ci_high"]) == bootstrap_interval(values)
        assert row["best_baseline"] == "repeat"  # popularity hits nothing
    model = results.filter(
        (pl.col("model") == "model")
        & (pl.col("group") == "all")
        & (pl.col("metric") == "recall")
        & (pl.col("k") == 2)
    ).row(0, named=True)
    gains = per_user[("model", "all", "recall", 2)] - per_user[("repeat", "all", "recall", 2)]
    assert model["delta_vs_best_baseline"] == pytest.approx(gains.mean())
    assert (model["delta_ci_low"], model["delta_ci_high"]) == pytest.approx(
        bootstrap_interval(gains)
    )
    plain = evaluate(recs, TRUTH, groups, ks=(1, 2))  # intervals=False: the six columns
    assert plain.columns == ["model", "group", "metric", "k", "value", "n_users"]
    assert (
        plain["value"].to_list()
        == results.filter(pl.col("metric") != "coverage")["value"].to_list()
    )
