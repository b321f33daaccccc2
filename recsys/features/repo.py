"""The Feast repo of a recsys home: its definitions, its ``RepoConfig``, and ``apply``.

One set of definitions serves both entry points. ``cd feature_repo && feast apply`` imports the
repo's modules for the home of ``$RECSYS_HOME``, else the default ``../data``
(``recsys.features.feast_home``); the functions here import the *same* modules with
``RECSYS_FEATURES_DIR`` pointing at ``<home>/features`` (absolute) and apply them with a
``RepoConfig`` whose registry and SQLite online store live in ``<home>/feast``, written to
``<home>/feast/feature_store.yaml`` for Feast's own CLI (``recsys feast``). Both write the same
registry for a home, and ``materialize`` re-applies first, so the registry never points at
another home's files.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import feast
import yaml
from feast import FeatureStore, RepoConfig
from feast.feature_view import FeatureView

from recsys.features.errors import FeatureStoreError
from recsys.features.feast_cli import REPO_DIR, feast_yaml_path
from recsys.features.feast_compat import quiet
from recsys.features.feast_home import FEATURES_DIR_ENV
from recsys.features.online_settings import SQLITE, OnlineStoreSettings
from recsys.features.redis_claim import claim_redis
from recsys.home import Paths

PROJECT = "recsys"
REPO_MODULES = ("entities", "data_sources", "features", "feature_services")
PROFILE_SERVICE = "user_profile_v1"


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


def _config_values(paths: Paths, online: OnlineStoreSettings) -> dict[str, Any]:
    """The Feast config of a home as plain values, every path absolute."""
    return {
        "project": PROJECT,
        "provider": "local",
        "registry": str(paths.feast.resolve() / "registry.db"),
        "online_store": online.to_feast(paths),
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }


def repo_config(paths: Paths, online: OnlineStoreSettings = SQLITE) -> RepoConfig:
    """The Feast config of a home: registry in ``<home>/feast``, DuckDB offline store."""
    return RepoConfig(**_config_values(paths, online), repo_path=paths.feast)


def write_feast_yaml(paths: Paths, online: OnlineStoreSettings = SQLITE) -> Path:
    """Write ``<home>/feast/feature_store.yaml``: the config ``repo_config`` builds, for Feast's
    own CLI (``recsys feast``). Its paths are absolute, so it works from any folder; the
    feature views' sources are registered with absolute paths too (``load_definitions``)."""
    path = feast_yaml_path(paths)
    header = (
        "# This home's Feast config, written by `recsys features apply` (and every command\n"
        "# that applies: materialize, train, pipeline); edits are overwritten.\n"
        f"# Feast's CLI on this home: recsys feast --home {paths.home.resolve()} -- ARGS\n"
        f"# or, from any folder: feast -f {path.resolve()} ARGS\n"
        "# (`feast apply` needs the definitions: run it through `recsys feast`).\n"
    )
    body = yaml.safe_dump(_config_values(paths, online), sort_keys=False)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(header + body)
    partial.replace(path)
    return path


def feature_store(paths: Paths, online: OnlineStoreSettings = SQLITE) -> FeatureStore:
    """An open ``FeatureStore`` for a home (reuse it: building one reads the registry). A Redis
    online store is claimed for the home first (``recsys.features.redis_claim``)."""
    paths.feast.mkdir(parents=True, exist_ok=True)
    if online.kind == "redis":
        claim_redis(paths, online)
    return FeatureStore(config=repo_config(paths, online))


def apply(paths: Paths, *, online: OnlineStoreSettings = SQLITE) -> list[str]:
    """Register the repo's definitions for this home and write its ``feature_store.yaml``;
    returns the applied objects' names."""
    objects = load_definitions(paths.features)
    store = feature_store(paths, online)
    with quiet():
        store.apply(objects)
    write_feast_yaml(paths, online)
    return sorted(obj.name for obj in objects)
