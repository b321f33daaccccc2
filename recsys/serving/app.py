"""The recommendation service: ``create_app(settings)`` returns the FastAPI app.

Endpoints (OpenAPI at /docs and /openapi.json):

- ``GET /v1/users/{user_id}/recommendations?k=20&exclude_purchased=false``: the user's online
  profile ranked by ``recsys.ranking`` with the served model's policy (``recsys score`` runs
  the same code); the answer names the ``model_version`` and the ``ranker``. A user the online
  store does not know gets trending items with ``"cold_start": true`` and the reason
  "trending now".
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from recsys.ranking.policy import EXCLUDE_PURCHASED
from recsys.serving.catalogue import Catalogue
from recsys.serving.schemas import (
    EVENTS_BODY,
    ErrorOut,
    EventBatch,
    EventIn,
    EventsOut,
    InterestsOut,
    RecommendationsOut,
)
from recsys.serving.service import ModelState, Service, interests_payload
from recsys.serving.settings import ServiceSettings, ServingError


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


def create_app(
    settings: ServiceSettings,
    *,
    model: ModelState | None = None,
    catalogue: Catalogue | None = None,
) -> FastAPI:
    """The service app. ``model`` (a ranking) and ``catalogue`` replace what would otherwise be
    loaded from the home. Raises
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
        holder["service"] = Service.start(settings, model=model, catalogue=catalogue)
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
        return Query(
            EXCLUDE_PURCHASED,
            description="drop items the user bought within the recent sequence",
        )

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
            body = EVENTS_BODY.validate_python(raw)
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
                service.recommend(
                    user,
                    profile if profile is not None else service.reader.read(user),
                    k,
                    exclude_purchased,
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
