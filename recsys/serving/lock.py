"""One service per home: an exclusive ``flock`` on ``<home>/service.lock``.

Two services on one home would each replay and drain the same inbox and push the same users'
rows from two updaters. The holder writes who it is (pid, host name, address, start time) into
the file, so a second start fails in one line that names it. The kernel drops the lock when the
holder's process ends, even by ``kill -9``; the file itself stays (deleting it would let a
third process lock a new file while the second still holds the old one).

Replicas (a Redis online store: state shared in Redis, one inbox each) hold the home's lock
shared, so any number of them run while a single SQLite-backed service is kept off, and each
holds its own replica's lock exclusively, so no two processes replay and drain one inbox.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from recsys.serving.settings import ServingError


class ServiceLock:
    """The held lock; ``release()`` (or the process's end) gives it up."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, path: Path, *, address: str, shared: bool = False) -> ServiceLock:
        """Take the lock (``shared``: along with other replicas) or raise ``ServingError``
        naming its holder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise ServingError(
                f"another service runs on this home ({holder}); stop it first, or give this "
                f"one its own --home (lock: {path})"
            ) from None
        # Replicas all write the same line, so that none overwrites another's with its own.
        me = (
            {"replicas": True}
            if shared
            else {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "address": address,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        body = json.dumps(me).encode()
        os.pwrite(handle, body, 0)
        os.ftruncate(handle, len(body))
        return cls(path, handle)

    def release(self) -> None:
        if self._handle >= 0:
            os.close(self._handle)  # closing the descriptor releases the flock
            self._handle = -1


def _holder(handle: int) -> str:
    """The holder's line as it wrote it, or what can be said without it."""
    try:
        found = json.loads(os.pread(handle, 4096, 0) or b"{}")
        if found.get("replicas"):
            return "replicas sharing a Redis online store; each listens on its own address"
        return (
            f"pid {found['pid']} on {found['host']}, listening on {found['address']}, "
            f"since {found['started_at']}"
        )
    except (ValueError, KeyError, TypeError):
        return "its holder is still starting"
