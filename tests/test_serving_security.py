"""The hardened service (issue 11): API keys, bounded input, a one-line 500, a free event loop
under load, idempotent events, one service per home, forgetting a user."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import duckdb
import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from serving_helpers import (
    ADMIN_KEY,
    KEYS,
    READ_KEY,
    WRITE_KEY,
    bearer,
    stub_forget,
)
from typer.testing import CliRunner

from recsys.cli import app as cli
from recsys.serving.app import create_app
from recsys.serving.auth import ApiKeys, Scope
from recsys.serving.inbox import EventInbox
from recsys.serving.settings import ServiceSettings, ServingError

SERVICE_ROWS = "select user_id, item_id, behavior from events where source_file = ?"


def settings_for(paths, **overrides) -> ServiceSettings:
    return ServiceSettings(paths=paths, **{"drain_interval_s": 3600.0, **overrides})


def client_for(paths, **overrides) -> TestClient:
    return TestClient(create_app(settings_for(paths, **overrides)))


def service_rows(paths) -> list[tuple]:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(SERVICE_ROWS, ["service:/v1/events"]).fetchall()


def an_event(events, **fields) -> dict:
    """A valid event of a known user on a known item, at the end of the data."""
    base = {
        "user_id": int(events.user_id.iloc[0]),
        "item_id": int(events.item_id.iloc[0]),
        "behavior": "view",
        "event_time": str(events.event_time.max().to_pydatetime() + timedelta(minutes=1)),
    }
    return base | fields


# --- 1. credentials ---------------------------------------------------------------------------


def test_keys_are_parsed_per_scope_and_compared_by_digest(tmp_path):
    other = "read-key-second-0123456789"
    keys = ApiKeys.parse(f"read:{READ_KEY}, read:{other}\nadmin:{ADMIN_KEY}", source="env")
    assert keys.scopes_of(READ_KEY) == keys.scopes_of(other) == {Scope.READ}
    assert keys.scopes_of(ADMIN_KEY) == set(Scope)  # admin implies read and write
    assert keys.scopes_of(READ_KEY[:-1]) == frozenset()
    assert READ_KEY not in repr(keys)  # digests only
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-01\nwrite:{WRITE_KEY}\n\n")
    assert ApiKeys.configured(path, environ={}).scopes_of(WRITE_KEY) == {Scope.WRITE}
    assert ApiKeys.configured(None, environ={"RECSYS_API_KEYS": f"read:{READ_KEY}"})
    assert ApiKeys.configured(None, environ={}) is None
    for text, message in [
        ("reader:" + READ_KEY, "entry 1: expected scope:KEY"),
        ("read:short", "16+ characters"),
        ("", "holds no API keys"),
    ]:
        with pytest.raises(ServingError, match=re.escape(message)) as raised:
            ApiKeys.parse(text, source="env")
        assert READ_KEY not in str(raised.value)


def test_every_v1_endpoint_checks_the_key_and_its_scope(home, monkeypatch):
    paths, events = home
    stub_forget(monkeypatch)
    user = int(events.user_id.iloc[0])
    calls = [
        ("GET", f"/v1/users/{user}/recommendations", None, Scope.READ),
        ("GET", f"/v1/users/{user}/interests", None, Scope.READ),
        ("POST", "/v1/events", an_event(events), Scope.WRITE),
        ("DELETE", f"/v1/users/{user}", None, Scope.ADMIN),
    ]
    keys = {Scope.READ: READ_KEY, Scope.WRITE: WRITE_KEY, Scope.ADMIN: ADMIN_KEY}
    with client_for(paths, api_keys=KEYS) as client:
        for method, url, body, scope in calls:
            missing = client.request(method, url, json=body)
            assert missing.status_code == 401, url
            assert missing.headers["www-authenticate"] == "Bearer"
            assert f"the {scope} scope" in missing.json()["error"]
            unknown = client.request(method, url, json=body, headers=bearer("x" * 30))
            assert unknown.status_code == 401 and unknown.json() == {"error": "unknown API key"}
            basic = client.request(method, url, json=body, headers={"Authorization": "Basic eA=="})
            assert basic.status_code == 401
            for held, key in keys.items():
                response = client.request(method, url, json=body, headers=bearer(key))
                allowed = held in (scope, Scope.ADMIN)
                assert (response.status_code == 403) is not allowed, (url, held)
                if allowed:
                    assert response.status_code == 200, (url, held, response.text)
        for url in ("/healthz", "/readyz"):
            assert client.get(url).status_code == 200


def test_a_post_needs_a_json_content_type(home):
    """A text/plain POST is what any web page can send cross-site without a CORS preflight."""
    paths, events = home
    body = json.dumps(an_event(events))
    with client_for(paths) as client:
        for headers in ({"content-type": "text/plain"}, {}, {"content-type": "application/jsonx"}):
            response = client.post("/v1/events", content=body, headers=headers)
            assert response.status_code == 415, headers
            assert "application/json" in response.json()["error"]
        charset = {"content-type": "application/json; charset=utf-8"}
        assert client.post("/v1/events", content=body, headers=charset).status_code == 200
    assert len(EventInbox(paths.home / "serving" / "inbox.db")) == 0  # drained: one event
    assert len(service_rows(paths)) == 1


def test_without_keys_only_loopback_is_served(home):
    paths, _ = home
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert settings_for(paths, host=host).api_keys is None
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org"):
        with pytest.raises(ServingError, match=f"refusing to listen on {host} without API keys"):
            settings_for(paths, host=host)
    assert settings_for(paths, host="0.0.0.0", api_keys=KEYS).host == "0.0.0.0"


def test_recsys_serve_refuses_a_public_host_without_keys(home):
    paths, _ = home
    result = CliRunner().invoke(
        cli, ["serve", "--home", str(paths.home), "--host", "0.0.0.0"], env={"RECSYS_API_KEYS": ""}
    )
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.output
    assert "Traceback" not in result.output


# --- 2. out-of-range input is a 4xx -----------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": 10**20}, "user_id: Input should be less than or equal to"),
        ({"item_id": 10**20}, "item_id: Input should be less than or equal to"),
        ({"category_id": -(10**20)}, "category_id: Input should be greater than or equal to"),
        ({"event_time": "0001-01-01T00:00:00+14:00"}, "out of range"),
        ({"event_time": "9999-12-31T23:59:59-14:00"}, "out of range"),
        ({"event_time": 10**20}, "event_time"),
        ({"session_id": "s" * 129}, "session_id: String should have at most 128 characters"),
        ({"event_id": "e" * 129}, "event_id: String should have at most 128 characters"),
        ({"event_id": ""}, "event_id: String should have at least 1 character"),
        ({"behavior": "v" * 10_000}, "behavior: String should have at most 16 characters"),
    ],
)
def test_out_of_range_fields_are_422(home, fields, message):
    paths, events = home
    with client_for(paths) as client:
        response = client.post("/v1/events", json=an_event(events, **fields))
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
    assert len(response.json()["error"]) < 1000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (DEEP, "recursion limit exceeded"),
        ('{"events": ' + DEEP[:50_000] + DEEP[-50_000:] + "}", "recursion limit exceeded"),
        ('{"user_id": 1, "item_id": 2, "behavior": "view", "session_id": "\\ud800"}', "JSON"),
        (b'{"user_id": 1, "item_id": 2, "behavior": "view", "session_id": "\xed\xa0\x80"}', "JSON"),
        ('{"user_id": NaN, "item_id": 2, "behavior": "view"}', "JSON"),
        ('{"user_id": ' + "9" * 5000 + ', "item_id": 2, "behavior": "view"}', "JSON"),
    ],
)
def test_hostile_json_is_4xx(home, body, message):
    paths, _ = home
    with client_for(paths) as client:
        response = client.post(
            "/v1/events", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


def test_a_lone_surrogate_never_reaches_the_stores():
    """Escapes are refused by the JSON parser; the model refuses them too, whoever builds it
    (UTF-8, hence SQLite and DuckDB, cannot store them)."""
    from pydantic import ValidationError

    from recsys.serving.schemas import EventIn

    with pytest.raises(ValidationError, match="unable to parse raw data as a unicode string"):
        EventIn(user_id=1, item_id=2, behavior="view", session_id="\ud800")


def test_path_ids_are_source_ids_and_overlong_ones_are_422(home):
    paths, _ = home
    with client_for(paths) as client:
        for url in (f"/v1/users/{'u' * 257}/recommendations", f"/v1/users/{'u' * 257}/interests"):
            response = client.get(url)
            assert response.status_code == 422, url
            assert "user_id" in response.json()["error"]
        # beyond int64 a number is a string id like any other: never seen, so a cold start
        for user in (10**20, -(10**20), 2**63 - 1):
            body = client.get(f"/v1/users/{user}/recommendations").json()
            assert body["cold_start"] and body["user_id"] == str(user)
        assert client.get(f"/v1/users/{10**20}/interests").status_code == 404


# --- 3. bounded work per request --------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_it_is_read(home):
    paths, events = home
    huge = json.dumps(an_event(events, session_id="s" * 50_000_000))
    with client_for(paths) as client:
        response = client.post(
            "/v1/events", content=huge, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert "over the limit of 1,048,576 bytes" in response.json()["error"]
        assert response.headers["x-request-id"]
    assert not service_rows(paths)


@contextmanager
def live(app) -> Iterator[int]:
    """The app behind a real uvicorn on a free loopback port (a thread of this process). The
    socket listens before uvicorn starts, so a client may connect at once: the kernel queues
    the connection until uvicorn accepts it (no polling for "started")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            thread.join()


def test_a_chunked_body_is_cut_off_at_the_limit(home):
    """No Content-Length: the limit holds while the body is read, and the client is answered
    413 long before it could send its 50 MB."""
    paths, _ = home
    chunk = b"a" * 65536
    sent = 0
    with live(create_app(settings_for(paths))) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"session_id": "\r\n'
        )
        sock.settimeout(0.05)
        answer = b""
        while sent < 50_000_000 and not answer:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        answer = answer or sock.recv(65536)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16_000_000


def test_post_k_and_recommended_users_are_bounded(home):
    paths, events = home
    start = events.event_time.max().to_pydatetime()
    item = int(events.item_id.iloc[0])

    def batch(users: int) -> dict:
        return {
            "events": [
                {
                    "user_id": 800_000 + i % users,
                    "item_id": item,
                    "behavior": "view",
                    "event_time": str(start + timedelta(seconds=i)),
                }
                for i in range(1000)
            ]
        }

    with client_for(paths) as client:
        url = "/v1/events?return_recommendations=true"
        response = client.post(f"{url}&k=1000", json=batch(10))
        assert response.status_code == 422
        assert "k: Input should be less than or equal to 200" in response.json()["error"]
        response = client.post(f"{url}&k=20", json=batch(11))
        assert response.status_code == 422
        assert "at most 10 users per call, this one has 11" in response.json()["error"]
        assert client.get("/readyz").json()["inbox"]["pending"] == 0  # nothing stored
        response = client.post(f"{url}&k=200", json=batch(10))
        assert response.status_code == 200
        body = response.json()
        assert body["accepted"] == 1000 and len(body["recommendations"]) == 10
        assert len(response.content) < 2_000_000


def test_the_loop_answers_health_checks_while_a_heavy_batch_runs(home):
    """A 1,000-event batch with 10 users' top-200 runs on the store thread; /healthz, on the
    event loop, keeps answering: p99 < 50 ms (printed)."""
    paths, events = home
    app = create_app(settings_for(paths))
    start = events.event_time.max().to_pydatetime()
    item = int(events.item_id.iloc[0])
    body = {
        "events": [
            {
                "user_id": 810_000 + i % 10,
                "item_id": item,
                "behavior": "view",
                "event_time": str(start + timedelta(seconds=i)),
                "event_id": f"heavy-{i}",
            }
            for i in range(1000)
        ]
    }

    async def measure() -> tuple[httpx.Response, list[float], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            began = time.perf_counter()
            post = asyncio.create_task(
                client.post("/v1/events?return_recommendations=true&k=200", json=body)
            )
            latencies = []
            while not post.done():
                sent = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                latencies.append((time.perf_counter() - sent) * 1e3)
                await asyncio.sleep(0.005)
            return await post, latencies, time.perf_counter() - began

    runtime = app.state.runtime
    runtime.start()
    try:
        response, latencies, took = asyncio.run(measure())
    finally:
        runtime.close()
    assert response.status_code == 200
    assert {r["outcome"] for r in response.json()["results"]} == {"applied"}
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\n/healthz during a {took:.2f} s batch: {len(latencies)} probes, ", end="")
    print(f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(latencies):.2f} ms")
    assert len(latencies) >= 20
    assert p99 < 50


# --- errors -----------------------------------------------------------------------------------


def test_an_unexpected_error_is_a_one_line_json_500(home, monkeypatch):
    paths, _ = home
    with client_for(paths) as client:
        service = client.app.state.runtime.service

        def broken(*_):
            raise RuntimeError("secret detail\n  File x.py, line 3")

        monkeypatch.setattr(service, "recommendations", broken)
        response = client.get("/v1/users/1/recommendations", headers={"X-Request-ID": "abc-1"})
        other = client.get("/v1/users/1/recommendations", headers={"X-Request-ID": "bad id!"})
        ok = client.get("/healthz")
        assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError)", "request_id": "abc-1"}
    assert response.headers["x-request-id"] == "abc-1"
    assert "\n" not in response.text and "secret" not in response.text
    assert other.json()["request_id"] == other.headers["x-request-id"] != "bad id!"
    assert len(ok.headers["x-request-id"]) == 32


# --- 8. idempotent events, acknowledged means 200 ---------------------------------------------


def test_an_event_id_is_stored_once_even_across_a_restart(home):
    """Events without event_time get the server clock: only their id tells a retry apart."""
    paths, events = home
    event = an_event(events, event_id="client-42")
    del event["event_time"]
    twin = event | {"behavior": "cart"}  # same id, other content: still the same event
    with client_for(paths) as client:
        first = client.post("/v1/events", json={"events": [event, twin]}).json()
        retry = client.post("/v1/events", json=event).json()
    with client_for(paths) as client:
        after_restart = client.post("/v1/events", json=event).json()
        other = client.post("/v1/events", json=event | {"event_id": "client-43"}).json()
    assert [r["outcome"] for r in first["results"]] == ["applied", "duplicate"]
    assert first["results"][1]["reason"] == "event_id already received"
    assert first["results"][0]["event_id"] == "client-42"
    assert retry["results"][0]["outcome"] == "duplicate"
    assert after_restart["results"][0]["outcome"] == "duplicate"
    assert other["results"][0]["outcome"] == "applied"
    assert len(service_rows(paths)) == 2


def test_event_ids_are_pruned_after_the_retention(home):
    paths, events = home
    with client_for(paths, event_id_retention_hours=0.0) as client:
        client.post("/v1/events", json=an_event(events, event_id="old"))
        client.app.state.runtime.service.drainer.drain(client.app.state.runtime.service.inbox)
        again = client.post("/v1/events", json=an_event(events, event_id="old", behavior="fav"))
    assert again.json()["results"][0]["outcome"] == "applied"


def test_a_failed_online_update_is_reported_not_a_500(home, monkeypatch):
    """The inbox committed: the event is acknowledged (200, outcome "stored") and reaches the
    warehouse; a failing ranking after it costs only the recommendations."""
    paths, events = home
    with client_for(paths) as client:
        service = client.app.state.runtime.service

        def down(_):
            raise ConnectionError("online store unreachable")

        monkeypatch.setattr(service.updater, "apply", down)
        response = client.post("/v1/events", json=an_event(events, event_id="e1"))
        monkeypatch.undo()
        monkeypatch.setattr(service, "recommend", lambda *_: 1 / 0)
        ranked = client.post(
            "/v1/events?return_recommendations=true",
            json=an_event(events, event_id="e2", behavior="cart"),
        )
    assert response.status_code == 200
    [result] = response.json()["results"]
    assert result["outcome"] == "stored"
    assert "ConnectionError: online store unreachable" in result["reason"]
    assert response.json()["accepted"] == 1
    assert ranked.status_code == 200
    assert ranked.json()["results"][0]["outcome"] == "applied"
    assert ranked.json()["recommendations_error"] == "ZeroDivisionError: division by zero"
    assert sorted(r[2] for r in service_rows(paths)) == ["cart", "view"]


# --- 9. one service per home, a busy warehouse at start ----------------------------------------


def test_a_second_service_on_the_home_fails_naming_the_first(home):
    paths, _ = home
    with client_for(paths, port=8123):
        second = create_app(settings_for(paths))
        with pytest.raises(ServingError) as raised:
            second.state.runtime.start()
        message = str(raised.value)
        assert f"pid {os.getpid()}" in message and "127.0.0.1:8123" in message
        assert "\n" not in message
        process = subprocess.run(
            [sys.executable, "-m", "recsys.cli", "serve", "--home", str(paths.home)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RECSYS_API_KEYS": "", "COLUMNS": "400"},
        )
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    [error] = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert f"another service runs on this home (pid {os.getpid()}" in error
    with client_for(paths) as client:  # the first one is gone: the lock is free again
        assert client.get("/healthz").status_code == 200


HOLDER = textwrap.dedent(
    """
    import sys, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin
    """
)


def test_start_waits_for_a_busy_warehouse_then_fails_in_one_line(home):
    paths, _ = home
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(paths.warehouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        app = create_app(settings_for(paths, start_lock_timeout_s=1.5))
        began = time.monotonic()
        with pytest.raises(ServingError) as raised:
            app.state.runtime.start()
        waited = time.monotonic() - began
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert waited >= 1.5
    message = str(raised.value)
    assert message.startswith("cannot start: ") and f"PID {holder.pid}" in message
    assert "\n" not in message
    with client_for(paths) as client:  # the failed start released the home
        assert client.get("/readyz").status_code == 200


# --- forgetting a user ------------------------------------------------------------------------


def test_delete_forgets_the_user_here_too(home, monkeypatch):
    """The service calls forget_user and drops what it holds itself: the user's events still
    in the inbox (which a later drain would carry back), their event ids, their migrations."""
    paths, events = home
    calls = stub_forget(monkeypatch)
    user = int(events.user_id.iloc[0])
    keep = int(events.user_id.unique()[1])
    with client_for(paths, api_keys=KEYS) as client:
        service = client.app.state.runtime.service
        service.catalogue.migrations[user] = ["a migration"]
        for who, event_id in ((user, "mine"), (keep, "theirs")):
            posted = client.post(
                "/v1/events",
                json=an_event(events, user_id=who, event_id=event_id),
                headers=bearer(WRITE_KEY),
            )
            assert posted.json()["results"][0]["outcome"] == "applied"
        response = client.delete(f"/v1/users/{user}", headers=bearer(ADMIN_KEY))
        assert response.status_code == 200
        assert response.json() == {"user_id": user, "events_deleted": 7}
        assert calls == [(paths, user, None)]
        assert user not in service.catalogue.migrations
        assert [row[1] for row in service.inbox.pending()] == [keep]
        again = client.post(
            "/v1/events",
            json=an_event(events, user_id=user, event_id="mine", behavior="fav"),
            headers=bearer(WRITE_KEY),
        )
        assert again.json()["results"][0]["outcome"] == "applied"  # its id was forgotten too
    stored = sorted(r[:1] + r[2:] for r in service_rows(paths))
    assert stored == sorted([(user, "fav"), (keep, "view")])
