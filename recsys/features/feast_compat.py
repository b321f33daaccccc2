"""Every private Feast call of recsys, each behind a small named function.

recsys writes and reads Feast's online rows directly (``recsys.features.online_store``,
``recsys.features.read``), which depends on Feast internals: the provider, the Redis client of
the Redis online store, the SQLite store's file path and timestamp adapter, and the murmur3
hash of Redis field names; and the file registry and SQLite store that ``feature_repo/`` names
so that it serves ``$RECSYS_HOME`` (``HomeRegistryStore``, ``HomeSqliteOnlineStore``). They
were checked against one Feast release only, so importing this module refuses any other
(``feast.__version__`` must start with ``TESTED_FEAST``).

Feast also installs its own warning filters on import and re-arms some per call; the filters
here come after its import, and ``quiet()`` silences the per-call chatter.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import feast
from feast.infra.online_stores import helpers as feast_helpers
from feast.infra.online_stores import sqlite as feast_sqlite
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig, RepoConfig

from recsys.features.feast_home import repo_home

TESTED_FEAST = "0.67."

if not feast.__version__.startswith(TESTED_FEAST):
    raise ImportError(
        f"recsys needs feast {TESTED_FEAST}x (it reads Feast's private online-store layout), "
        f"found feast {feast.__version__}: pip install 'feast[duckdb,redis]=={TESTED_FEAST}*'"
    )

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(ibis|duckdb|feast)")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(ibis|feast)")
warnings.filterwarnings("ignore", message=r".*ibis.*", category=DeprecationWarning)


def provider(store: feast.FeatureStore) -> Any:
    """The store's provider (``online_read`` / ``online_write_batch``)."""
    return store._get_provider()


def redis_client(store: feast.FeatureStore) -> Any:
    """The ``redis.Redis`` client of a store whose online store is Redis."""
    return provider(store).online_store._get_client(store.config.online_store)


def sqlite_path(config: feast.RepoConfig) -> str:
    """The file of a SQLite online store."""
    return feast_sqlite.SqliteOnlineStore._get_db_path(config)


def redis_field(name: str) -> bytes:
    """The Redis hash field of ``view:feature`` (Feast's murmur3 of the name)."""
    return feast_helpers._mmh3(name)


def sqlite_timestamp_adapter() -> Callable[[datetime], Any]:
    """How Feast's SQLite store has sqlite3 store a datetime (``event_ts``); importing Feast's
    sqlite module registers it."""
    return sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol), lambda moment: moment)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence Feast's per-call deprecation chatter (it re-arms its own filters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


class HomeRegistryStore(FileRegistryStore):
    """Feast's file registry, its ``path`` taken under the home instead of the repo folder."""

    def __init__(self, registry_config: RegistryConfig, repo_path: Path) -> None:
        super().__init__(registry_config, repo_home(repo_path or Path.cwd()))


class HomeSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """``SqliteOnlineStoreConfig`` whose ``path`` is relative to the home."""

    type: Literal["recsys.features.feast_compat.HomeSqliteOnlineStore"] = (
        "recsys.features.feast_compat.HomeSqliteOnlineStore"
    )


class HomeSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store, its file under the home."""

    @staticmethod
    def _get_db_path(config: RepoConfig) -> str:
        return str(repo_home(config.repo_path or Path.cwd()) / config.online_store.path)
