"""Configuration of the recommendation service: one frozen dataclass passed to ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.config import FeatureConfig
from recsys.home import Paths

if TYPE_CHECKING:
    from recsys.features.repo import OnlineStoreSettings


class ServingError(Exception):
    """The service cannot start or serve as configured (one-line message)."""


@dataclass(frozen=True)
class ServiceSettings:
    """Where the service reads and writes, and its limits.

    ``online`` is the Feast online store (None: the home's SQLite store). ``model_dir`` holds
    trained artefacts (default ``<home>/models``). Events are acknowledged once they are in the
    durable inbox ``<home>/serving/inbox.db``; a background thread drains it into the warehouse
    every ``drain_interval_s`` seconds, at most ``drain_batch`` events per transaction.
    """

    paths: Paths
    online: OnlineStoreSettings | None = None
    model_dir: Path | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    default_k: int = 20
    max_k: int = 1000
    # Largest POST /v1/events batch; a larger one is refused with 413 before anything is stored.
    max_batch: int = 1000
    drain_interval_s: float = 1.0
    drain_batch: int = 10_000
    # How long one drain waits for the warehouse lock (analysts' read-only opens) before it
    # leaves the events in the inbox for the next round.
    lock_timeout_s: float = 2.0
    # Categories of the short-horizon profile the category source draws from.
    interest_categories: int = 3
    # Recent migrations (interest_migrations) shown and used in reasons: detected within this
    # window before the user's latest features.
    migration_window_hours: float = 7 * 24.0

    @property
    def models(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.paths.models

    @property
    def inbox(self) -> Path:
        return self.paths.home / "serving" / "inbox.db"
