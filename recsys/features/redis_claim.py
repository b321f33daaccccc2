"""One Redis database serves one recsys home: the home's claim on it, and its release.

Feast keys online rows by project and entity, so two homes writing one Redis database would
overwrite each other's rows. The first home to open a database claims it under
``REDIS_CLAIM_KEY`` (which cannot collide with Feast's binary keys); another home that still
exists is refused.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.features.errors import FeatureStoreError
from recsys.home import Paths

if TYPE_CHECKING:
    import redis

    from recsys.features.online_settings import OnlineStoreSettings

# The value names the home: "<hostname>:<home folder>".
REDIS_CLAIM_KEY = "recsys:home"


def home_id(paths: Paths) -> str:
    """The home's name in its claim: "<hostname>:<home folder>"."""
    return f"{socket.gethostname()}:{paths.home.resolve()}"


def _client(online: OnlineStoreSettings) -> redis.Redis:
    import redis

    return redis.Redis.from_url(online.redis_url, socket_connect_timeout=5)


def claim_redis(paths: Paths, online: OnlineStoreSettings) -> None:
    """Claim the Redis database of ``online`` for this home, or raise ``FeatureStoreError``
    when another home holds it. A claim by a home of this machine whose folder is gone is
    stale and taken over; a claim from another machine is never guessed stale."""
    import redis

    me = home_id(paths)
    client = _client(online)
    try:
        for _ in range(10):  # a compare-and-set that lost a race is retried
            if client.set(REDIS_CLAIM_KEY, me, nx=True):
                return
            with client.pipeline() as pipe:
                try:
                    pipe.watch(REDIS_CLAIM_KEY)
                    held = pipe.get(REDIS_CLAIM_KEY)
                    if held is None:
                        continue
                    holder = held.decode()
                    if holder == me:
                        return
                    host, _, folder = holder.partition(":")
                    if host != socket.gethostname() or Path(folder).exists():
                        raise FeatureStoreError(
                            f"the Redis database {online.redis_url} holds the online features "
                            f"of another recsys home ({holder}); two homes in one database "
                            "overwrite each other's rows. Give this home its own database "
                            "(redis://host:port/N), or free this one: `recsys features "
                            f"release --redis-url {online.redis_url} --home {folder}` on "
                            f"{host}, or, if that home is gone, redis-cli -u "
                            f"{online.redis_url} del {REDIS_CLAIM_KEY}"
                        )
                    pipe.multi()
                    pipe.set(REDIS_CLAIM_KEY, me)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
    except redis.RedisError as exc:
        raise FeatureStoreError(
            f"cannot reach the Redis online store at {online.redis_url}: {exc}"
        ) from None
    raise FeatureStoreError(f"the claim on {online.redis_url} kept changing; try again")


def release_redis(paths: Paths, online: OnlineStoreSettings) -> bool:
    """Drop this home's claim on the Redis database (its rows stay); False when it held none."""
    client = _client(online)
    # compare-and-delete in one step, so another home's claim is never dropped
    script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"
    return bool(client.eval(script, 1, REDIS_CLAIM_KEY, home_id(paths)))
