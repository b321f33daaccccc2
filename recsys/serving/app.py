"""The recommendation service: ``create_app(settings)`` returns the FastAPI app.

Endpoints (OpenAPI at /docs and /openapi.json):

- ``GET /v1/users/{user_id}/recommendations?k=20&exclude_purchased=true``: online features ->
  candidate sources (repeat, category interest, ANN when a model is loaded, popular) -> merged,
  scored, filtered, explained. A user the online store does not know gets trending items with
  ``"cold_start": true`` and the reason "trending now".
- ``POST /v1/events[?return_recommendations=true&k=..&exclude_purchased=..]``: one event or
  ``{"events": [...]}`` (at most ``settings.max_batch``, else 413). Each event is validated,
  its category resolved (from the event, else the catalogue), committed to the durable inbox
  (see ``recsys.serving.inbox``), then applied by the ``OnlineUpdater``; the answer reports each
  event's outcome (applied | duplicate | stale | quarantined, as ``recsys.online.updater`` defines
  them) and, when asked, every posted user's refreshed top-k. The updater continues each
  user's history from the build (its state is seeded by ``recsys features materialize``, or
  at startup when it is missing).
- ``GET /v1/users/{user_id}/interests``: short/long top categories, the shift, migrations.
- ``GET /healthz`` (process up), ``GET /readyz`` (online store reachable, catalogue loaded,
  model state: "loaded: ..." or "degraded: no model").

Every request runs on the event loop thread (async handlers, short synchronous work), so the
updater's and Feast's SQLite connections are used by one thread only; the inbox drain has its
own thread and connections. Requests never open the warehouse.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from recsys.online.updater import Event, OnlineUpdater, Outcome, from_us, seed_state, to_us
from recsys.serving.candidates import (
    AnnSource,
    CandidateSource,
    CategoryInterestSource,
    PopularSource,
    RepeatSource,
)
from recsys.serving.catalogue import Catalogue, load_catalogue
from recsys.serving.inbox import EventInbox, InboxDrainer, InboxEvent
from recsys.serving.profile import OnlineProfileReader, UserProfile
from recsys.serving.ranking import LinearBlend, Recommender, Scorer, current_migration
from recsys.serving.settings import ServiceSettings, ServingError
from recsys.warehouse.schema import BEHAVIOR_ALIASES

log = logging.getLogger(__name__)

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
        if value > _utc_now() + MAX_FUTURE:
            raise ValueError(f"event_time {value.isoformat()} is more than a day in the future")
        return value


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)


_EVENTS_BODY = TypeAdapter(EventIn | EventBatch)


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
    source: str = Field(description="the source that scored the item highest")
    sources: list[str]
    reason: str


class MigrationOut(BaseModel):
    from_category_id: int
    to_category_id: int
    origin: Literal["online", "warehouse"]


class RecommendationsOut(BaseModel):
    user_id: int
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


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _json(payload: Any, status_code: int = 200) -> Response:
    """Plain json.dumps of plain types: no per-field encoder pass on the hot paths."""
    body = json.dumps(payload, separators=(",", ":"), default=_default)
    return Response(body, status_code=status_code, media_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _error(status_code: int, message: str) -> Response:
    return _json({"error": message}, status_code)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


@dataclass
class ModelState:
    """What the ANN stage runs on, for /readyz."""

    ann: AnnSource | None
    status: str


def load_model(settings: ServiceSettings, catalogue: Catalogue) -> ModelState:
    """The newest trained model in ``settings.models`` (``recsys.ranking.score.latest_model_dir``) as an
    ``AnnSource``: its query tower on the user's online features, an index over its item
    embeddings. No model there: none ("degraded: no model")."""
    from recsys.ranking.score import ScoreError, latest_model_dir

    try:
        # latest_model_dir reads only ``.models``; settings.models may override the home's.
        directory = latest_model_dir(SimpleNamespace(models=settings.models))
    except ScoreError:
        return ModelState(
            None, f"degraded: no model (no trained query tower/index in {settings.models})"
        )
    # TensorFlow is imported only when a model exists.
    from recsys.models.data import LearnedModelError
    from recsys.models.saved import SavedRetrieval

    one_tensorflow_thread()
    try:
        retrieval = SavedRetrieval(directory)
    except LearnedModelError as exc:
        return ModelState(None, f"degraded: no model ({exc})")
    return ModelState(
        AnnSource(retrieval.query, retrieval.index, catalogue), f"loaded: {retrieval.version}"
    )


def one_tensorflow_thread() -> None:
    """One thread per TensorFlow pool: a request runs the query tower on one row, which more
    threads do not speed up, while their spinning takes the cores the event loop, the inbox
    drain and co-located processes need (measured in benchmarks/serving.py)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process (tests): its pools stay
        log.info("TensorFlow already initialised; keeping its thread pools")


@dataclass
class Service:
    """Everything a request needs, built once at startup."""

    settings: ServiceSettings
    catalogue: Catalogue
    reader: OnlineProfileReader
    updater: OnlineUpdater
    inbox: EventInbox
    drainer: InboxDrainer
    recommender: Recommender
    model: ModelState

    @classmethod
    def start(
        cls,
        settings: ServiceSettings,
        *,
        ann: AnnSource | None,
        scorer: Scorer | None,
        catalogue: Catalogue | None,
    ) -> Service:
        from recsys.features import store as features

        paths = settings.paths
        catalogue = catalogue or load_catalogue(paths, lock_timeout_s=settings.lock_timeout_s)
        online = settings.online or features.OnlineStoreSettings()
        try:
            store = features.feature_store(paths, online)
        except features.FeatureStoreError as exc:
            raise ServingError(str(exc)) from None
        try:
            reader = OnlineProfileReader(store)
        except Exception as exc:
            raise ServingError(
                f"no feature service in {paths.feast} ({type(exc).__name__}): run "
                "`recsys features apply` and `recsys features materialize` first"
            ) from None
        updater = OnlineUpdater.for_store(paths, store, config=settings.features)
        updater.catalogue = catalogue.category_of
        if updater.state.seeded_as_of() is None:  # materialised before seeding existed, or lost
            report = seed_state(
                paths, config=settings.features, lock_timeout_s=settings.lock_timeout_s
            )
            log.info(report.summary())
        model = (
            ModelState(ann, f"loaded: {type(ann.index).__name__} over the injected embeddings")
            if ann is not None
            else load_model(settings, catalogue)
        )
        sources: list[CandidateSource] = [
            RepeatSource(settings.features),
            CategoryInterestSource(catalogue, settings.features, settings.interest_categories),
        ]
        if model.ann is not None:
            sources.append(model.ann)
        sources.append(PopularSource(catalogue))
        recommender = Recommender(
            sources,
            scorer or LinearBlend(),
            catalogue,
            timedelta(hours=settings.migration_window_hours),
        )
        drainer = InboxDrainer(
            paths,
            settings.inbox,
            interval_s=settings.drain_interval_s,
            batch=settings.drain_batch,
            lock_timeout_s=settings.lock_timeout_s,
        )
        service = cls(
            settings,
            catalogue,
            reader,
            updater,
            EventInbox(settings.inbox),
            drainer,
            recommender,
            model,
        )
        service.recover()
        drainer.start()
        return service

    def recover(self) -> None:
        """Replay the inbox's rows through the online updater (a crash may have come between
        the inbox commit and the update; duplicates are dropped), then drain them."""
        rows = self.inbox.pending()
        for _, user, item, category, behavior, event_us, _ in rows:
            self.updater.apply(Event(user, item, behavior, from_us(event_us), category))
        if rows:
            self.drainer.applied = rows[-1][0]
            log.info("replayed %d inbox events", len(rows))
        try:
            self.drainer.drain(self.inbox)
        except Exception as exc:  # the rows stay in the inbox for the background drain
            self.drainer.last_error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        try:
            self.drainer.stop()
        except Exception as exc:
            log.warning("events left in the inbox for the next start: %s", exc)
        self.inbox.close()
        self.updater.close()

    def recommendations(self, user_id: int, k: int, exclude_purchased: bool) -> dict[str, Any]:
        return self.recommender.recommend(
            user_id, self.reader.read(user_id), k=k, exclude_purchased=exclude_purchased
        )

    def post_events(self, events: list[EventIn]) -> tuple[list[dict[str, Any]], dict]:
        """Store and apply the events; returns per-event results and the freshest profile of
        each user (None when nothing of theirs was applied)."""
        now = _utc_now()
        results: list[dict[str, Any] | None] = [None] * len(events)
        stored: list[tuple[int, InboxEvent]] = []
        for index, e in enumerate(events):
            category = e.category_id
            if category is None:
                category = self.catalogue.category_of(e.item_id)
            if category is None:
                reason = f"unknown item {e.item_id} without a category_id (not in item_stats)"
                self.updater.state.quarantine(_event(e, now, None), reason)
                results[index] = _result(index, e, Outcome.QUARANTINED, reason)
                continue
            event_us = to_us(e.event_time or now)
            stored.append(
                (
                    index,
                    InboxEvent(e.user_id, e.item_id, category, e.behavior, event_us, e.session_id),
                )
            )
        profiles: dict[int, UserProfile | None] = {}
        if stored:
            last = self.inbox.append([s for _, s in stored])  # durable from here on
            for index, s in stored:
                self.catalogue.learn(s.item_id, s.category_id)
                update = self.updater.apply(
                    Event(s.user_id, s.item_id, s.behavior, from_us(s.event_us), s.category_id)
                )
                results[index] = _result(index, events[index], update.outcome, update.reason)
                if update.rows is not None:
                    profiles[s.user_id] = self.reader.profile_from_rows(s.user_id, update.rows)
                else:
                    profiles.setdefault(s.user_id, None)
            self.drainer.applied = last
        return [r for r in results if r is not None], profiles


def _event(e: EventIn, now: datetime, category: int | None) -> Event:
    return Event(e.user_id, e.item_id, e.behavior, e.event_time or now, category)


def _result(index: int, e: EventIn, outcome: Outcome, reason: str) -> dict[str, Any]:
    reason = reason or ("applied" if outcome is Outcome.APPLIED else "")
    return {
        "index": index,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "outcome": outcome.value,
        "reason": reason,
    }


def _profile_interests(profile: UserProfile, horizon: str) -> list[dict[str, Any]]:
    pairs = profile.short_interests if horizon == "short" else profile.long_interests
    total = profile.get(f"interest_total_{horizon}", 0.0) or sum(s for _, s in pairs)
    return [{"category_id": c, "score": s, "share": s / total if total else 0.0} for c, s in pairs]


SHIFT_FIELDS = (
    "js_divergence",
    "top_category_short",
    "top_category_long",
    "top_category_changed",
    "novel_category_share",
    "entropy_short",
    "entropy_long",
)


def interests_payload(service: Service, profile: UserProfile) -> dict[str, Any]:
    settings = service.settings
    migrations: list[dict[str, Any]] = []
    online = current_migration(profile, service.catalogue, timedelta(0))
    if online is not None and online.origin == "online":
        migrations.append(
            {
                "from_category_id": online.from_category_id,
                "to_category_id": online.to_category_id,
                "origin": "online",
                "detected_at": profile.as_of,
                "strength": None,
            }
        )
    if profile.as_of is not None:
        since = profile.as_of - timedelta(hours=settings.migration_window_hours)
        migrations.extend(
            {
                "from_category_id": m.from_category_id,
                "to_category_id": m.to_category_id,
                "origin": "warehouse",
                "detected_at": m.detected_at,
                "strength": m.strength,
            }
            for m in service.catalogue.recent_migrations(profile.user_id, since)
        )
    return {
        "user_id": profile.user_id,
        "features_as_of": profile.as_of,
        "short": _profile_interests(profile, "short"),
        "long": _profile_interests(profile, "long"),
        "shift": {name: profile.get(name) for name in SHIFT_FIELDS},
        "migrations": migrations,
    }


def create_app(
    settings: ServiceSettings,
    *,
    ann: AnnSource | None = None,
    scorer: Scorer | None = None,
    catalogue: Catalogue | None = None,
) -> FastAPI:
    """The service app. ``ann`` (a query function + top-k index), ``scorer`` (a trained ranker)
    and ``catalogue`` replace what would otherwise be loaded from the home. Raises
    ``ServingError`` when the home has no warehouse or feature registry; the rest is loaded at
    startup (lifespan)."""
    for needed, remedy in [
        (settings.paths.warehouse, "run `recsys pipeline` (or ingest + build) first"),
        (settings.paths.feast / "registry.db", "run `recsys features materialize` first"),
    ]:
        if not needed.exists():
            raise ServingError(f"{needed} is missing: {remedy}")
    holder: dict[str, Service] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        holder["service"] = Service.start(settings, ann=ann, scorer=scorer, catalogue=catalogue)
        try:
            yield
        finally:
            holder.pop("service").close()

    app = FastAPI(
        title="recsys",
        summary="Recommendations that follow users' changing interests.",
        version="1",
        lifespan=lifespan,
    )
    app.state.holder = holder

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _error(422, _validation_message(list(exc.errors())))

    def k_query() -> Any:
        return Query(
            settings.default_k,
            ge=1,
            le=settings.max_k,
            description=f"items to return (1..{settings.max_k})",
        )

    def exclude_query() -> Any:
        return Query(True, description="drop items the user bought within the recent sequence")

    errors = {422: {"model": ErrorOut}}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorOut}})
    async def readyz() -> Response:
        """Online store reachable, catalogue loaded, model loaded (or "degraded: no model")."""
        service = holder.get("service")
        if service is None:
            return _error(503, "starting")
        try:
            service.reader.ping()
            online = "reachable"
        except Exception as exc:
            online = f"unreachable: {type(exc).__name__}: {exc}"
        body = {
            "status": "ready" if online == "reachable" else "not ready",
            "online_store": online,
            "catalogue": f"loaded: {len(service.catalogue)} items",
            "model": service.model.status,
            "inbox": {
                "pending": len(service.inbox),
                "drained": service.drainer.drained,
                "last_drain_error": service.drainer.last_error,
            },
        }
        return _json(body, 200 if online == "reachable" else 503)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        responses={200: {"model": RecommendationsOut}, **errors},
    )
    async def recommendations(
        user_id: int, k: int = k_query(), exclude_purchased: bool = exclude_query()
    ) -> Response:
        """Top-k items for the user, with scores, sources and reasons."""
        return _json(holder["service"].recommendations(user_id, k, exclude_purchased))

    @app.get(
        "/v1/users/{user_id}/interests",
        responses={200: {"model": InterestsOut}, 404: {"model": ErrorOut}, **errors},
    )
    async def interests(user_id: int) -> Response:
        """Short- and long-horizon top categories, the shift and recent migrations."""
        service = holder["service"]
        profile = service.reader.read(user_id)
        if profile is None:
            return _error(404, f"no online features for user {user_id}")
        return _json(interests_payload(service, profile))

    @app.post(
        "/v1/events",
        responses={
            200: {"model": EventsOut},
            413: {"model": ErrorOut},
            **errors,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/EventIn"},
                                {"$ref": "#/components/schemas/EventBatch"},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(
        request: Request,
        return_recommendations: bool = False,
        k: int = k_query(),
        exclude_purchased: bool = exclude_query(),
    ) -> Response:
        """One event or {"events": [...]}: stored durably, applied online, outcome per event."""
        try:
            raw = json.loads(await request.body())
        except ValueError as exc:
            return _error(422, f"the body is not valid JSON: {exc}")
        batch = raw.get("events") if isinstance(raw, dict) else None
        if isinstance(batch, list) and len(batch) > settings.max_batch:
            return _error(
                413,
                f"a batch of {len(batch)} events is over the limit of {settings.max_batch}; "
                "split it",
            )
        try:
            body = _EVENTS_BODY.validate_python(raw)
        except ValidationError as exc:
            return _error(422, _validation_message(_union_errors(exc, raw)))
        events = body.events if isinstance(body, EventBatch) else [body]
        service = holder["service"]
        results, profiles = service.post_events(events)
        payload: dict[str, Any] = {
            "accepted": sum(r["outcome"] != "quarantined" for r in results),
            "results": results,
        }
        if return_recommendations:
            payload["recommendations"] = [
                service.recommender.recommend(
                    user,
                    profile if profile is not None else service.reader.read(user),
                    k=k,
                    exclude_purchased=exclude_purchased,
                )
                for user, profile in profiles.items()
            ]
        return _json(payload)

    _add_event_schemas(app)
    return app


def _union_errors(exc: ValidationError, raw: Any) -> list[dict[str, Any]]:
    """Errors of the branch the body meant (a batch when it has "events"), not of both."""
    if isinstance(raw, dict) and "events" in raw:
        target: type[BaseModel] = EventBatch
    elif isinstance(raw, dict):
        target = EventIn
    else:
        return [{"loc": (), "msg": 'expected an event object or {"events": [...]}'}]
    try:
        target.model_validate(raw)
    except ValidationError as branch:
        return list(branch.errors())
    return list(exc.errors())


def _add_event_schemas(app: FastAPI) -> None:
    """Put EventIn / EventBatch into the OpenAPI components (the body is parsed by hand so that
    an oversized batch is refused before its events are validated)."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            adapter = TypeAdapter(EventIn | EventBatch).json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(adapter.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["ServiceSettings", "ServingError", "create_app"]
