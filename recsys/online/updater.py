"""Real-time feature updates: one behaviour event in, the user's fresh online features out.

``OnlineUpdater.apply(event)`` records the event in the user's state (``recsys.online.state``)
and pushes the user's rows of ``user_interest_short``/``_long``, ``user_interest_shift``,
``user_behavior_funnel`` and ``user_recent_sequence`` (``recsys.online.rows``) to the online
store through their Feast ``PushSource``\\s with ``PushMode.ONLINE`` (an offline push would
rewrite the whole Parquet export on every event).

The row pushed after an event at time t is the row as of t + 1 microsecond, i.e. it includes
every accepted event up to and including t, and is stamped with that time. Out-of-order events
(older than the user's latest) are applied exactly; duplicates are dropped and events older
than the seeded sequence are ``stale`` (see ``recsys.online.state``). An event for an item
missing from the catalogue (``item_stats``) is used when it carries its category, else
quarantined. Bad input never raises: it is quarantined with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from feast.data_source import PushMode, PushSource
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values

from recsys.config import FeatureConfig
from recsys.features import feast_compat, online_store, redis_claim
from recsys.home import Paths
from recsys.online.redis_state import RedisUserState, UserView
from recsys.online.rows import US_PER_HOUR, funnel_row, interest_row, sequence_row, shift_row
from recsys.online.state import STATE_FILE, Outcome, UserState, from_us, to_us


@dataclass(frozen=True)
class Event:
    """One behaviour event; ``category_id`` may be left out when the catalogue knows the item."""

    user_id: int
    item_id: int
    behavior: str
    event_time: datetime
    category_id: int | None = None
    # a client's id of the event, and where it is stored: replicas sharing a Redis state
    # apply it once and remember the source (``recsys.online.redis_state``)
    event_id: str | None = None
    source: str = ""


@dataclass(frozen=True)
class UpdateResult:
    """What happened to one event; ``rows`` are the pushed rows by push source when applied."""

    outcome: Outcome
    reason: str = ""
    rows: dict[str, dict[str, Any]] | None = None


class InvalidEvent(ValueError):
    """An event that cannot be used (the message is the quarantine reason)."""


def user_rows(
    state: UserState | RedisUserState | UserView,
    user_id: int,
    as_of_us: int,
    config: FeatureConfig,
) -> dict[str, dict[str, Any]]:
    """The user's feature rows as of ``as_of_us``, keyed by push source (marts' definitions)."""
    stamp = from_us(as_of_us)
    categories = state.categories(user_id, as_of_us)
    base = {"user_id": user_id, "event_timestamp": stamp}
    return {
        "user_interest_push": base | interest_row(categories, config.top_categories),
        "user_interest_shift_push": base
        | shift_row(categories, as_of_us, round(config.novelty_window_hours * US_PER_HOUR)),
        "user_behavior_funnel_push": base
        | funnel_row(state.funnel_counts(user_id), state.last_by_behavior(user_id), as_of_us),
        "user_recent_sequence_push": base
        | sequence_row(state.recent(user_id, config.recent_sequence_length), as_of_us),
    }


class FeastPushWriter:
    """Online-only writes of one event's push-source rows, all views in one transaction.

    ``FeatureStore.push`` resolves the push source's views from the registry and converts the
    frame through pandas/arrow on every call, and the provider commits once per view. This
    writer resolves the views of each push source once, encodes each view's row with Feast's
    value converter, and writes all of them at once through ``recsys.features.online_store``
    (SQLite: one transaction on a WAL connection it keeps open; Redis: one ``HSET``): the same
    online rows that ``push(..., to=PushMode.ONLINE)`` writes. Store settings the direct writer
    does not reproduce go through the provider's ``online_write_batch``, view by view.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.provider = feast_compat.provider(store)
        self.views: dict[str, list[Any]] = {}
        for view in store.list_feature_views():
            if isinstance(view.stream_source, PushSource):
                self.views.setdefault(view.stream_source.name, []).append(view)
        self.writer = online_store.online_writer(store)

    def __call__(self, rows: Mapping[str, dict[str, Any]]) -> None:
        if self.writer is None:
            self._check(rows)
            for source, row in rows.items():
                self._write_through_provider(source, row)
            return
        self.writer.write(self._encoded(rows))

    def queue(self, pipe: Any, rows: Mapping[str, dict[str, Any]]) -> None:
        """Queue the rows' writes on ``pipe``, a Redis transaction of the online store's
        database (``recsys.online.redis_state``), so that they commit with it."""
        if not isinstance(self.writer, online_store.RedisWriter):
            raise TypeError("rows are queued on a transaction of a Redis online store only")
        self.writer.queue(pipe, self._encoded(rows))

    def _check(self, rows: Mapping[str, dict[str, Any]]) -> None:
        unknown = sorted(set(rows) - set(self.views))
        if unknown:
            raise KeyError(f"no feature view is fed by push source {unknown[0]!r}")

    def _encoded(self, rows: Mapping[str, dict[str, Any]]) -> list[online_store.ViewRows]:
        self._check(rows)
        return [
            online_store.encode_row(view, row)
            for source, row in rows.items()
            for view in self.views[source]
        ]

    def _write_through_provider(self, source: str, row: dict[str, Any]) -> None:
        stamp = row["event_timestamp"].replace(tzinfo=UTC)
        for view in self.views[source]:
            (join_key,) = [c.name for c in view.entity_columns]
            key = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=row[join_key])])
            values = {
                f.name: python_values_to_proto_values([row[f.name]], f.dtype.to_value_type())[0]
                for f in view.features
            }
            self.provider.online_write_batch(
                self.store.config, view, [(key, values, stamp, None)], progress=None
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# Looks an item's category up in the catalogue; None when the item is unknown.
CategoryLookup = Callable[[int], int | None]


class OnlineUpdater:
    """Applies events one at a time and pushes the user's fresh rows to the online store.

    ``push(rows)`` writes one event's rows, keyed by push source name, in one go (one
    transaction); ``OnlineUpdater.for_store`` wires it to ``FeastPushWriter``. With a
    ``RedisUserState`` the rows are queued on the transaction that records the event
    (``push.queue(pipeline, rows)``), so the state and the online features change together.
    """

    def __init__(
        self,
        state: UserState | RedisUserState,
        *,
        push: Callable[[Mapping[str, dict[str, Any]]], None],
        catalogue: CategoryLookup,
        config: FeatureConfig,
    ) -> None:
        self.state = state
        self.push = push
        self.catalogue = catalogue
        self.config = config

    @classmethod
    def for_store(
        cls,
        paths: Paths,
        store: Any,
        *,
        config: FeatureConfig | None = None,
        via_push_api: bool = False,
    ) -> OnlineUpdater:
        """An updater for a home whose registry holds the push sources (``recsys features
        apply``); the catalogue is the online ``item_stats`` view. The state is the home's
        SQLite file, or, when the store's online store is Redis, ``RedisUserState`` in the same
        database (shared by every replica of the service).

        By default rows go through ``FeastPushWriter`` (the push sources' views, resolved once;
        one transaction per event); ``via_push_api=True`` calls
        ``FeatureStore.push(..., to=PushMode.ONLINE)`` per source, which writes the same rows
        but re-reads the registry on every call (~100 ms).
        """
        config = config or FeatureConfig()
        push: Callable[[Mapping[str, dict[str, Any]]], None]
        redis = store.config.online_store.type == "redis"
        if via_push_api and redis:
            raise ValueError("a Redis state writes its rows in its own transaction, not by push")
        if via_push_api:

            def push(rows: Mapping[str, dict[str, Any]]) -> None:
                for source, row in rows.items():
                    store.push(source, pd.DataFrame([row]), to=PushMode.ONLINE)

        else:
            push = FeastPushWriter(store)

        def catalogue(item_id: int) -> int | None:
            values = store.get_online_features(
                features=["item_stats:category_id"], entity_rows=[{"item_id": item_id}]
            ).to_dict()
            return values["category_id"][0]

        state: UserState | RedisUserState
        if redis:
            state = RedisUserState(
                feast_compat.redis_client(store), config, home=redis_claim.home_id(paths)
            )
        else:
            state = UserState(paths.feast / STATE_FILE, config)
        return cls(
            state,
            push=push,
            catalogue=catalogue,
            config=config,
        )

    def close(self) -> None:
        self.state.close()
        close_push = getattr(self.push, "close", None)
        if close_push is not None:
            close_push()

    def apply(self, event: Any) -> UpdateResult:
        """Apply one event; never raises on bad input (it is quarantined with a reason)."""
        try:
            category_id, event_us = self._validate(event)
        except InvalidEvent as exc:
            self.state.quarantine(event, str(exc))
            return UpdateResult(Outcome.QUARANTINED, reason=str(exc))
        outcome, rows = self.state.apply(
            event.user_id,
            event.item_id,
            event.behavior,
            category_id,
            event_us,
            self._publish,
            event.event_id,
            event.source,
        )
        if outcome is Outcome.DUPLICATE:
            return UpdateResult(outcome, reason="already applied")
        if outcome is Outcome.STALE:
            horizon = from_us(self.state.horizon_us(event.user_id))
            return UpdateResult(
                outcome,
                reason=f"at or before {horizon.isoformat()}, the oldest event of user "
                f"{event.user_id} the online state holds: it may be counted already, so it "
                "waits for the next build",
            )
        return UpdateResult(Outcome.APPLIED, rows=rows)

    def _publish(self, state: Any, user_id: int, pipe: Any) -> dict[str, dict[str, Any]]:
        """The user's rows as of just after their latest event, pushed now (``pipe`` None) or
        queued on the state's transaction."""
        rows = user_rows(state, user_id, state.latest_us(user_id) + 1, self.config)
        if pipe is None:
            self.push(rows)
        else:
            self.push.queue(pipe, rows)  # type: ignore[attr-defined]
        return rows

    def apply_all(self, events: Iterable[Any]) -> list[UpdateResult]:
        return [self.apply(event) for event in events]

    def features_as_of(self, user_id: int, as_of: datetime) -> dict[str, dict[str, Any]]:
        """The user's rows as of any time at or after their latest event (for checks)."""
        return user_rows(self.state, user_id, to_us(as_of), self.config)

    def _validate(self, event: Any) -> tuple[int, int]:
        """The event's category and time in microseconds, or ``InvalidEvent``."""
        if not isinstance(event, Event):
            raise InvalidEvent(f"not an Event: {type(event).__name__}")
        for name in ("user_id", "item_id"):
            if not isinstance(getattr(event, name), int) or isinstance(getattr(event, name), bool):
                raise InvalidEvent(f"{name} must be an integer, got {getattr(event, name)!r}")
        if event.behavior not in self.config.behavior_weights:
            raise InvalidEvent(f"unknown behavior {event.behavior!r}")
        if not isinstance(event.event_time, datetime):
            raise InvalidEvent(f"event_time must be a datetime, got {event.event_time!r}")
        category_id = event.category_id
        if category_id is None:
            category_id = self.catalogue(event.item_id)
            if category_id is None:
                raise InvalidEvent(
                    f"unknown item {event.item_id} without a category_id (not in item_stats)"
                )
        elif not isinstance(category_id, int):
            raise InvalidEvent(f"category_id must be an integer, got {category_id!r}")
        return int(category_id), to_us(event.event_time)
