"""Erase one user's rows from a home's Feast online store (``recsys forget``).

Every user feature view keys its rows by the same serialised entity key (join key ``user_id``,
``recsys.features.online_store.entity_keys``), which no item or category key equals:

- SQLite: the key's rows leave every table of the store's file, in one transaction, their bytes
  zeroed (``secure_delete``) and the WAL checkpointed, so no copy stays in the file;
- Redis: the key's hash (entity key + project, ``RedisOnlineStore``'s layout) is deleted. The
  home's claim on the database is checked first (``recsys.features.redis_claim``).

Feature rows computed from the user's events for other entities (item statistics) keep the
user's share until the next materialisation.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from feast.value_type import ValueType

from recsys.features import feast_compat, online_store
from recsys.features.repo import PROJECT, SQLITE, OnlineStoreSettings, feature_store
from recsys.home import Paths

# The join key of the ``user`` entity (feature_repo/entities.py).
USER_KEY = "user_id"


def forget_user(
    paths: Paths, user_id: int, *, online: OnlineStoreSettings = SQLITE
) -> dict[str, int]:
    """Delete the user's online rows; returns the rows deleted per SQLite table, or the hashes
    deleted (``redis``). A home whose SQLite store was never written has nothing to delete."""
    (key,) = online_store.entity_keys(USER_KEY, ValueType.INT64, [user_id])
    if online.kind == "sqlite":
        path = Path(online.to_feast(paths)["path"])
        return _forget_sqlite(path, key) if path.exists() else {}
    client = feast_compat.redis_client(feature_store(paths, online))
    return {"redis": int(client.delete(key + PROJECT.encode()))}


def _forget_sqlite(path: Path, key: bytes) -> dict[str, int]:
    con = sqlite3.connect(str(path), isolation_level=None)
    try:
        con.execute("pragma busy_timeout = 5000")
        con.execute("pragma secure_delete = on")
        tables = [
            name
            for (name,) in con.execute(
                "select m.name from sqlite_master m where m.type = 'table' and exists "
                "(select 1 from pragma_table_info(m.name) c where c.name = 'entity_key')"
            ).fetchall()
        ]
        con.execute("begin immediate")
        try:
            removed = {
                table: con.execute(
                    f"delete from {_ident(table)} where entity_key = ?", (key,)
                ).rowcount
                for table in tables
            }
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
        con.execute("pragma wal_checkpoint(truncate)")
    finally:
        con.close()
    return removed


def _ident(name: str) -> str:
    """A table name from the store's own catalog, quoted."""
    return '"' + name.replace('"', '""') + '"'
