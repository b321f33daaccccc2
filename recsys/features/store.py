"""The feature store of a recsys home: apply, materialise, and read features through Feast.

One set of definitions serves both entry points. ``cd feature_repo && feast apply`` imports the
repo's modules for the default home (``../data``); the functions here import the *same* modules
with ``RECSYS_FEATURES_DIR`` pointing at ``<home>/features`` (absolute) and apply them with a
``RepoConfig`` whose registry and SQLite online store live in ``<home>/feast``. Both write the
same registry for the default home, and ``materialize`` re-applies first, so the registry never
points at another home's files.

Time semantics: an export row stamped T holds features computed from events strictly before T.
Feast joins the latest row with ``event_timestamp <= label time``, so a label at time L sees a
row stamped exactly L (events < L) but never a later one: every joined value is known strictly
before the label time.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import duckdb
import feast
import pandas as pd
from feast import FeatureStore, RepoConfig
from feast.feature_view import FeatureView

from recsys.config import FeatureConfig
from recsys.features import online_store
from recsys.home import Paths
from recsys.online.updater import SeedError, SeedReport, Snapshot, read_snapshot, write_snapshot
from recsys.warehouse.connect import WarehouseBusyError

# Feast installs its own warning filters on import; ours must come after it.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(ibis|duckdb|feast)")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(ibis|feast)")
warnings.filterwarnings("ignore", message=r".*ibis.*", category=DeprecationWarning)

PROJECT = "recsys"
REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
REPO_MODULES = ("entities", "data_sources", "features", "feature_services")
FEATURES_DIR_ENV = "RECSYS_FEATURES_DIR"
PROFILE_SERVICE = "user_profile_v1"
# Views whose Parquet the models write later; materialised only once their file exists.
OPTIONAL_VIEW_FILES = {
    "user_embedding": "user_embeddings",
    "item_embedding": "item_embeddings",
    "category_embedding": "category_embeddings",
}


class FeatureStoreError(Exception):
    """A feature-store operation cannot proceed; the message says what to run."""


class NotMaterialized(FeatureStoreError):
    """The online store has not been filled for this home yet."""


class UnknownUser(FeatureStoreError):
    """The online store has no features for this user."""


class MaterializationError(FeatureStoreError):
    """Materialisation wrote nothing, or not what the exports hold."""


@dataclass(frozen=True)
class OnlineStoreSettings:
    """Which online store serves a home: SQLite in ``<home>/feast`` (default) or Redis.

    ``redis_url`` is a ``redis://host:port/db`` URL (as in ``$REDIS_URL``).
    """

    kind: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = None

    @classmethod
    def redis(cls, url: str) -> OnlineStoreSettings:
        return cls(kind="redis", redis_url=url)

    def to_feast(self, paths: Paths) -> dict[str, Any]:
        if self.kind == "sqlite":
            return {"type": "sqlite", "path": str(paths.feast / "online_store.db")}
        if not self.redis_url:
            raise FeatureStoreError(
                "the redis online store needs a redis_url (redis://host:port/db)"
            )
        url = urlparse(self.redis_url)
        db = (url.path or "/0").lstrip("/") or "0"
        return {
            "type": "redis",
            "connection_string": f"{url.hostname or 'localhost'}:{url.port or 6379},db={db}",
            # Several events of one user can share a second; with Feast's timestamp dedup the
            # later push of the same second would be dropped. The updater always writes the
            # user's complete current row, so last-write-wins is the right rule.
            "skip_dedup": True,
        }


SQLITE = OnlineStoreSettings()


@dataclass(frozen=True)
class MaterializationReport:
    """What one ``materialize`` call wrote: rows (entities) per view and the time taken, and
    the online updater's state seeded from the same build (None: the home has no warehouse)."""

    start: datetime
    end: datetime
    rows: dict[str, int]
    seconds: float
    seed: SeedReport | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        views = ", ".join(f"{name}={n}" for name, n in self.rows.items())
        seeded = f"; {self.seed.summary()}" if self.seed else ""
        return (
            f"materialised {self.total_rows} rows ({views}) for {self.start:%Y-%m-%d %H:%M:%S}"
            f"..{self.end:%Y-%m-%d %H:%M:%S} in {self.seconds:.1f}s{seeded}"
        )


_IMPORT_LOCK = threading.Lock()


@contextmanager
def _repo_modules(features_dir: Path) -> Iterator[list[Any]]:
    """Import the feature repo's modules afresh, their sources reading ``features_dir``.

    The repo's modules import each other by top-level name (``from entities import user``), as
    Feast repos do; they are swapped into ``sys.modules`` only for the duration of the import.
    """
    with _IMPORT_LOCK:
        saved_env = os.environ.get(FEATURES_DIR_ENV)
        saved_modules = {
            name: sys.modules.pop(name) for name in REPO_MODULES if name in sys.modules
        }
        os.environ[FEATURES_DIR_ENV] = str(features_dir.resolve())
        sys.path.insert(0, str(REPO_DIR))
        try:
            yield [importlib.import_module(name) for name in REPO_MODULES]
        finally:
            sys.path.remove(str(REPO_DIR))
            for name in REPO_MODULES:
                sys.modules.pop(name, None)
            sys.modules.update(saved_modules)
            if saved_env is None:
                os.environ.pop(FEATURES_DIR_ENV, None)
            else:
                os.environ[FEATURES_DIR_ENV] = saved_env


def load_definitions(features_dir: Path) -> list[Any]:
    """The repo's Feast objects (entities, sources, views, services) for one exports folder.

    Raises ``FeatureStoreError`` when the exports are missing.
    """
    feast_types = (
        feast.Entity,
        feast.data_source.DataSource,
        FeatureView,
        feast.FeatureService,
    )
    try:
        with _repo_modules(features_dir) as modules:
            objects: list[Any] = []
            for module in modules:
                for value in vars(module).values():
                    if isinstance(value, feast_types) and not any(value is o for o in objects):
                        objects.append(value)
    except FileNotFoundError as exc:
        raise FeatureStoreError(str(exc)) from None
    return objects


def repo_config(paths: Paths, online: OnlineStoreSettings = SQLITE) -> RepoConfig:
    """The Feast config of a home: registry in ``<home>/feast``, DuckDB offline store."""
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=str(paths.feast / "registry.db"),
        online_store=online.to_feast(paths),
        offline_store={"type": "duckdb"},
        repo_path=paths.feast,
        entity_key_serialization_version=3,
    )


def feature_store(paths: Paths, online: OnlineStoreSettings = SQLITE) -> FeatureStore:
    """An open ``FeatureStore`` for a home (reuse it: building one reads the registry). A Redis
    online store is claimed for the home first (``claim_redis``)."""
    paths.feast.mkdir(parents=True, exist_ok=True)
    if online.kind == "redis":
        claim_redis(paths, online)
    return FeatureStore(config=repo_config(paths, online))


# Feast keys online rows by project and entity, so two homes writing one Redis database would
# overwrite each other's rows. The first home to open a database claims it under this key
# (which cannot collide with Feast's binary keys); another home that still exists is refused.
REDIS_CLAIM_KEY = f"{PROJECT}:home"


def _home_id(paths: Paths) -> str:
    return f"{socket.gethostname()}:{paths.home.resolve()}"


def _redis_client(online: OnlineStoreSettings):  # -> redis.Redis
    import redis

    return redis.Redis.from_url(online.redis_url, socket_connect_timeout=5)


def claim_redis(paths: Paths, online: OnlineStoreSettings) -> None:
    """Claim the Redis database of ``online`` for this home, or raise ``FeatureStoreError``
    when another home holds it. A claim by a home of this machine whose folder is gone is
    stale and taken over; a claim from another machine is never guessed stale."""
    import redis

    me = _home_id(paths)
    client = _redis_client(online)
    try:
        for _ in range(10):  # a compare-and-set that lost a race is retried
            if client.set(REDIS_CLAIM_KEY, me, nx=True):
                return
            with client.pipeline() as pipe:
                try:
                    pipe.watch(REDIS_CLAIM_KEY)
                    held = pipe.get(REDIS_CLAIM_KEY)
                    if held is None:
                        continue
                    holder = held.decode()
                    if holder == me:
                        return
                    host, _, folder = holder.partition(":")
                    if host != socket.gethostname() or Path(folder).exists():
                        raise FeatureStoreError(
                            f"the Redis database {online.redis_url} holds the online features "
                            f"of another recsys home ({holder}); two homes in one database "
                            "overwrite each other's rows. Give this home its own database "
                            "(redis://host:port/N), or free this one: `recsys features "
                            f"release --redis-url {online.redis_url} --home {folder}` on "
                            f"{host}, or, if that home is gone, redis-cli -u "
                            f"{online.redis_url} del {REDIS_CLAIM_KEY}"
                        )
                    pipe.multi()
                    pipe.set(REDIS_CLAIM_KEY, me)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
    except redis.RedisError as exc:
        raise FeatureStoreError(
            f"cannot reach the Redis online store at {online.redis_url}: {exc}"
        ) from None
    raise FeatureStoreError(f"the claim on {online.redis_url} kept changing; try again")


def release_redis(paths: Paths, online: OnlineStoreSettings) -> bool:
    """Drop this home's claim on the Redis database (its rows stay); False when it held none."""
    client = _redis_client(online)
    # compare-and-delete in one step, so another home's claim is never dropped
    script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
    return bool(client.eval(script, 1, REDIS_CLAIM_KEY, _home_id(paths)))


def apply(paths: Paths, *, online: OnlineStoreSettings = SQLITE) -> list[str]:
    """Register the repo's definitions for this home; returns the applied objects' names."""
    objects = load_definitions(paths.features)
    store = feature_store(paths, online)
    with _quiet():
        store.apply(objects)
    return sorted(obj.name for obj in objects)


def export_time_range(paths: Paths) -> tuple[datetime, datetime]:
    """Min and max ``event_timestamp`` over the exports (naive UTC)."""
    files = [str(p) for p in sorted(paths.features.glob("*.parquet"))]
    if not files:
        raise FeatureStoreError(
            f"no feature exports in {paths.features}: run `make demo` or `recsys build` first"
        )
    con = duckdb.connect()
    low, high = con.execute(
        "select min(event_timestamp), max(event_timestamp) "
        "from read_parquet(?, union_by_name = true)",
        [files],
    ).fetchone()
    if low is None:
        raise MaterializationError(f"the exports in {paths.features} hold no rows")
    return low, high


def _entities_in_range(view: FeatureView, path: Path, start: datetime, end: datetime) -> int:
    keys = ", ".join(c.name for c in view.entity_columns)
    (count,) = (
        duckdb.connect()
        .execute(
            f"select count(*) from (select distinct {keys} from read_parquet(?) "
            "where event_timestamp between ? and ?)",
            [str(path), start, end],
        )
        .fetchone()
    )
    return int(count)


def _source_path(view: FeatureView) -> Path:
    return Path(view.batch_source.path)


def materialize(
    paths: Paths, *, online: OnlineStoreSettings = SQLITE, fast: bool = True
) -> MaterializationReport:
    """Load the latest export row of every entity into the online store.

    The window is the data's own time range (min..max ``event_timestamp`` of the exports), not
    the wall clock: historical logs (Taobao is from 2017) would otherwise load nothing. Raises
    ``MaterializationError`` when the window holds no rows or the online store stays empty.

    ``fast`` (default) reads each view's latest rows with one DuckDB query and writes them all
    in one transaction / pipeline (``recsys.features.online_store``), the same rows Feast writes, then
    records the interval in the registry as ``FeatureStore.materialize`` does. ``fast=False``
    (or a store setting the direct writer does not reproduce) runs ``FeatureStore.materialize``.

    Then the online updater's state (``recsys.online.updater.seed_state``) is replaced by the marts of
    the same build, so that events applied later continue each user's history instead of
    overwriting it. The marts are read first: ``MaterializationError`` before anything is
    written when they are of another build than the exports. A home without a warehouse
    (exports copied in) has no state to seed.
    """
    apply(paths, online=online)
    store = feature_store(paths, online)
    start, end = export_time_range(paths)
    config = FeatureConfig()
    snapshot = _updater_snapshot(paths, config)
    views = [
        view for view in store.list_feature_views() if view.online and _source_path(view).exists()
    ]
    writer = online_store.online_writer(store) if fast and _bulk_loadable(views) else None
    began = time.perf_counter()
    if writer is None:
        rows = _feast_materialize(store, views, start, end, paths)
    else:
        try:
            rows = _bulk_materialize(store, writer, views, start, end, paths)
        finally:
            writer.close()
    seconds = time.perf_counter() - began
    _check_materialized(store, views, rows)
    seed = write_snapshot(paths, snapshot, config) if snapshot else None
    return MaterializationReport(start=start, end=end, rows=rows, seconds=seconds, seed=seed)


def _updater_snapshot(paths: Paths, config: FeatureConfig) -> Snapshot | None:
    """The online updater's state from the marts of the build whose user exports are loaded."""
    exports = paths.features / "user_interest.parquet"
    if not paths.warehouse.exists() or not exports.exists():
        return None
    (as_of,) = (
        duckdb.connect()
        .execute("select max(event_timestamp) from read_parquet(?)", [str(exports)])
        .fetchone()
    )
    try:
        return read_snapshot(paths, config, expect_as_of=as_of)
    except (SeedError, WarehouseBusyError) as exc:
        raise MaterializationError(f"cannot seed the online updater's state: {exc}") from None


def _no_rows(start: datetime, end: datetime, paths: Paths) -> MaterializationError:
    return MaterializationError(
        f"0 rows to materialise between {start} and {end} in {paths.features}"
    )


def _feast_materialize(
    store: FeatureStore, views: list[FeatureView], start: datetime, end: datetime, paths: Paths
) -> dict[str, int]:
    rows = {view.name: _entities_in_range(view, _source_path(view), start, end) for view in views}
    if not any(rows.values()):
        raise _no_rows(start, end, paths)
    with _quiet():
        store.materialize(
            start_date=start.replace(tzinfo=UTC),
            end_date=end.replace(tzinfo=UTC),
            feature_views=[view.name for view in views if rows[view.name]],
        )
    return rows


def _bulk_loadable(views: Sequence[FeatureView]) -> bool:
    """Views whose rows the bulk path reads exactly as Feast's offline pull does."""
    return all(
        isinstance(view.batch_source, feast.FileSource)
        and not view.batch_source.field_mapping
        and not view.batch_source.created_timestamp_column
        and len(view.entity_columns) == 1
        for view in views
    )


def _bulk_materialize(
    store: FeatureStore,
    writer: online_store.OnlineWriter,
    views: list[FeatureView],
    start: datetime,
    end: datetime,
    paths: Paths,
) -> dict[str, int]:
    """Write every view's latest rows in one go; record the interval as Feast does."""
    con = duckdb.connect()
    batches = [_latest_rows(con, view, start, end) for view in views]
    rows = {batch.view.name: len(batch) for batch in batches}
    if not any(rows.values()):
        raise _no_rows(start, end, paths)
    writer.write([batch for batch in batches if len(batch)])
    for view in views:
        if rows[view.name]:
            store.registry.apply_materialization(
                view,
                store.project,
                start.replace(tzinfo=UTC),
                end.replace(tzinfo=UTC),
                commit=False,
            )
    store.registry.commit()
    return rows


def _latest_rows(
    con: duckdb.DuckDBPyConnection, view: FeatureView, start: datetime, end: datetime
) -> online_store.ViewRows:
    """The view's latest export row per entity stamped within [start, end], encoded.

    Feast's offline pull keeps rows with start <= timestamp <= end, then the newest per key.
    """
    key, _ = online_store.join_key(view)
    stamp = view.batch_source.timestamp_field
    columns = ", ".join(f'"{name}"' for name in [key, stamp, *(f.name for f in view.features)])
    try:
        table = con.sql(
            f'select {columns} from read_parquet($path) where "{stamp}" between $start and $end '
            f'and "{key}" is not null qualify row_number() over '
            f'(partition by "{key}" order by "{stamp}" desc) = 1',
            params={"path": str(_source_path(view)), "start": start, "end": end},
        ).to_arrow_table()
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise MaterializationError(f"cannot read {view.name}'s rows: {message}") from None
    return online_store.encode_table(view, table, stamp)


def _check_materialized(store: FeatureStore, views: Sequence[FeatureView], rows: dict) -> None:
    """Read one entity of every materialised view back; fail loudly if it is not there."""
    con = duckdb.connect()
    for view in views:
        if not rows[view.name]:
            continue
        (key,) = [c.name for c in view.entity_columns]
        (sample,) = con.execute(
            f'select arg_max("{key}", event_timestamp) from read_parquet(?)',
            [str(_source_path(view))],
        ).fetchone()
        feature = view.features[0].name
        got = store.get_online_features(
            features=[f"{view.name}:{feature}"], entity_rows=[{key: sample}]
        ).to_dict()
        if got[feature][0] is None:
            raise MaterializationError(
                f"materialisation reported success but {view.name} has no online row for "
                f"{ {key: sample} }"
            )


def _is_materialized(store: FeatureStore, service: feast.FeatureService) -> bool:
    names = {projection.name for projection in service.feature_view_projections}
    return any(
        view.materialization_intervals for view in store.list_feature_views() if view.name in names
    )


def _missing_user(
    store: FeatureStore, service: feast.FeatureService, paths: Paths, user_id: int
) -> FeatureStoreError:
    if not _is_materialized(store, service):
        return NotMaterialized(
            f"the online store of {paths.home} is empty: run `recsys features materialize`"
        )
    return UnknownUser(f"no online features for user {user_id}")


def _feature_service(store: FeatureStore, service: str, paths: Paths) -> feast.FeatureService:
    try:
        return store.get_feature_service(service)
    except feast.errors.FeatureServiceNotFoundException:
        raise NotMaterialized(
            f"no feature service {service!r} in {paths.feast}: run `recsys features apply` "
            "and `recsys features materialize` first"
        ) from None


def online_features(
    paths: Paths,
    user_id: int,
    *,
    service: str = PROFILE_SERVICE,
    online: OnlineStoreSettings = SQLITE,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """The user's current features from the online store, as ``{"<view>__<feature>": value}``.

    Goes through ``FeatureStore.get_online_features`` (the reference path; ``OnlineReader`` is
    the fast one). Raises ``NotMaterialized`` before the first materialisation, ``UnknownUser``
    when the store holds nothing for the user.
    """
    store = store or feature_store(paths, online)
    feature_service = _feature_service(store, service, paths)
    values = store.get_online_features(
        features=feature_service,
        entity_rows=[{"user_id": int(user_id)}],
        full_feature_names=True,
    ).to_dict()
    row = {name: column[0] for name, column in values.items()}
    if all(value is None for name, value in row.items() if name != "user_id"):
        raise _missing_user(store, feature_service, paths, user_id)
    return row


class OnlineReader:
    """Fast reads of one user's features of a feature service, for serving.

    Resolves the service's views once and reads the user's stored values of all of them in one
    SQLite query or one Redis ``HMGET`` (``recsys.features.online_store``; other stores through the
    provider's ``online_read``). ``read_user`` returns exactly what ``online_features`` returns
    and raises the same errors. Reuse one reader (and its ``FeatureStore``) per process; it is
    safe to call from several threads.
    """

    def __init__(
        self,
        paths: Paths,
        *,
        service: str = PROFILE_SERVICE,
        online: OnlineStoreSettings = SQLITE,
        store: FeatureStore | None = None,
    ) -> None:
        from feast.type_map import feast_value_type_to_python_type

        self.paths = paths
        self.store = store or feature_store(paths, online)
        self.service = _feature_service(self.store, service, paths)
        projections = self.service.feature_view_projections
        self.views = [self.store.get_feature_view(p.name) for p in projections]
        keys = {online_store.join_key(view) for view in self.views}
        if len(keys) != 1:
            raise FeatureStoreError(f"service {service!r} is not keyed by one entity: {keys}")
        ((self.join_key, self.key_type),) = keys
        self.columns = [(p.name_to_use(), [f.name for f in p.features]) for p in projections]
        self.rows = online_store.online_row_reader(self.store, self.views)
        self.provider = self.store._get_provider()
        self.to_python = feast_value_type_to_python_type

    def read_user_with_time(self, user_id: int) -> tuple[datetime, dict[str, Any]]:
        """The newest stored row time (naive UTC) and ``read_user``'s dict."""
        from feast.protos.feast.types.Value_pb2 import Value

        (key,) = online_store.entity_keys(self.join_key, self.key_type, [int(user_id)])
        stored = self._read(key, int(user_id))
        row: dict[str, Any] = {self.join_key: int(user_id)}
        stamps = []
        for (name, features), (stamp, values) in zip(self.columns, stored, strict=True):
            if stamp is not None and values:
                stamps.append(stamp)
            for feature in features:
                raw = values.get(feature)
                row[f"{name}__{feature}"] = (
                    None if not raw else self.to_python(Value.FromString(raw))
                )
        if not stamps or all(v is None for k, v in row.items() if k != self.join_key):
            raise _missing_user(self.store, self.service, self.paths, user_id)
        return max(stamps).astimezone(UTC).replace(tzinfo=None), row

    def read_user(self, user_id: int) -> dict[str, Any]:
        """``{"user_id": id, "<view>__<feature>": value}``, as ``online_features``."""
        return self.read_user_with_time(user_id)[1]

    def _read(self, key: bytes, user_id: int) -> list[tuple[datetime | None, dict[str, bytes]]]:
        if self.rows is not None:
            return self.rows.read(key)
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey

        (value,) = online_store.python_values_to_proto_values([user_id], self.key_type)
        entity = EntityKey(join_keys=[self.join_key], entity_values=[value])
        out = []
        for view in self.views:
            [(stamp, values)] = self.provider.online_read(self.store.config, view, [entity])
            out.append((stamp, {k: v.SerializeToString() for k, v in (values or {}).items()}))
        return out


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
    with _quiet():
        result = store.get_historical_features(
            entity_df=frame,
            features=store.get_feature_service(feature_service),
            full_feature_names=True,
        ).to_df()
    result = result.sort_values("__row").drop(columns="__row").reset_index(drop=True)
    result["event_timestamp"] = result["event_timestamp"].dt.tz_convert(None)
    return result


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence Feast's per-call deprecation chatter (it re-arms its own filters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


__all__ = [
    "FeatureStoreError",
    "MaterializationError",
    "MaterializationReport",
    "NotMaterialized",
    "OnlineReader",
    "OnlineStoreSettings",
    "UnknownUser",
    "apply",
    "export_time_range",
    "feature_store",
    "historical_features",
    "load_definitions",
    "materialize",
    "online_features",
    "repo_config",
]
