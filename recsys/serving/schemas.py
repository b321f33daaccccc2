"""The service's request and response bodies (pydantic), as the OpenAPI schema shows them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from recsys.warehouse.schema import BEHAVIOR_ALIASES, SOURCES

MIN_EVENT_TIME = datetime(1995, 1, 1)
MAX_FUTURE = timedelta(days=1)


class EventIn(BaseModel):
    """One behaviour event (the canonical schema). ``category_id`` may be left out for an item
    the catalogue knows; ``event_time`` defaults to now (naive times are UTC)."""

    model_config = ConfigDict(extra="forbid")

    user_id: int
    item_id: int
    category_id: int | None = None
    behavior: str = Field(description="view | cart | fav | buy (aliases such as pv accepted)")
    event_time: datetime | None = None
    session_id: str | None = None

    @field_validator("behavior")
    @classmethod
    def _canonical_behavior(cls, value: str) -> str:
        canonical = BEHAVIOR_ALIASES.get(value.strip().lower())
        if canonical is None:
            raise ValueError(f"unknown behavior {value!r}; expected view, cart, fav or buy")
        return canonical

    @field_validator("event_time")
    @classmethod
    def _plausible_time(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if value < MIN_EVENT_TIME:
            raise ValueError(f"event_time {value.isoformat()} is before 1995")
        if value > utc_now() + MAX_FUTURE:
            raise ValueError(f"event_time {value.isoformat()} is more than a day in the future")
        return value


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)


EVENTS_BODY = TypeAdapter(EventIn | EventBatch)


class EventResult(BaseModel):
    index: int
    user_id: int
    item_id: int
    outcome: Literal["applied", "duplicate", "stale", "quarantined"]
    reason: str


class RecommendedItem(BaseModel):
    item_id: int
    score: float
    category_id: int | None
    source: str = Field(description=f"the item's first source, one of {', '.join(SOURCES)}")
    sources: list[str] = Field(description="every source that proposed the item, first first")
    reason: str


class MigrationOut(BaseModel):
    from_category_id: int
    to_category_id: int
    origin: Literal["online", "warehouse"]


class RecommendationsOut(BaseModel):
    user_id: int
    model_version: str = Field(description="the model folder that ranked, or none")
    ranker: str = Field(description="the ranking policy served (chosen on validation)")
    cold_start: bool
    features_as_of: datetime | None
    migration: MigrationOut | None
    items: list[RecommendedItem]


class EventsOut(BaseModel):
    accepted: int = Field(description="events durably stored (applied, duplicate or stale)")
    results: list[EventResult]
    recommendations: list[RecommendationsOut] | None = None


class CategoryScore(BaseModel):
    category_id: int
    score: float
    share: float


class MigrationDetail(MigrationOut):
    detected_at: datetime | None
    strength: float | None


class InterestsOut(BaseModel):
    user_id: int
    features_as_of: datetime | None
    short: list[CategoryScore]
    long: list[CategoryScore]
    shift: dict[str, Any]
    migrations: list[MigrationDetail]


class ErrorOut(BaseModel):
    error: str


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
