"""Reading features: one user's current profile fast, the reference online read, and
point-in-time historical joins.

``OnlineReader`` is the one fast online reader. ``FeatureStore.get_online_features`` resolves
the feature service from the registry and builds pandas/arrow frames on every call; the reader
resolves the service's views once and reads one user's stored values of all of them in one
SQLite query or one Redis ``HMGET`` (other stores: the provider's ``online_read``), decoding
Feast's own row layout (``recsys.features.online_store`` writes it). It returns the same values
as ``online_features`` (the reference path), as a ``UserProfile``.

Time semantics: an export row stamped T holds features computed from events strictly before T.
Feast joins the latest row with ``event_timestamp <= label time``, so a label at time L sees a
row stamped exactly L (events < L) but never a later one: every joined value is known strictly
before the label time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import feast
import numpy as np
import pandas as pd
import polars as pl
from feast import FeatureStore
from feast.feature_view import FeatureView
from feast.infra.online_stores.helpers import compute_table_id, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp

from recsys.features import feast_compat
from recsys.features.errors import FeatureStoreError, NotMaterialized, UnknownUser
from recsys.features.online_store import KEY_VERSION, entity_keys, join_key
from recsys.features.repo import PROFILE_SERVICE, SQLITE, OnlineStoreSettings, feature_store
from recsys.home import Paths

SEQUENCE_FIELDS = ("seq_item_ids", "seq_category_ids", "seq_behaviors", "seq_gap_seconds")
# Per view: (event time or None, {feature: serialised ValueProto}); an absent view: (None, {}).
StoredRows = list[tuple[datetime | None, dict[str, bytes]]]


@dataclass(frozen=True)
class UserProfile:
    """One user's current features.

    ``features`` is the flat ``{"<view>__<feature>": value}`` row of the profile service (what a
    trained query tower or ranker reads); the other fields are the parts the service uses
    itself. Lists are most-important / most-recent first; ``as_of`` is the newest row time.
    """

    user_id: int
    as_of: datetime | None
    features: dict[str, Any]

    @cached_property
    def _by_name(self) -> dict[str, Any]:
        return {key.split("__", 1)[1]: value for key, value in self.features.items()}

    def get(self, name: str, default: Any = None) -> Any:
        """A feature by its short name (``top_categories_short``), whatever its view."""
        value = self._by_name.get(name)
        return default if value is None else value

    @cached_property
    def short_interests(self) -> list[tuple[int, float]]:
        return list(
            zip(self.get("top_categories_short", []), self.get("top_scores_short", []), strict=True)
        )

    @cached_property
    def long_interests(self) -> list[tuple[int, float]]:
        return list(
            zip(self.get("top_categories_long", []), self.get("top_scores_long", []), strict=True)
        )

    @cached_property
    def sequence(self) -> list[tuple[int, int, str, float]]:
        """Recent events (item_id, category_id, behavior, gap_seconds), most recent first."""
        columns = [self.get(name, []) for name in SEQUENCE_FIELDS]
        return list(zip(*columns, strict=True))

    @cached_property
    def purchased(self) -> set[int]:
        """Items bought within the recent sequence (what ``exclude_purchased`` removes)."""
        return {item for item, _, behavior, _ in self.sequence if behavior == "buy"}


class _SqliteRows:
    """All the views in one ``union all`` query over Feast's tables (one connection, locked:
    the service may call from several threads)."""

    def __init__(self, path: Path, project: str, views: Sequence[FeatureView], versioning: bool):
        self.con = sqlite3.connect(str(path), check_same_thread=False)
        self.n_views = len(views)
        self.sql = " union all ".join(
            f"select {i}, feature_name, value, event_ts from "
            f'"{compute_table_id(project, view, versioning)}" where entity_key = ?'
            for i, view in enumerate(views)
        )
        self._lock = threading.Lock()

    def read(self, key: bytes, entity: EntityKey) -> StoredRows:
        with self._lock:
            rows = self.con.execute(self.sql, (key,) * self.n_views).fetchall()
        out: StoredRows = [(None, {})] * self.n_views
        for i, feature, value, stamp in rows:
            if out[i][0] is None:
                # As Feast's reader: the "timestamp" converter (local time), marked UTC.
                out[i] = (datetime.fromtimestamp(int(stamp)).replace(tzinfo=UTC), {})
            out[i][1][feature] = value
        return out


class _RedisRows:
    """All the views in one ``HMGET`` (they share the entity's hash)."""

    def __init__(self, client: Any, project: str, views: Sequence[FeatureView], versioning: bool):
        self.client = client
        self.project = project.encode()
        self.layout: list[list[str]] = []
        self.fields: list[Any] = []
        for view in views:
            name = compute_versioned_name(view, versioning)
            features = [f.name for f in view.features]
            self.layout.append(features)
            self.fields += [
                f"_ts:{name}",
                *(feast_compat.redis_field(f"{name}:{feature}") for feature in features),
            ]

    def read(self, key: bytes, entity: EntityKey) -> StoredRows:
        got = iter(self.client.hmget(key + self.project, self.fields))
        out: StoredRows = []
        for features in self.layout:
            stamp = next(got)
            values = [next(got) for _ in features]
            if not stamp and not any(values):
                out.append((None, {}))
                continue
            proto = Timestamp()
            proto.ParseFromString(stamp or b"")
            moment = datetime.fromtimestamp(proto.seconds + proto.nanos / 1e9, tz=UTC)
            out.append((moment, {f: v or b"" for f, v in zip(features, values, strict=True)}))
        return out


class _ProviderRows:
    """Any other online store: the provider's ``online_read``, view by view."""

    def __init__(self, store: FeatureStore, views: Sequence[FeatureView]):
        self.store = store
        self.provider = feast_compat.provider(store)
        self.views = views

    def read(self, key: bytes, entity: EntityKey) -> StoredRows:
        out: StoredRows = []
        for view in self.views:
            [(stamp, values)] = self.provider.online_read(self.store.config, view, [entity])
            out.append((stamp, {k: v.SerializeToString() for k, v in (values or {}).items()}))
        return out


def _stored_rows(
    store: FeatureStore, views: Sequence[FeatureView]
) -> _SqliteRows | _RedisRows | _ProviderRows:
    """The direct reader of Feast's layout for the store's online store, else the provider's."""
    config = store.config
    online = config.online_store
    versioning = config.registry.enable_online_feature_view_versioning
    if config.entity_key_serialization_version == KEY_VERSION:
        if online.type == "sqlite" and not online.vector_enabled:
            path = Path(feast_compat.sqlite_path(config))
            return _SqliteRows(path, config.project, views, versioning)
        if online.type == "redis" and online.redis_type == "redis" and online.client == "redis":
            return _RedisRows(feast_compat.redis_client(store), config.project, views, versioning)
    return _ProviderRows(store, views)


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


class OnlineReader:
    """Reads ``UserProfile``\\s of one feature service from an open ``FeatureStore``.

    Reuse one reader (and its ``FeatureStore``) per process; it is safe to call from several
    threads. ``profile_from_rows`` turns the rows an ``OnlineUpdater`` just pushed into the same
    profile without reading them back. Raises ``NotMaterialized`` when the registry has no such
    service (run ``recsys features apply``).
    """

    def __init__(self, store: FeatureStore, service: str = PROFILE_SERVICE) -> None:
        self.store = store
        projections = _feature_service(store, service).feature_view_projections
        self.views = [store.get_feature_view(p.name) for p in projections]
        keys = {join_key(view) for view in self.views}
        if len(keys) != 1:
            raise FeatureStoreError(f"service {service!r} is not keyed by one entity: {keys}")
        ((self.join_key, self.key_type),) = keys
        self.columns = [(p.name_to_use(), [f.name for f in p.features]) for p in projections]
        self.rows = _stored_rows(store, self.views)

    def read(self, user_id: int) -> UserProfile | None:
        """The user's profile, or None when the online store holds nothing for the user."""
        stored = self._read(int(user_id))
        features: dict[str, Any] = {}
        stamps = []
        for (name, names), (stamp, values) in zip(self.columns, stored, strict=True):
            if stamp is not None and values:
                stamps.append(_naive_utc(stamp))
            for feature in names:
                raw = values.get(feature)
                features[f"{name}__{feature}"] = (
                    None if not raw else feast_value_type_to_python_type(Value.FromString(raw))
                )
        if not stamps or all(value is None for value in features.values()):
            return None
        return UserProfile(user_id=int(user_id), as_of=max(stamps), features=features)

    def profile_from_rows(self, user_id: int, rows: dict[str, dict[str, Any]]) -> UserProfile:
        """The profile made of pushed rows (keyed by push source, as ``UpdateResult.rows``)."""
        features = {
            f"{name}__{feature}": rows[view.stream_source.name][feature]
            for view, (name, names) in zip(self.views, self.columns, strict=True)
            for feature in names
        }
        stamps = [row["event_timestamp"] for row in rows.values()]
        return UserProfile(user_id=user_id, as_of=max(stamps), features=features)

    def ping(self) -> None:
        """One read of every view: raises when the online store is unreachable."""
        self._read(0)

    def _read(self, user_id: int) -> StoredRows:
        (key,) = entity_keys(self.join_key, self.key_type, [user_id])
        (value,) = python_values_to_proto_values([user_id], self.key_type)
        return self.rows.read(key, EntityKey(join_keys=[self.join_key], entity_values=[value]))


def _feature_service(store: FeatureStore, service: str) -> feast.FeatureService:
    try:
        return store.get_feature_service(service)
    except feast.errors.FeatureServiceNotFoundException:
        raise NotMaterialized(
            f"no feature service {service!r} in {store.config.repo_path}: run `recsys features "
            "apply` and `recsys features materialize` first"
        ) from None


def _is_materialized(store: FeatureStore, service: feast.FeatureService) -> bool:
    names = {projection.name for projection in service.feature_view_projections}
    return any(
        view.materialization_intervals for view in store.list_feature_views() if view.name in names
    )


def online_features(
    paths: Paths,
    user_id: int,
    *,
    service: str = PROFILE_SERVICE,
    online: OnlineStoreSettings = SQLITE,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """The user's current features from the online store, as ``{"<view>__<feature>": value}``
    plus ``user_id``.

    Goes through ``FeatureStore.get_online_features`` (the reference path; ``OnlineReader`` is
    the fast one). Raises ``NotMaterialized`` before the first materialisation, ``UnknownUser``
    when the store holds nothing for the user.
    """
    store = store or feature_store(paths, online)
    feature_service = _feature_service(store, service)
    values = store.get_online_features(
        features=feature_service,
        entity_rows=[{"user_id": int(user_id)}],
        full_feature_names=True,
    ).to_dict()
    row = {name: column[0] for name, column in values.items()}
    if all(value is None for name, value in row.items() if name != "user_id"):
        if not _is_materialized(store, feature_service):
            raise NotMaterialized(
                f"the online store of {paths.home} is empty: run `recsys features materialize`"
            )
        raise UnknownUser(f"no online features for user {user_id}")
    return row


def historical_features(
    paths: Paths,
    entity_df: pd.DataFrame,
    feature_service: str,
    *,
    store: FeatureStore | None = None,
) -> pd.DataFrame:
    """Point-in-time join of a service's features onto ``entity_df`` (same rows, same order).

    ``entity_df`` has the service's join keys (``user_id`` and/or ``item_id``) and an
    ``event_timestamp`` label time (naive = UTC). Each value comes from the latest export row
    stamped at or before the label time, i.e. computed from events strictly before it. Columns
    are named ``<view>__<feature>``.
    """
    if "event_timestamp" not in entity_df.columns:
        raise FeatureStoreError("entity_df needs an event_timestamp column (the label time)")
    store = store or feature_store(paths)
    frame = entity_df.reset_index(drop=True).copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["__row"] = range(len(frame))
    with feast_compat.quiet():
        result = store.get_historical_features(
            entity_df=frame,
            features=store.get_feature_service(feature_service),
            full_feature_names=True,
        ).to_df()
    result = result.sort_values("__row").drop(columns="__row").reset_index(drop=True)
    result["event_timestamp"] = result["event_timestamp"].dt.tz_convert(None)
    return result


def historical_frame(
    paths: Paths, entities: pl.DataFrame, feature_service: str, *, store: FeatureStore | None = None
) -> pl.DataFrame:
    """``historical_features`` of polars entity rows, as polars: Feast returns numpy arrays
    inside object columns, which become plain lists here."""
    frame = historical_features(paths, entities.to_pandas(), feature_service, store=store)
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = [v.tolist() if isinstance(v, np.ndarray) else v for v in frame[column]]
    return pl.from_pandas(frame)
