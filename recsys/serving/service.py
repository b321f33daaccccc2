"""The service's wiring: everything a request needs, built once at startup.

Recommendations are ranked by ``recsys.ranking`` with the newest verified model's policy, on
the user's online profile: the same ``Ranking.rank`` that ``recsys score`` writes back, so
the two agree until events arrive. A home without a model serves the repeat policy over the
warehouse's item statistics ("degraded: no model").

``Runtime`` runs the service on one dedicated thread: every store and model call of every
request is a job on it, one at a time, so the updater's, the inbox's and Feast's SQLite
connections are used by one thread only, and the event loop stays free to answer (/healthz
within milliseconds while a 1,000-event batch is applied).

Replicas: with a Redis online store any number of service processes serve one home. The online
features and the updater's state are in Redis (``recsys.online.redis_state``: an event is
applied once, whichever replica gets it), and so are the string ids' keys, learned items and
event ids' sources (``recsys.serving.replicas``); each replica keeps its own inbox
(``ServiceSettings.inbox``) and drains it into the warehouse under the warehouse's lock, as a
single service does. Nothing a request reads is cached in a process, so an event posted to one
replica shows in every replica's next answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from recsys.features.read import OnlineReader, UserProfile
from recsys.online.seed import seed_state
from recsys.online.state import Outcome, from_us, to_us
from recsys.online.updater import Event, OnlineUpdater
from recsys.ranking.policy import ITEM_FIELDS, POLICIES, Ranking
from recsys.ranking.score import cold_start
from recsys.ranking.sources import Users
from recsys.ranking.tables import ItemTables
from recsys.serving.catalogue import Catalogue, load_catalogue
from recsys.serving.inbox import EventInbox, InboxDrainer, InboxEvent
from recsys.serving.lock import ServiceLock
from recsys.serving.replicas import SharedIds, source_of
from recsys.serving.schemas import EventIn, utc_now
from recsys.serving.settings import ServiceSettings, ServingError
from recsys.warehouse.connect import WarehouseBusyError
from recsys.warehouse.ids import DIMS, SERVICE_BASE, Ids, as_given, source_text

log = logging.getLogger(__name__)

NO_MODEL = "none"
T = TypeVar("T")


@dataclass(frozen=True)
class ModelState:
    """The ranking served, its model folder's name and a line for /readyz."""

    ranking: Ranking
    version: str
    status: str


def load_model(settings: ServiceSettings) -> ModelState:
    """The newest complete, verified model in ``settings.models``; without one, the repeat
    policy over the warehouse's marts."""
    from recsys.models.artifacts import ArtifactError

    try:
        from recsys.models.interest import load_latest

        model, directory = load_latest(settings.models)
    except ArtifactError as exc:
        tables = ItemTables.from_warehouse(
            settings.paths, lock_timeout_s=settings.start_lock_timeout_s
        )
        ranking = Ranking(POLICIES["repeat"], settings.features, tables)
        return ModelState(ranking, NO_MODEL, f"degraded: no model ({exc})")
    if model.ranking_.ann is not None:
        one_tensorflow_thread()
    return ModelState(
        model.ranking_,
        directory.name,
        f"loaded: {directory.name} (policy {model.ranking_.spec.name})",
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


@dataclass(frozen=True)
class MigrationNote:
    """The user's interest moved from one category to another (``origin``: online | warehouse)."""

    from_category_id: int
    to_category_id: int
    origin: str
    detected_at: datetime | None = None


def current_migration(
    profile: UserProfile, catalogue: Catalogue, window: timedelta
) -> MigrationNote | None:
    """The online shift when the short-horizon top category differs from the long one, else the
    newest warehouse migration detected within ``window`` before the profile's time."""
    if profile.get("top_category_changed", False):
        return MigrationNote(
            int(profile.get("top_category_long")), int(profile.get("top_category_short")), "online"
        )
    if profile.as_of is None:
        return None
    recent = catalogue.recent_migrations(profile.user_id, profile.as_of - window)
    if not recent:
        return None
    m = recent[0]
    return MigrationNote(m.from_category_id, m.to_category_id, "warehouse", m.detected_at)


@dataclass
class Service:
    """Everything a request needs, built once at startup."""

    settings: ServiceSettings
    catalogue: Catalogue
    reader: OnlineReader
    updater: OnlineUpdater
    inbox: EventInbox
    drainer: InboxDrainer
    model: ModelState
    lock: ServiceLock
    # replicas only: this replica's own lock, and what the replicas share in Redis
    replica_lock: ServiceLock | None = None
    shared: SharedIds | None = None

    @classmethod
    def start(
        cls,
        settings: ServiceSettings,
        *,
        model: ModelState | None = None,
        catalogue: Catalogue | None = None,
    ) -> Service:
        """Take the home's service lock (replicas: shared, and their replica's own), then load
        and wire everything (waiting up to ``start_lock_timeout_s`` for the warehouse).
        ``model`` and ``catalogue`` replace what would be loaded from the home (tests). Raises
        ``ServingError`` (one line)."""
        address = f"{settings.host}:{settings.port}"
        replica_path = settings.replica_lock
        lock = ServiceLock.acquire(settings.lock, address=address, shared=replica_path is not None)
        locks = [lock]
        try:
            if replica_path is not None:
                locks.append(ServiceLock.acquire(replica_path, address=address))
            return cls._wire(settings, locks, model, catalogue)
        except BaseException as exc:
            for held in locks:
                held.release()
            if isinstance(exc, WarehouseBusyError):
                raise ServingError(f"cannot start: {exc}") from None
            raise

    @classmethod
    def _wire(
        cls,
        settings: ServiceSettings,
        locks: list[ServiceLock],
        model: ModelState | None,
        catalogue: Catalogue | None,
    ) -> Service:
        from recsys.features import errors, repo

        paths = settings.paths
        wait_s = settings.start_lock_timeout_s
        catalogue = catalogue or load_catalogue(paths, lock_timeout_s=wait_s)
        online = settings.online or repo.OnlineStoreSettings()
        try:
            store = repo.feature_store(paths, online)
        except errors.FeatureStoreError as exc:
            raise ServingError(str(exc)) from None
        try:
            reader = OnlineReader(store)
        except Exception as exc:
            raise ServingError(
                f"no feature service in {paths.feast} ({type(exc).__name__}): run "
                "`recsys features apply` and `recsys features materialize` first"
            ) from None
        updater = OnlineUpdater.for_store(paths, store, config=settings.features)
        updater.catalogue = catalogue.category_of
        if updater.state.seeded_as_of() is None:  # materialised before seeding existed, or lost
            report = seed_state(
                paths, config=settings.features, lock_timeout_s=wait_s, online=online
            )
            log.info(report.summary())
        _adopt_single_service_inbox(settings)
        drainer = InboxDrainer(
            paths,
            settings.inbox,
            interval_s=settings.drain_interval_s,
            batch=settings.drain_batch,
            lock_timeout_s=settings.lock_timeout_s,
            retention_s=settings.event_id_retention_hours * 3600,
        )
        service = cls(
            settings,
            catalogue,
            reader,
            updater,
            EventInbox(settings.inbox),
            drainer,
            model or load_model(settings),
            *locks,
            shared=None if settings.replica_id is None else SharedIds(updater.state.client),
        )
        drainer.on_remap = service.remapped
        service.recover()
        drainer.start()
        return service

    def recover(self) -> None:
        """Replay the inbox's rows through the online updater (a crash may have come between
        the inbox commit and the update; duplicates are dropped), then drain them."""
        rows = self.inbox.pending()
        for seq, user, item, category, behavior, event_us, session, event_id in rows:
            event = InboxEvent(user, item, category, behavior, event_us, session, event_id)
            self._drop_if_elsewhere(seq, event, self._apply(seq, event, {})[0])
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
        if self.replica_lock is not None:
            self.replica_lock.release()
        self.lock.release()

    def remapped(self, dim: str, source_id: str, key: int) -> None:
        """The warehouse kept its own key for a string id this service gave a key."""
        self.catalogue.ids.maps[dim].add(key, source_id)
        if self.shared is not None:
            self.shared.remap(dim, source_id, key)

    def key(self, column: str, value: int | str) -> int | None:
        """The key of an id as in the source (``column``: user_id | item_id | category_id);
        a replica also finds string ids another replica gave a key."""
        known = self.catalogue.ids.of(column)
        key = known.key(value)
        if key is None and self.shared is not None:
            dim, source_id = DIMS[column], source_text(value)
            key = self.shared.key(dim, source_id)
            if key is not None:
                known.add(key, source_id)
                self.inbox.adopt(dim, {source_id: key})
        return key

    def _drop_if_elsewhere(self, seq: int, event: InboxEvent, outcome: str) -> None:
        """Delete an inbox row whose event id another replica applied from its own row (a
        client's retry): that row reaches the warehouse, this one must not (without an
        ``event_time`` the two rows' times differ, so the drain could not tell them apart)."""
        if self.shared is None or event.event_id is None or outcome != Outcome.DUPLICATE.value:
            return
        if self.shared.source_of_event(event.event_id) not in (None, self._source(seq)):
            self.inbox.discard(seq)

    def _source(self, seq: int) -> str:
        return source_of(self.settings.replica_id or "", seq)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """The body of /readyz and whether the online store answered."""
        try:
            self.reader.ping()
            online = "reachable"
        except Exception as exc:
            online = f"unreachable: {type(exc).__name__}: {exc}"
        reachable = online == "reachable"
        return reachable, {
            "status": "ready" if reachable else "not ready",
            "online_store": online,
            "catalogue": f"loaded: {len(self.catalogue)} items",
            "model": self.model.status,
            "inbox": {
                "pending": len(self.inbox),
                "drained": self.drainer.drained,
                "last_drain_error": self.drainer.last_error,
            },
        }

    def interests(self, user: int | str) -> dict[str, Any] | None:
        """The body of GET /v1/users/{user_id}/interests (``user`` as in the source); None for
        a user without features."""
        user_id = self.key("user_id", user)
        profile = None if user_id is None else self.reader.read(user_id)
        return None if profile is None else interests_payload(self, profile)

    def forget(self, user: int | str) -> dict[str, Any]:
        """Erase the user (as in the source): their events still in the inbox (with their event
        ids), then everything ``recsys.forget.forget_user`` erases (warehouse, online store,
        updater state), then what this process keeps of them (their warehouse migrations, their
        string id). The drain runs first, so the warehouse knows every key this service gave,
        then waits, so it cannot carry the user's events back into the warehouse."""
        from recsys.forget import forget_user

        users = self.catalogue.ids.of("user_id")
        user_id = self.key("user_id", user)
        if user_id is not None and user_id >= SERVICE_BASE:
            self.drainer.drain(self.inbox)
        with self.drainer.paused():
            dropped = 0 if user_id is None else self.inbox.forget(user_id)
            report = forget_user(self.settings.paths, as_given(user), online=self.settings.online)
        if user_id is not None:
            self.catalogue.migrations.pop(user_id, None)
            users.drop(user_id)
        log.info("forgot user %s (%d events had not reached the warehouse yet)", user, dropped)
        return report.to_dict()

    def recommendations(self, user: int | str, k: int, exclude_purchased: bool) -> dict[str, Any]:
        """The body of GET /v1/users/{user_id}/recommendations (``user`` as in the source; a
        user never seen gets the cold start)."""
        user_id = self.key("user_id", user)
        profile = None if user_id is None else self.reader.read(user_id)
        return self.recommend(user, user_id, profile, k, exclude_purchased)

    def recommend(
        self,
        user: int | str,
        user_id: int | None,
        profile: UserProfile | None,
        k: int,
        exclude_purchased: bool,
    ) -> dict[str, Any]:
        """The response body of GET /v1/users/{user_id}/recommendations (plain JSON types, ids
        as in the source): ``user`` as asked, ``user_id`` its key (None: never seen)."""
        ranking = self.model.ranking
        if profile is None or user_id is None:
            # the rows' user column is dropped: -1 stands for a user without a key
            items = cold_start(ranking, [-1], k).select(ITEM_FIELDS).to_dicts()
        else:
            users = Users.from_features([(user_id, profile.as_of, profile.features)])
            items = ranking.rank_users(users, k, exclude_purchased=exclude_purchased).items()
        ids = self.catalogue.ids
        for item in items:
            item["item_id"] = ids.shown("item_id", item["item_id"])
            item["category_id"] = ids.shown("category_id", item["category_id"])
        migration = (
            None
            if profile is None
            else current_migration(
                profile, self.catalogue, timedelta(hours=self.settings.migration_window_hours)
            )
        )
        return {
            "user_id": user if user_id is None else ids.shown("user_id", user_id),
            "model_version": self.model.version,
            "ranker": ranking.spec.name,
            "cold_start": profile is None,
            "features_as_of": None if profile is None else profile.as_of,
            "migration": None
            if migration is None
            else _moved(ids, migration.from_category_id, migration.to_category_id)
            | {"origin": migration.origin},
            "items": items,
        }

    def post_events(
        self, events: list[EventIn], *, recommend_k: int | None, exclude_purchased: bool
    ) -> dict[str, Any]:
        """The body of POST /v1/events: store the events, apply them, report each one and,
        with ``recommend_k``, every posted user's refreshed top-k.

        From the inbox commit on, the events are acknowledged: a failure after it (the online
        update, the ranking) is reported in the body, never as an error status."""
        results, profiles = self._store_and_apply(events)
        payload: dict[str, Any] = {
            "accepted": sum(r["outcome"] != Outcome.QUARANTINED.value for r in results),
            "results": results,
        }
        if recommend_k is not None:
            try:
                payload["recommendations"] = [
                    self.recommend(
                        user_id,
                        user_id,
                        profile if profile is not None else self.reader.read(user_id),
                        recommend_k,
                        exclude_purchased,
                    )
                    for user_id, profile in profiles.items()
                ]
            except Exception as exc:
                log.exception("recommendations after a post failed")
                payload["recommendations_error"] = f"{type(exc).__name__}: {exc}"
        return payload

    def _store_and_apply(
        self, events: list[EventIn]
    ) -> tuple[list[dict[str, Any]], dict[int, UserProfile | None]]:
        """Per-event results and the freshest profile of each user (None when nothing of
        theirs was applied)."""
        now = utc_now()
        results: list[dict[str, Any] | None] = [None] * len(events)
        stored: list[tuple[int, InboxEvent]] = []
        self._allocate(events)
        ids = self.catalogue.ids
        for index, e in enumerate(events):
            user_id, item_id = ids.of("user_id").key(e.user_id), ids.of("item_id").key(e.item_id)
            category = e.category_id
            if category is not None:
                category = ids.of("category_id").key(category)
            elif item_id is not None:
                category = self._category_of(item_id)
            if category is None or item_id is None or user_id is None:
                reason = f"unknown item {e.item_id} without a category_id (not in item_stats)"
                self.updater.state.quarantine(_event(e, now, None), reason)
                results[index] = _result(index, e, Outcome.QUARANTINED.value, reason)
                continue
            event_us = to_us(e.event_time or now)
            stored.append(
                (
                    index,
                    InboxEvent(
                        user_id,
                        item_id,
                        category,
                        e.behavior,
                        event_us,
                        e.session_id,
                        e.event_id,
                    ),
                )
            )
        profiles: dict[int, UserProfile | None] = {}
        if not stored:
            return [r for r in results if r is not None], profiles
        seqs = self.inbox.append([s for _, s in stored])  # durable from here on
        for (index, s), seq in zip(stored, seqs, strict=True):
            if seq is None:
                results[index] = _result(
                    index, events[index], Outcome.DUPLICATE.value, "event_id already received"
                )
                continue
            try:
                outcome, reason = self._apply(seq, s, profiles)
                self._drop_if_elsewhere(seq, s, outcome)
            except Exception as exc:
                log.exception("online update of a stored event failed")
                outcome = "stored"
                reason = (
                    f"stored; the online update failed ({type(exc).__name__}: {exc}), the "
                    "next build brings the event into the online features"
                )
            results[index] = _result(index, events[index], outcome, reason)
        new = [seq for seq in seqs if seq is not None]
        if new:  # drained from here on (a failed update is not retried: the build has it)
            self.drainer.applied = new[-1]
        return [r for r in results if r is not None], profiles

    def _allocate(self, events: list[EventIn]) -> None:
        """Give the string ids of ``events`` that neither the warehouse nor this service has
        seen their keys (``EventInbox.allocate``), except the item of an event that will be
        quarantined (an unknown item without a category)."""
        ids = self.catalogue.ids
        new: dict[str, set[str]] = {column: set() for column in DIMS}
        for e in events:
            for column, value in (
                ("user_id", e.user_id),
                ("item_id", e.item_id if e.category_id is not None else None),
                ("category_id", e.category_id),
            ):
                if value is not None and ids.of(column).key(value) is None:
                    new[column].add(source_text(value))
        for column, source_ids in new.items():
            if not source_ids:
                continue
            known = ids.of(column)
            dim = DIMS[column]
            if self.shared is None:
                keys = self.inbox.allocate(dim, sorted(source_ids), known.service_top)
            else:
                keys = self.shared.allocate(dim, sorted(source_ids), known.service_top)
                self.inbox.adopt(dim, keys)
            for source_id, key in keys.items():
                known.add(key, source_id)

    def _category_of(self, item_id: int) -> int | None:
        """The item's category: the catalogue's, else one a replica learned from an event."""
        category = self.catalogue.category_of(item_id)
        if category is None and self.shared is not None:
            category = self.shared.category_of(item_id)
            if category is not None:
                self.catalogue.learn(item_id, category)
        return category

    def _apply(
        self, seq: int, s: InboxEvent, profiles: dict[int, UserProfile | None]
    ) -> tuple[str, str]:
        """Apply inbox row ``seq`` online; records the user's fresh profile in ``profiles``."""
        if self.shared is not None and self.catalogue.category_of(s.item_id) is None:
            self.shared.learn(s.item_id, s.category_id)
        self.catalogue.learn(s.item_id, s.category_id)
        update = self.updater.apply(
            Event(
                s.user_id,
                s.item_id,
                s.behavior,
                from_us(s.event_us),
                s.category_id,
                s.event_id,
                self._source(seq),
            )
        )
        if update.rows is not None:
            profiles[s.user_id] = self.reader.profile_from_rows(s.user_id, update.rows)
        else:
            profiles.setdefault(s.user_id, None)
        reason = update.reason or ("applied" if update.outcome is Outcome.APPLIED else "")
        return update.outcome.value, reason


class Runtime:
    """The service and the one thread that runs all its work (see the module docstring).

    ``start()`` builds the service on that thread (blocking: ``recsys serve`` calls it before
    uvicorn, so a failed start is one line); the app's lifespan calls ``started()`` when it has
    not run. ``run(work)`` runs ``work(service)`` there and awaits the result.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        model: ModelState | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.settings = settings
        self._model = model
        self._catalogue = catalogue
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-store")
        self.service: Service | None = None

    def _start(self) -> Service:
        if self.service is None:
            self.service = Service.start(
                self.settings, model=self._model, catalogue=self._catalogue
            )
        return self.service

    def start(self) -> Service:
        return self._thread.submit(self._start).result()

    async def started(self) -> Service:
        return await asyncio.wrap_future(self._thread.submit(self._start))

    async def run(self, work: Callable[[Service], T]) -> T:
        service = self.service
        if service is None:
            raise ServingError("the service is not started")
        return await asyncio.wrap_future(self._thread.submit(work, service))

    def close(self) -> None:
        """Close the service (drain the inbox, release the home) and end the thread."""
        service, self.service = self.service, None
        if service is not None:
            self._thread.submit(service.close).result()
        self._thread.shutdown()


def _event(e: EventIn, now: datetime, category: int | None) -> Event:
    return Event(e.user_id, e.item_id, e.behavior, e.event_time or now, category)


def _result(index: int, e: EventIn, outcome: str, reason: str) -> dict[str, Any]:
    return {
        "index": index,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "event_id": e.event_id,
        "outcome": outcome,
        "reason": reason,
    }


def _profile_interests(profile: UserProfile, horizon: str, ids: Ids) -> list[dict[str, Any]]:
    pairs = profile.short_interests if horizon == "short" else profile.long_interests
    total = profile.get(f"interest_total_{horizon}", 0.0) or sum(s for _, s in pairs)
    return [
        {
            "category_id": ids.shown("category_id", c),
            "score": s,
            "share": s / total if total else 0.0,
        }
        for c, s in pairs
    ]


SHIFT_FIELDS = (
    "js_divergence",
    "top_category_short",
    "top_category_long",
    "top_category_changed",
    "novel_category_share",
    "entropy_short",
    "entropy_long",
)


def _moved(ids: Ids, from_category: Any, to_category: Any) -> dict[str, Any]:
    """A migration's categories as a person sees them (the API's migration fields)."""
    return {
        "from_category_id": ids.shown("category_id", from_category),
        "to_category_id": ids.shown("category_id", to_category),
    }


def interests_payload(service: Service, profile: UserProfile) -> dict[str, Any]:
    """The body of GET /v1/users/{user_id}/interests, ids as in the source."""
    settings = service.settings
    ids = service.catalogue.ids
    migrations: list[dict[str, Any]] = []
    online = current_migration(profile, service.catalogue, timedelta(0))
    if online is not None and online.origin == "online":
        migrations.append(
            _moved(ids, online.from_category_id, online.to_category_id)
            | {"origin": "online", "detected_at": profile.as_of, "strength": None}
        )
    if profile.as_of is not None:
        since = profile.as_of - timedelta(hours=settings.migration_window_hours)
        migrations.extend(
            _moved(ids, m.from_category_id, m.to_category_id)
            | {"origin": "warehouse", "detected_at": m.detected_at, "strength": m.strength}
            for m in service.catalogue.recent_migrations(profile.user_id, since)
        )
    return {
        "user_id": ids.shown("user_id", profile.user_id),
        "features_as_of": profile.as_of,
        "short": _profile_interests(profile, "short", ids),
        "long": _profile_interests(profile, "long", ids),
        "shift": {name: ids.shown(name, profile.get(name)) for name in SHIFT_FIELDS},
        "migrations": migrations,
    }


def _adopt_single_service_inbox(settings: ServiceSettings) -> None:
    """A replica takes over the inbox that a single service of the home left (``inbox.db``,
    from before replicas), so that its acknowledged events are replayed and drained. One rename:
    of replicas starting together, one wins and the others find the file gone."""
    if settings.replica_id is None:
        return
    legacy = settings.inbox.with_name("inbox.db")
    if legacy.exists() and not settings.inbox.exists():
        with contextlib.suppress(FileNotFoundError):
            os.rename(legacy, settings.inbox)
            log.info("took over the single service's inbox %s", legacy)
