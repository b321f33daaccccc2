"""Configuration of the recommendation service: one frozen dataclass passed to ``create_app``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.config import FeatureConfig
from recsys.home import Paths

if TYPE_CHECKING:
    from recsys.features.repo import OnlineStoreSettings
    from recsys.serving.auth import ApiKeys


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
    drain_interval_s: float = 1.0
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

    def __post_init__(self) -> None:
        if self.api_keys is None and not is_loopback(self.host):
            raise ServingError(
                f"refusing to listen on {self.host} without API keys: set RECSYS_API_KEYS or "
                "pass --api-keys-file (or listen on 127.0.0.1)"
            )

    @property
    def models(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.paths.models

    @property
    def inbox(self) -> Path:
        return self.paths.home / "serving" / "inbox.db"

    @property
    def lock(self) -> Path:
        """The lock file that keeps a second service off this home."""
        return self.paths.home / "service.lock"
