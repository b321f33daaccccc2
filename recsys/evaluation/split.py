"""Global time splits and the per-user ground truth an offline evaluation scores against.

A split is one instant T: everything a model or feature sees happened strictly before T; the test
window is [T, T + window). Times are naive UTC, like ``events.event_time``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.evaluation.errors import EvaluationError
from recsys.ranking.frames import behavior_weight, check_events
from recsys.ranking.metrics import GroundTruth

GROUP_ALL = "all"
GROUP_SHIFT = "shift"
GROUP_NOVEL = "novel"


@dataclass(frozen=True)
class TimeSplit:
    """Train = events before ``train_end``; test = events in [``train_end``, ``test_end``)."""

    train_end: datetime
    test_end: datetime

    def __post_init__(self) -> None:
        if self.train_end.tzinfo is not None or self.test_end.tzinfo is not None:
            raise EvaluationError("TimeSplit times must be naive UTC (use day_split for zones)")
        if self.test_end <= self.train_end:
            raise EvaluationError(f"test_end {self.test_end} is not after {self.train_end}")

    @property
    def window(self) -> timedelta:
        return self.test_end - self.train_end

    def train(self, events: pl.DataFrame) -> pl.DataFrame:
        """Events strictly before ``train_end``."""
        return events.filter(pl.col("event_time") < self.train_end)

    def test(self, events: pl.DataFrame) -> pl.DataFrame:
        """Events in the test window."""
        return events.filter(
            (pl.col("event_time") >= self.train_end) & (pl.col("event_time") < self.test_end)
        )

    def validation(self) -> TimeSplit:
        """The same-sized window just before this one: for choosing settings, never the test."""
        return TimeSplit(self.train_end - self.window, self.train_end)


def day_split(day: date, *, tz: str = "UTC", days: int = 1) -> TimeSplit:
    """Test window = ``days`` calendar days starting at midnight of ``day`` in zone ``tz``."""
    zone = ZoneInfo(tz)
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    # Adding days to the date (not 24h to the instant) keeps midnight across DST changes.
    end = datetime.combine(day + timedelta(days=days), datetime.min.time(), tzinfo=zone)
    return TimeSplit(_naive_utc(start), _naive_utc(end))


def last_day_split(events: pl.DataFrame, *, tz: str = "UTC") -> TimeSplit:
    """Test = the calendar day (in ``tz``) of the latest event; train = everything before it."""
    if events.is_empty():
        raise EvaluationError("cannot split an empty event table")
    last = events["event_time"].max()
    return day_split(last.replace(tzinfo=UTC).astimezone(ZoneInfo(tz)).date(), tz=tz)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class EvaluationSet:
    """What one split evaluates: the training events, the test users and their user groups.

    ``truth`` is the "all" group (rows define the order of every recommendation matrix);
    ``groups`` maps a group name to its ground truth, a subset of users and items of ``truth``.
    """

    split: TimeSplit
    train: pl.DataFrame
    truth: GroundTruth
    groups: Mapping[str, GroundTruth] = field(default_factory=dict)
    catalogue_size: int = 0

    @property
    def user_ids(self) -> np.ndarray:
        return self.truth.user_ids


def build_evaluation_set(
    events: pl.DataFrame, split: TimeSplit, *, config: FeatureConfig = FeatureConfig()
) -> EvaluationSet:
    """Ground truth and user groups of ``split`` from canonical events.

    Test users have events on both sides of ``train_end``. Their ground truth is the distinct items
    of their test-window events (any behaviour). Groups: "all"; "shift" (dominant category by
    behaviour-weighted count differs between the training and the test window); "novel" (truth
    restricted to items the user never touched before ``train_end``; users with none drop out).
    The catalogue is the distinct items seen in training.
    """
    check_events(events)
    train, test = split.train(events), split.test(events)
    users = train.select("user_id").unique().join(test.select("user_id").unique(), on="user_id")
    test = test.join(users, on="user_id")
    if test.is_empty():
        raise EvaluationError(f"no user has events on both sides of {split.train_end}")
    truth = GroundTruth.from_frame(test)

    shifted = _dominant_category(train, config).join(
        _dominant_category(test, config), on="user_id", suffix="_test"
    )
    shift_users = np.sort(
        shifted.filter(pl.col("category_id") != pl.col("category_id_test"))["user_id"].to_numpy()
    )
    seen = train.select("user_id", "item_id").unique()
    novel = truth.to_frame().join(seen, on=["user_id", "item_id"], how="anti")

    groups = {GROUP_ALL: truth, GROUP_SHIFT: truth.select_users(shift_users.astype(np.int64))}
    if not novel.is_empty():
        groups[GROUP_NOVEL] = truth.filter_pairs(novel)
    return EvaluationSet(
        split=split,
        train=train,
        truth=truth,
        groups=groups,
        catalogue_size=train["item_id"].n_unique(),
    )


def _dominant_category(events: pl.DataFrame, config: FeatureConfig) -> pl.DataFrame:
    """(user_id, category_id): each user's top category by weighted count; ties -> lowest id."""
    return (
        events.group_by("user_id", "category_id")
        .agg(behavior_weight(config).sum().alias("w"))
        .sort(["user_id", "w", "category_id"], descending=[False, True, False])
        .group_by("user_id", maintain_order=True)
        .first()
        .select("user_id", "category_id")
    )
