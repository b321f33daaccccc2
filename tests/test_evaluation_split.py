"""Time splits, ground truth and user groups on hand-made event logs."""

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from event_frames import T, frame

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.split import (
    TimeSplit,
    build_evaluation_set,
    day_split,
    last_day_split,
)
from recsys.ranking.frames import RankingError
from recsys.ranking.metrics import GroundTruth


def test_shanghai_day_split_is_16h_utc():
    split = day_split(date(2017, 12, 3), tz="Asia/Shanghai")
    assert split == TimeSplit(datetime(2017, 12, 2, 16), datetime(2017, 12, 3, 16))
    assert split.validation() == TimeSplit(datetime(2017, 12, 1, 16), datetime(2017, 12, 2, 16))


def test_last_day_split_uses_the_zone_of_the_latest_event():
    events = frame([(1, 1, 1, "view", -30), (1, 2, 1, "view", 0)])
    events = events.with_columns(event_time=pl.lit(datetime(2017, 12, 2, 17)))  # 01:00 in Shanghai
    assert last_day_split(events, tz="Asia/Shanghai").train_end == datetime(2017, 12, 2, 16)
    assert last_day_split(events).train_end == datetime(2017, 12, 2)


def test_split_rejects_zone_aware_or_reversed_times():
    with pytest.raises(EvaluationError, match="naive"):
        TimeSplit(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2))
    with pytest.raises(EvaluationError, match="not after"):
        TimeSplit(datetime(2026, 1, 2), datetime(2026, 1, 1))


def test_ground_truth_and_groups_on_hand_example():
    events = frame(
        [
            # user 1: train dominant category 200 (one buy = 4 > three views = 3); test -> 100
            (1, 1, 100, "view", -5),
            (1, 1, 100, "view", -4),
            (1, 1, 100, "view", -3),
            (1, 2, 200, "buy", -2),
            (1, 1, 100, "view", 1),
            (1, 3, 100, "cart", 2),
            # user 2: stays on 300; item 6 is new to them
            (2, 5, 300, "view", -1),
            (2, 5, 300, "view", 3),
            (2, 6, 300, "view", 4),
            # user 3: only repeats, so no novel items
            (3, 7, 400, "view", -1),
            (3, 7, 400, "fav", 5),
            (4, 8, 500, "view", -1),  # train only
            (5, 9, 500, "view", 1),  # test only
            (1, 4, 100, "view", 24),  # after the test window
        ]
    )
    data = build_evaluation_set(events, TimeSplit(T, T + timedelta(days=1)))
    assert data.truth.to_frame().rows() == [(1, 1), (1, 3), (2, 5), (2, 6), (3, 7)]
    assert data.groups["shift"].user_ids.tolist() == [1]
    assert data.groups["novel"].to_frame().rows() == [(1, 3), (2, 6)]
    assert data.groups["all"] is data.truth
    assert data.catalogue_size == 5  # items 1, 2, 5, 7, 8
    assert data.train["event_time"].max() < T


def test_no_overlapping_users_is_an_error():
    events = frame([(1, 1, 1, "view", -1), (2, 1, 1, "view", 1)])
    with pytest.raises(EvaluationError, match="both sides"):
        build_evaluation_set(events, TimeSplit(T, T + timedelta(days=1)))


def test_unknown_behaviour_is_an_error():
    events = frame([(1, 1, 1, "click", -1)])
    # The event checks moved to recsys.ranking.frames, which raises RankingError.
    with pytest.raises(RankingError, match="unknown behaviours"):
        build_evaluation_set(events, TimeSplit(T, T + timedelta(days=1)))


def test_ground_truth_rejects_users_without_items():
    with pytest.raises(RankingError, match="without"):
        GroundTruth(np.array([1, 2]), np.array([0, 1, 1]), np.array([5]))
