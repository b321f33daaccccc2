"""The recommendation service: ``create_app(settings)`` returns the FastAPI app.

Endpoints (OpenAPI at /docs and /openapi.json), with the API key scope each needs:

- ``GET /v1/users/{user_id}/recommendations?k=20&exclude_purchased=false`` (read): the user's
  online profile ranked by ``recsys.ranking`` with the served model's policy (``recsys score``
  runs the same code); the answer names the ``model_version`` and the ``ranker``. A user the
  online store does not know gets trending items with ``"cold_start": true`` and the reason
  "trending now".
- ``POST /v1/events[?return_recommendations=true&k=..&exclude_purchased=..]`` (write): one
  event or ``{"events": [...]}`` (at most ``settings.max_batch``, else 413). Each event is
  validated, its category resolved (from the event, else the catalogue), committed to the
  durable inbox (see ``recsys.serving.inbox``; an ``event_id`` seen before is a duplicate), then
  applied by the ``OnlineUpdater``; the answer reports each event's outcome (applied |
  duplicate | stale | quarantined as ``recsys.online.updater`` defines them, or stored: in the
  inbox but the online update failed) and, when asked, every posted user's refreshed top-k.
  Once the inbox has the events the answer is 200, whatever fails after.
- ``GET /v1/users/{user_id}/interests`` (read): short/long top categories, the shift,
  migrations.
- ``DELETE /v1/users/{user_id}`` (admin): ``recsys.forget.forget_user`` plus what the service
  holds of the user; answers the forget report.
- ``GET /healthz`` (process up), ``GET /readyz`` (online store reachable, catalogue loaded,
  model state: "loaded: ..." or "degraded: no model"): open, no key.

Keys (``recsys.serving.auth``): ``Authorization: Bearer KEY``; none is asked when the service
has no keys, and then it listens on loopback only. Ids are as in the source
(``recsys.warehouse.ids``): int64 numbers or strings of at most 256 characters, in paths and
bodies alike, and responses show them the same way. Limits: a body over
``max_body_bytes`` (1 MiB) is 413; ``Content-Type: application/json`` or 415; JSON nesting
deeper than 200 levels, lone surrogates, ``session_id``/``event_id`` over 128 characters and
times out of range are 422; ``k`` is at most ``max_k`` (1000) on GET and ``max_post_k`` (200)
on POST, and ``return_recommendations`` covers at most ``max_recommended_users`` (10) users.
Errors are ``{"error": ...}``; an unexpected one is a 500 that adds the ``request_id`` (every
response has an ``X-Request-ID`` header) and never a traceback.

Handlers are async and do no store or model work themselves: that runs on the ``Runtime``'s
one store thread (``recsys.serving.service``), so the loop answers /healthz meanwhile. The inbox
drain has its own thread and connections. Requests never open the warehouse.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import pydantic_core
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException

from recsys.ranking.policy import EXCLUDE_PURCHASED
from recsys.serving.auth import Scope, requires
from recsys.serving.catalogue import Catalogue
from recsys.serving.guards import BodyLimit, RequestIds
from recsys.serving.schemas import (
    EVENTS_BODY,
    ErrorOut,
    EventBatch,
    EventIn,
    EventsOut,
    InterestsOut,
    RecommendationsOut,
    ServerErrorOut,
)
from recsys.serving.service import ModelState, Runtime
from recsys.serving.settings import ServiceSettings, ServingError
from recsys.warehouse.ids import MAX_ID_LENGTH

UserId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="the user id as in the source: an integer, or a string such as a UUID",
    ),
]
JSON = "application/json"


def _json(payload: Any, status_code: int = 200) -> Response:
    """Plain json.dumps of plain types: no per-field encoder pass on the hot paths."""
    body = json.dumps(payload, separators=(",", ":"), default=_default)
    return Response(body, status_code=status_code, media_type=JSON)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):  # naive times are UTC; RFC 3339 (OpenAPI) wants the offset
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = _json({"error": message}, status_code)
    response.headers.update(headers or {})
    return response


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")[:200]
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
    loaded from the home. Raises ``ServingError`` when the home has no warehouse or feature
    registry; the rest is loaded by ``app.state.runtime.start()`` or at startup (lifespan)."""
    for needed, remedy in [
        (settings.paths.warehouse, "run `recsys pipeline` (or ingest + build) first"),
        (settings.paths.feast / "registry.db", "run `recsys features materialize` first"),
    ]:
        if not needed.exists():
            raise ServingError(f"{needed} is missing: {remedy}")
    runtime = Runtime(settings, model=model, catalogue=catalogue)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.started()
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(
        title="recsys",
        summary="Recommendations that follow users' changing interests.",
        version="1",
        lifespan=lifespan,
        responses={500: {"model": ServerErrorOut, "description": "unexpected error"}},
    )
    app.state.runtime = runtime
    # The last added runs first: every response, 413s included, gets its request id.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIds)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _error(422, _validation_message(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), exc.headers)

    def k_query(limit: int) -> Any:
        return Query(
            settings.default_k, ge=1, le=limit, description=f"items to return (1..{limit})"
        )

    def exclude_query() -> Any:
        return Query(
            EXCLUDE_PURCHASED,
            description="drop items the user bought within the recent sequence",
        )

    keys = settings.api_keys
    errors: dict[int | str, dict[str, Any]] = {422: {"model": ErrorOut}}
    if keys is not None:
        errors |= {401: {"model": ErrorOut}, 403: {"model": ErrorOut}}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorOut}})
    async def readyz() -> Response:
        """Online store reachable, catalogue loaded, model loaded (or "degraded: no model")."""
        if runtime.service is None:
            return _error(503, "starting")
        reachable, body = await runtime.run(lambda service: service.ready())
        return _json(body, 200 if reachable else 503)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        responses={200: {"model": RecommendationsOut}, **errors},
        dependencies=requires(Scope.READ, keys),
    )
    async def recommendations(
        user_id: UserId,
        k: int = k_query(settings.max_k),
        exclude_purchased: bool = exclude_query(),
    ) -> Response:
        """Top-k items for the user, with scores, sources and reasons."""
        return _json(
            await runtime.run(
                lambda service: service.recommendations(user_id, k, exclude_purchased)
            )
        )

    @app.get(
        "/v1/users/{user_id}/interests",
        responses={200: {"model": InterestsOut}, 404: {"model": ErrorOut}, **errors},
        dependencies=requires(Scope.READ, keys),
    )
    async def interests(user_id: UserId) -> Response:
        """Short- and long-horizon top categories, the shift and recent migrations."""
        body = await runtime.run(lambda service: service.interests(user_id))
        if body is None:
            return _error(404, f"no online features for user {user_id}")
        return _json(body)

    @app.delete(
        "/v1/users/{user_id}",
        responses={200: {"description": "the forget report"}, **errors},
        dependencies=requires(Scope.ADMIN, keys),
    )
    async def forget(user_id: UserId) -> Response:
        """Erase the user everywhere: warehouse, online store, updater state, inbox."""
        return _json(await runtime.run(lambda service: service.forget(user_id)))

    @app.post(
        "/v1/events",
        responses={
            200: {"model": EventsOut},
            413: {"model": ErrorOut},
            415: {"model": ErrorOut},
            **errors,
        },
        dependencies=requires(Scope.WRITE, keys),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
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
        k: int = k_query(settings.max_post_k),
        exclude_purchased: bool = exclude_query(),
    ) -> Response:
        """One event or {"events": [...]}: stored durably, applied online, outcome per event."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON:
            return _error(415, f"send the events as {JSON} (Content-Type: {JSON})")
        try:
            # jiter, not json: nesting is bounded (200 levels) and invalid UTF-8 is refused.
            raw = pydantic_core.from_json(await request.body(), allow_inf_nan=False)
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
        users = len({e.user_id for e in events})
        if return_recommendations and users > settings.max_recommended_users:
            return _error(
                422,
                f"return_recommendations covers at most {settings.max_recommended_users} users "
                f"per call, this one has {users}: post without it and GET the recommendations",
            )
        recommend_k = k if return_recommendations else None
        return _json(
            await runtime.run(
                lambda service: service.post_events(
                    events, recommend_k=recommend_k, exclude_purchased=exclude_purchased
                )
            )
        )

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
