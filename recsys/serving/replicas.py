"""What replicas of one home's service share in Redis besides the online features and the
updater's state (``recsys.online.redis_state``): the keys given to new string ids, the
categories of items first seen in posted events, and which inbox row an event id came from.

A single service keeps these in its inbox and memory (``recsys.serving.inbox``,
``Catalogue.learn``); replicas must agree on them, or two of them would give one key to two
different string ids, or one would quarantine an event for an item another has learned. Keys:

- ``recsys:ids:{dim}`` (hash): source id -> key; ``recsys:ids:{dim}:top``: the highest key
  given (the next allocation's floor, with the warehouse's own);
- ``recsys:items:learned`` (hash): item key -> category key;
- ``recsys:event:{event_id}``: "<replica>:<inbox seq>" of the row its event was applied from
  (written by ``RedisUserState.apply``, in the same transaction as the event).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from recsys.online.redis_state import EVENT_ID_PREFIX

LEARNED_KEY = "recsys:items:learned"


def ids_key(dim: str) -> str:
    return f"recsys:ids:{dim}"


def source_of(replica: str, seq: int) -> str:
    """The name of an inbox row among all replicas' (what ``recsys:event:*`` holds)."""
    return f"{replica}:{seq}"


class SharedIds:
    """String ids' keys, learned items and event sources, in the home's Redis database."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def allocate(self, dim: str, source_ids: list[str], floor: int) -> dict[str, int]:
        """Keys for string ids of ``dim``: a source id given a key before (by any replica)
        keeps it, new ones get the next keys above every key given and above ``floor``; one
        optimistic transaction (retried when another replica allocates meanwhile)."""
        key, top_key = ids_key(dim), f"{ids_key(dim)}:top"

        def attempt(pipe: Any) -> dict[str, int]:
            known = pipe.hmget(key, source_ids)
            top = max(int(pipe.get(top_key) or floor), floor)
            keys: dict[str, int] = {}
            new: dict[str, int] = {}
            for source_id, held in zip(source_ids, known, strict=True):
                if held is None:
                    top += 1
                    new[source_id] = top
                keys[source_id] = int(held) if held is not None else top
            if new:
                pipe.multi()
                pipe.hset(key, mapping=new)
                pipe.set(top_key, top)
            return keys

        return self.client.transaction(attempt, key, top_key, value_from_callable=True)

    def key(self, dim: str, source_id: str) -> int | None:
        """The key another replica gave a string id, or None."""
        held = self.client.hget(ids_key(dim), source_id)
        return None if held is None else int(held)

    def remap(self, dim: str, source_id: str, key: int) -> None:
        """The warehouse kept its own key for the id (``InboxDrainer.on_remap``)."""
        self.client.hset(ids_key(dim), source_id, key)

    def drop(self, dim: str, source_id: str) -> None:
        self.client.hdel(ids_key(dim), source_id)

    def learn(self, item_id: int, category_id: int) -> None:
        """Remember an item's category for every replica (the first category given wins)."""
        self.client.hsetnx(LEARNED_KEY, item_id, category_id)

    def category_of(self, item_id: int) -> int | None:
        held = self.client.hget(LEARNED_KEY, item_id)
        return None if held is None else int(held)

    def source_of_event(self, event_id: str) -> str | None:
        """The inbox row an event id was applied from, while it is remembered."""
        held = self.client.get(f"{EVENT_ID_PREFIX}:{event_id}")
        return None if held is None else held.decode()


def start_replica(
    home: Path,
    redis_url: str,
    replica: str,
    sock: socket.socket,
    *,
    drain_interval_s: float | None = None,
) -> subprocess.Popen:
    """Replica ``replica`` of the home in a child process (``main``) serving on ``sock``, a
    listening socket of the caller's (``drain_interval_s`` None: the service's default)."""
    command = [sys.executable, "-m", "recsys.serving.replicas", "--fd", str(sock.fileno())]
    command += ["--home", str(home), "--redis-url", redis_url, "--replica", replica]
    if drain_interval_s is not None:
        command += ["--drain-interval", str(drain_interval_s)]
    # one thread per pool: replicas and their clients share the machine's cores
    env = os.environ | {"POLARS_MAX_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(command, pass_fds=[sock.fileno()], env=env)


def main(argv: list[str] | None = None) -> None:
    """Serve one replica on a listening socket inherited from the parent (tests, benchmarks):
    ``python -m recsys.serving.replicas --fd N --home DIR --redis-url URL --replica ID``.

    The parent binds and listens before it starts the process, so its clients may connect at
    once (the kernel queues them until uvicorn accepts); no polling for "started". The process
    runs as ``recsys serve`` does (no API keys: loopback only), until SIGTERM (a clean stop:
    the inbox is drained) or SIGKILL.
    """
    import argparse

    import uvicorn

    from recsys.features.online_settings import OnlineStoreSettings
    from recsys.home import resolve_home
    from recsys.serving.app import create_app
    from recsys.serving.settings import ServiceSettings

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket")
    parser.add_argument("--home", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--replica", required=True)
    parser.add_argument("--drain-interval", type=float, default=None)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    host, port = sock.getsockname()[:2]
    settings = ServiceSettings(
        paths=resolve_home(args.home),
        online=OnlineStoreSettings.redis(args.redis_url),
        host=host,
        port=port,
        replica=args.replica,
        **({} if args.drain_interval is None else {"drain_interval_s": args.drain_interval}),
    )
    app = create_app(settings)
    app.state.runtime.start()
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
