"""Which online store serves a home: its own SQLite file (the default) or a Redis database.

One setting for every command that touches the online store (``recsys features ...``,
``train``, ``pipeline``, ``serve``, ``forget``): ``--redis-url``, else ``$RECSYS_REDIS_URL``,
else SQLite (``OnlineStoreSettings.configured``). This module does not import Feast, so run
configurations and the command line can hold the setting without paying for that import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

import yaml

from recsys.features.errors import FeatureStoreError
from recsys.features.feast_cli import feast_yaml_path
from recsys.home import Paths

REDIS_URL_ENV = "RECSYS_REDIS_URL"


@dataclass(frozen=True)
class OnlineStoreSettings:
    """Which online store serves a home: SQLite in ``<home>/feast`` (default) or Redis.

    ``redis_url`` is a ``redis://host:port/db`` URL.
    """

    kind: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = None

    @classmethod
    def redis(cls, url: str) -> OnlineStoreSettings:
        """The Redis database at ``url``; anything but ``redis://host[:port][/db]`` is refused
        (Feast's connection string would silently point elsewhere)."""
        parsed = urlparse(url)
        if parsed.scheme != "redis" or not parsed.hostname:
            raise FeatureStoreError(f"a Redis URL looks like redis://host:port/db, got {url!r}")
        return cls(kind="redis", redis_url=url)

    @classmethod
    def configured(cls, redis_url: str | None = None) -> OnlineStoreSettings:
        """Redis at ``redis_url``, else at ``$RECSYS_REDIS_URL``, else the home's SQLite."""
        url = redis_url or os.environ.get(REDIS_URL_ENV)
        return cls.redis(url) if url else cls()

    @classmethod
    def from_feast(cls, kind: str, connection_string: str | None = None) -> OnlineStoreSettings:
        """The setting behind a Feast ``online_store`` of ``type`` ``kind`` (``to_feast``'s
        inverse: its ``host:port,db=N`` connection string back into a URL)."""
        if kind == "sqlite":
            return cls()
        if kind != "redis" or not connection_string:
            raise FeatureStoreError(f"recsys serves a sqlite or redis online store, not {kind!r}")
        address, *options = connection_string.split(",")
        db = next((o.split("=", 1)[1] for o in options if o.startswith("db=")), "0")
        return cls.redis(f"redis://{address}/{db}")

    @classmethod
    def of_home(cls, paths: Paths) -> OnlineStoreSettings:
        """The online store the home's ``feature_store.yaml`` names (written by every command
        that applies the definitions); SQLite for a home without one."""
        path = feast_yaml_path(paths)
        if not path.exists():
            return cls()
        online = (yaml.safe_load(path.read_text()) or {}).get("online_store") or {}
        return cls.from_feast(online.get("type", "sqlite"), online.get("connection_string"))

    def to_feast(self, paths: Paths) -> dict[str, Any]:
        """Feast's ``online_store`` config; every path absolute."""
        if self.kind == "sqlite":
            return {"type": "sqlite", "path": str(paths.feast.resolve() / "online_store.db")}
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
