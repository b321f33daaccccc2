"""The service's request and response bodies (pydantic), as the OpenAPI schema shows them.

Ids are as in the source (``recsys.warehouse.ids``): integers, or strings such as SKU codes;
the service turns them into the warehouse's keys and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, field_validator

from recsys.warehouse.ids import MAX_ID_LENGTH
from recsys.warehouse.schema import BEHAVIOR_ALIASES, SOURCES

MIN_EVENT_TIME = datetime(1995, 1, 1)
MAX_FUTURE = timedelta(days=1)
# Ids are BIGINT in the warehouse and int64 in Feast and SQLite.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT = 128


Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


def _source_id(value: Any) -> int | str:
    """An id as in the source: an int64, or a string (``recsys.warehouse.ids``)."""
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_ID_LENGTH:
            raise ValueError(f"an id string has 1 to {MAX_ID_LENGTH} characters")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value > INT64_MAX:
            raise ValueError(f"Input should be less than or equal to {INT64_MAX}")
        if value < INT64_MIN:
            raise ValueError(f"Input should be greater than or equal to {INT64_MIN}")
        return value
    raise ValueError("an id is an integer or a string")


# An id as the source wrote it: an integer (int64), or a string of 1 to 256 characters (a SKU
# code, a UUID, a category name). Responses show ids the same way.
SourceId = Annotated[int | str, PlainValidator(_source_id, json_schema_input_type=int | str)]


class EventIn(BaseModel):
    """One behaviour event (the canonical schema). ``category_id`` may be left out for an item
    the catalogue knows; ``event_time`` defaults to now (naive times are UTC). A client that
    retries should send an ``event_id``: the service stores an event id once (see
    ``recsys.serving.inbox``)."""

    model_config = ConfigDict(extra="forbid")

    user_id: SourceId
    item_id: SourceId
    category_id: SourceId | None = None
    behavior: str = Field(
        max_length=16, description="view | cart | fav | buy (aliases such as pv accepted)"
    )
    event_time: datetime | None = None
    # str validation refuses lone surrogates (JSON's \\u escapes can spell them): UTF-8
    # cannot store them.
    session_id: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    event_id: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)] | None = Field(
        None,
        description="the client's id of the event: a retry with the same id within the "
        "retention (7 days by default) is reported as a duplicate and stored once",
    )

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
            try:
                value = value.astimezone(UTC).replace(tzinfo=None)
            except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
                raise ValueError(f"event_time {value.isoformat()} is out of range") from None
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
    user_id: int | str
    item_id: int | str
    event_id: str | None
    outcome: Literal["applied", "duplicate", "stale", "quarantined", "stored"] = Field(
        description="applied | duplicate | stale | quarantined as recsys.online.updater defines "
        "them; stored: durably stored but not applied online (the reason says why), it reaches "
        "the online features with the next build"
    )
    reason: str


class RecommendedItem(BaseModel):
    item_id: int | str
    score: float
    category_id: int | str | None
    source: str = Field(description=f"the item's first source, one of {', '.join(SOURCES)}")
    sources: list[str] = Field(description="every source that proposed the item, first first")
    reason: str


class MigrationOut(BaseModel):
    from_category_id: int | str
    to_category_id: int | str
    origin: Literal["online", "warehouse"]


class RecommendationsOut(BaseModel):
    user_id: int | str
    model_version: str = Field(description="the model folder that ranked, or none")
    ranker: str = Field(description="the ranking policy served (chosen on validation)")
    cold_start: bool
    features_as_of: datetime | None
    migration: MigrationOut | None
    items: list[RecommendedItem]


class EventsOut(BaseModel):
    accepted: int = Field(description="events durably stored (all but the quarantined)")
    results: list[EventResult]
    recommendations: list[RecommendationsOut] | None = None
    recommendations_error: str | None = Field(
        None, description="why the asked-for recommendations are missing (the events are stored)"
    )


class CategoryScore(BaseModel):
    category_id: int | str
    score: float
    share: float


class MigrationDetail(MigrationOut):
    detected_at: datetime | None
    strength: float | None


class InterestsOut(BaseModel):
    user_id: int | str
    features_as_of: datetime | None
    short: list[CategoryScore]
    long: list[CategoryScore]
    shift: dict[str, Any]
    migrations: list[MigrationDetail]


class ErrorOut(BaseModel):
    error: str


class ServerErrorOut(ErrorOut):
    request_id: str = Field(description="the X-Request-ID under which the server logged it")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
