"""``recsys forget``: erase one user from every store of a home, and keep them erased.

A user's data lives in the warehouse (events, quarantined source rows, marts, recommendation
runs), in the home's Parquet files (Feast exports, embedding files, simulated logs), in the
online store (SQLite or Redis), in the online updater's state, in the service's inbox and in the
saved models' user tables. ``forget_user`` removes it from each, through each package's own
function, and reports the rows removed per store.

The warehouse goes first: its transaction writes the user's tombstone (``forgotten_users``)
with the deletions, and from then on neither ``recsys ingest`` nor the inbox drain writes the
user's rows again, so re-ingesting a source file does not bring the user back. Forgetting a user
twice removes nothing more and keeps the one tombstone.

What stays (each package's docstring says why): aggregates the user contributed to (item
statistics, co-visitation edges, trained weights) until the next build and training, and
deleted values in DuckDB's free blocks until the file is copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recsys.config import FeatureConfig
from recsys.features import forget as features
from recsys.features.repo import SQLITE, OnlineStoreSettings
from recsys.home import Paths
from recsys.models import forget as models
from recsys.online.redis_state import RedisUserState, open_state
from recsys.online.state import STATE_FILE
from recsys.serving.inbox import EventInbox
from recsys.serving.replicas import SharedIds
from recsys.serving.settings import ServiceSettings
from recsys.warehouse.connect import DEFAULT_LOCK_TIMEOUT_S
from recsys.warehouse.forget import forget_in_files, forget_in_warehouse
from recsys.warehouse.ids import DIMS, source_text


@dataclass(frozen=True)
class ForgetReport:
    """Rows removed per store, each by table or file (Redis: hashes)."""

    user_id: int | str
    warehouse: dict[str, int]
    files: dict[str, int]
    online_store: dict[str, int]
    online_state: dict[str, int]
    inbox: int
    models: dict[str, int]

    @property
    def total(self) -> int:
        """Rows removed from all the stores."""
        stores = (self.warehouse, self.files, self.online_store, self.online_state, self.models)
        return self.inbox + sum(sum(store.values()) for store in stores)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: the fields and ``total``."""
        return {**asdict(self), "total": self.total}


def forget_user(
    paths: Paths,
    user: int | str,
    *,
    online: OnlineStoreSettings | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> ForgetReport:
    """Erase the user (an id as in the source: ``recsys.warehouse.ids``) from every store of the
    home (module doc); the other stores hold the user's key, which the warehouse resolves.
    ``online`` is the online store (None: the home's SQLite store); the warehouse lock is waited
    for up to ``lock_timeout_s`` (then ``WarehouseBusyError``, with nothing changed)."""
    user_id, warehouse = forget_in_warehouse(paths, user, lock_timeout_s=lock_timeout_s)
    inbox = 0
    # the single service's inbox and every replica's (recsys.serving.settings)
    for inbox_path in sorted(ServiceSettings(paths=paths).inbox.parent.glob("inbox*.db")):
        events = EventInbox(inbox_path)
        try:
            inbox += events.forget(user_id)
        finally:
            events.close()
    online_state: dict[str, int] = {}
    redis_online = online is not None and online.kind == "redis"
    if redis_online or (paths.feast / STATE_FILE).exists():
        state = open_state(paths, FeatureConfig(), online or SQLITE)
        try:
            online_state = state.forget(user_id)
            if isinstance(state, RedisUserState):  # replicas share string ids' keys there
                SharedIds(state.client).drop(DIMS["user_id"], source_text(user))
        finally:
            state.close()
    return ForgetReport(
        user_id=user,
        warehouse=warehouse,
        files=forget_in_files(paths, user_id, skip=[paths.models]),
        online_store=features.forget_user(paths, user_id, online=online or SQLITE),
        online_state=online_state,
        inbox=inbox,
        models=models.forget_user(paths.models, user_id),
    )
