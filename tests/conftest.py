"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest

from recsys.features.online_settings import REDIS_URL_ENV, OnlineStoreSettings
from recsys.features.redis_claim import release_redis
from recsys.home import Paths


@pytest.fixture(autouse=True)
def _no_online_store_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands default to ``$RECSYS_REDIS_URL``'s Redis; tests choose their store
    explicitly, whatever the shell that runs them exports."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)


@pytest.fixture
def redis_store() -> Iterator[Callable[[Paths, int], OnlineStoreSettings]]:
    """``redis_store(home, offset)``: the Redis online store of ``$REDIS_URL`` on its database
    number + offset (a Redis database serves one home, so tests that need several homes, or
    that run after each other, take their own), skipping without ``$REDIS_URL``. The homes'
    claims on the databases are released after the test."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set (start redis-server and export REDIS_URL)")
    claims: list[tuple[Paths, OnlineStoreSettings]] = []

    def settings(home: Paths, offset: int) -> OnlineStoreSettings:
        parsed = urlparse(url)
        db = int((parsed.path or "/0").lstrip("/") or 0) + offset
        store = OnlineStoreSettings.redis(parsed._replace(path=f"/{db}").geturl())
        claims.append((home, store))
        return store

    yield settings
    for home, store in claims:
        release_redis(home, store)


# The service tests' homes (``tests/test_serving*.py``); a module with its own ``home`` fixture
# (the warehouse and feature tests) overrides these.


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory):
    """A ready home (ingest -> build -> materialise) with 12 categories, and its events; tests
    copy it (``home``)."""
    from serving_helpers import ready_home

    return ready_home(tmp_path_factory.mktemp("template"))


@pytest.fixture
def home(template, tmp_path):
    """A copy of ``template``'s home (tests that post events or write must not share one)."""
    from serving_helpers import copy_home

    paths, events = template
    return copy_home(paths, tmp_path / "home"), events
