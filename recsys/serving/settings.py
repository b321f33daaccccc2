"""Configuration of the recommendation service: one frozen dataclass passed to ``create_app``."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.config import FeatureConfig
from recsys.home import Paths

if TYPE_CHECKING:
    from recsys.features.repo import OnlineStoreSettings
    from recsys.serving.auth import ApiKeys


REPLICA_ENV = "RECSYS_REPLICA"
_REPLICA_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ServingError(Exception):
    """The service cannot start or serve as configured (one-line message)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


@dataclass(frozen=True)
class ServiceSettings:
    """Where the service reads and writes, who may call it, and its limits.

    ``online`` is the Feast online store (None: the home's SQLite store). ``model_dir`` holds
    trained artefacts (default ``<home>/models``). Events are acknowledged once they are in the
    durable inbox ``<home>/serving/inbox.db``; a background thread drains it into the warehouse
    every ``drain_interval_s`` seconds, at most ``drain_batch`` events per transaction.

    ``api_keys`` (``recsys.serving.auth.ApiKeys``) are required on every ``/v1`` endpoint; with
    None nobody is asked for a key, so the service may only listen on a loopback ``host``
    (anything else raises ``ServingError``). ``host`` and ``port`` are where it listens; the
    home's service lock names them.

    With a Redis ``online`` store the process is one of any number of replicas serving the
    home (the online features and the updater's state live in Redis): ``replica`` names it
    (default ``$RECSYS_REPLICA``, else "<host>-<port>"), and it keeps its own inbox,
    ``<home>/serving/inbox-<replica>.db``, which the same replica drains on its next start.
    """

    paths: Paths
    online: OnlineStoreSettings | None = None
    model_dir: Path | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    api_keys: ApiKeys | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    default_k: int = 20
    max_k: int = 1000
    # POST /v1/events answers with up to max_recommended_users top-k lists of at most
    # max_post_k items: a bounded response and a bounded time on the store thread.
    max_post_k: int = 200
    max_recommended_users: int = 10
    # Largest POST /v1/events batch; a larger one is refused with 413 before anything is stored.
    max_batch: int = 1000
    # Largest request body (413 once more is read, or at once when Content-Length says so).
    max_body_bytes: int = 1 << 20
    # A client's event_id is remembered this long: a retry within it is a duplicate.
    event_id_retention_hours: float = 7 * 24.0
    # Every drain round opens the warehouse, writes and checkpoints it on close, and writes the
    # inbox: a burst of CPU and I/O that a request landing in it pays. Every 1 s it added 3-4 ms
    # to POST p99 (benchmarks/serving.py); every 5 s it touches 5x fewer requests, and the
    # events are online at once anyway (only the warehouse copy waits).
    drain_interval_s: float = 5.0
    drain_batch: int = 10_000
    # How long one drain waits for the warehouse lock (analysts' read-only opens) before it
    # leaves the events in the inbox for the next round.
    lock_timeout_s: float = 2.0
    # How long startup waits for the warehouse (a running `recsys build` holds it): as long as
    # the CLI commands do (recsys.warehouse.connect.DEFAULT_LOCK_TIMEOUT_S).
    start_lock_timeout_s: float = 30.0
    # Categories of the short-horizon profile the category source draws from.
    interest_categories: int = 3
    # Recent migrations (interest_migrations) shown and used in reasons: detected within this
    # window before the user's latest features.
    migration_window_hours: float = 7 * 24.0
    replica: str | None = None

    def __post_init__(self) -> None:
        named = self.replica or os.environ.get(REPLICA_ENV)
        if named is not None and not _REPLICA_ID.fullmatch(named):
            raise ServingError(
                f"a replica id ({REPLICA_ENV}) is 1 to 64 letters, digits, '_', '.' or '-', "
                f"got {named!r}"
            )
        if self.api_keys is None and not is_loopback(self.host):
            raise ServingError(
                f"refusing to listen on {self.host} without API keys: set RECSYS_API_KEYS or "
                "pass --api-keys-file (or listen on 127.0.0.1)"
            )

    @property
    def models(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.paths.models

    @property
    def replica_id(self) -> str | None:
        """This replica's id; None when the service is the home's only one (SQLite)."""
        if self.online is None or self.online.kind != "redis":
            return None
        named = self.replica or os.environ.get(REPLICA_ENV)
        return named or re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.host}-{self.port}")

    @property
    def inbox(self) -> Path:
        replica = self.replica_id
        name = "inbox.db" if replica is None else f"inbox-{replica}.db"
        return self.paths.home / "serving" / name

    @property
    def lock(self) -> Path:
        """The lock file that keeps a second service off this home (replicas share it)."""
        return self.paths.home / "service.lock"

    @property
    def replica_lock(self) -> Path | None:
        """The lock file that keeps a second process off this replica's inbox."""
        replica = self.replica_id
        return None if replica is None else self.paths.home / "serving" / f"replica-{replica}.lock"
