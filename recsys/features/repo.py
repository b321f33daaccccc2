"""The Feast repo of a recsys home: its definitions, its ``RepoConfig``, and ``apply``.

One set of definitions serves both entry points. ``cd feature_repo && feast apply`` imports the
repo's modules for the default home (``../data``); the functions here import the *same* modules
with ``RECSYS_FEATURES_DIR`` pointing at ``<home>/features`` (absolute) and apply them with a
``RepoConfig`` whose registry and SQLite online store live in ``<home>/feast``. Both write the
same registry for the default home, and ``materialize`` re-applies first, so the registry never
points at another home's files.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import feast
from feast import FeatureStore, RepoConfig
from feast.feature_view import FeatureView

from recsys.features.errors import FeatureStoreError
from recsys.features.feast_compat import quiet
from recsys.features.redis_claim import claim_redis
from recsys.home import Paths

PROJECT = "recsys"
REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
REPO_MODULES = ("entities", "data_sources", "features", "feature_services")
FEATURES_DIR_ENV = "RECSYS_FEATURES_DIR"
PROFILE_SERVICE = "user_profile_v1"


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
    online store is claimed for the home first (``recsys.features.redis_claim``)."""
    paths.feast.mkdir(parents=True, exist_ok=True)
    if online.kind == "redis":
        claim_redis(paths, online)
    return FeatureStore(config=repo_config(paths, online))


def apply(paths: Paths, *, online: OnlineStoreSettings = SQLITE) -> list[str]:
    """Register the repo's definitions for this home; returns the applied objects' names."""
    objects = load_definitions(paths.features)
    store = feature_store(paths, online)
    with quiet():
        store.apply(objects)
    return sorted(obj.name for obj in objects)
