"""The HTTP service end to end: endpoints, 4xx cases, the real-time path and durability."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pandas as pd
import polars as pl
import pytest
from fastapi.testclient import TestClient
from model_helpers import train_learned

from recsys.config import FeatureConfig
from recsys.features.read import OnlineReader, online_features
from recsys.features.repo import feature_store
from recsys.home import resolve_home
from recsys.ranking.policy import POLICIES, Ranking
from recsys.ranking.profiles import profiles_from_features
from recsys.ranking.ranker import LogisticRanker
from recsys.ranking.sources import Users
from recsys.ranking.tables import ItemTables
from recsys.serving.app import create_app
from recsys.serving.catalogue import load_catalogue
from recsys.serving.inbox import EventInbox
from recsys.serving.schemas import RecommendationsOut
from recsys.serving.service import ModelState
from recsys.serving.settings import ServiceSettings, ServingError
from recsys.warehouse.build import build
from recsys.warehouse.writeback import write_run

SERVICE_ROWS = "select user_id, item_id, behavior, event_time from events where source_file = ?"


def _client(paths, model: ModelState | None = None, **overrides) -> TestClient:
    settings = ServiceSettings(paths=paths, **{"drain_interval_s": 3600.0, **overrides})
    return TestClient(create_app(settings, model=model))


def _hand_ranker(weights: dict[str, float]) -> LogisticRanker:
    """A logistic ranker with the given weights on sign(x) log1p(|x|) of the named features."""
    return LogisticRanker.from_dict(
        {
            "kind": "logistic",
            "l2": 0.0,
            "mean": [0.0] * len(weights),
            "scale": [1.0] * len(weights),
            "weights": [*weights.values(), 0.0],
        }
    )


def _tables(paths) -> ItemTables:
    """Item tables from the warehouse's ``item_stats``: the items, each category's items by
    their share of its long-horizon popularity; no transitions."""
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        items = con.sql(
            "select item_id, category_id, pop_short, pop_long, trend from item_stats order by 1"
        ).pl()
    category_items = (
        items.with_columns(share=pl.col("pop_long") / pl.col("pop_long").sum().over("category_id"))
        .sort(["category_id", "share", "item_id"], descending=[False, True, False])
        .group_by("category_id", maintain_order=True)
        .head(50)
        .select("category_id", "item_id", "share")
    )
    return ItemTables(
        as_of=datetime.min,
        items=items,
        transitions=pl.DataFrame(
            schema={"src_item_id": pl.Int64, "item_id": pl.Int64, "p": pl.Float64}
        ),
        category_items=category_items,
        category_transitions=pl.DataFrame(
            schema={"src_category_id": pl.Int64, "dst_category_id": pl.Int64, "p": pl.Float64}
        ),
    )


def _model(
    paths, policy: str, weights: dict[str, float], ann=None, version: str = "hand-made"
) -> ModelState:
    """A ranking of ``policy`` over the home's item tables, ordered by a hand-set ranker
    (what `recsys train` would fit), served as ``version``."""
    ranking = Ranking(
        POLICIES[policy],
        FeatureConfig(),
        _tables(paths),
        ann=ann,
        ranker=_hand_ranker(weights),
        feature_names=tuple(weights),
    )
    return ModelState(ranking, version, f"loaded: {version} (policy {policy})")


# The category source's items outrank the user's own ones, popular items come last.
CATEGORY_FIRST = {"repeat_score": 1.0, "category_score": 100.0, "popular_rr": 0.1}


def _service_events(paths) -> pd.DataFrame:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(SERVICE_ROWS, ["service:/v1/events"]).fetchdf()


def _last_time(events: pd.DataFrame, user: int):
    return events[events.user_id == user].event_time.max().to_pydatetime()


def _post_history(client, events: pd.DataFrame, user: int, category: int, start) -> None:
    """Eight events in one category, one per 10 minutes from ``start``, for a user without
    history (a new user id), so that the test alone decides the user's interests."""
    items = events[events.category_id == category].drop_duplicates("item_id").item_id
    batch = [
        {
            "user_id": user,
            "item_id": int(items.iloc[i % len(items)]),
            "behavior": "cart" if i % 4 == 3 else "view",
            "event_time": str(start + timedelta(minutes=10 * i)),
        }
        for i in range(8)
    ]
    body = client.post("/v1/events", json={"events": batch}).json()
    assert {r["outcome"] for r in body["results"]} == {"applied"}


def _categories_by_size(events: pd.DataFrame) -> list[int]:
    return events.drop_duplicates("item_id").category_id.value_counts().index.tolist()


def test_profile_reader_matches_get_online_features(home):
    paths, events = home
    store = feature_store(paths)
    reader = OnlineReader(store)
    for user in events.user_id.unique()[:5].tolist():
        want = online_features(paths, user, store=store)
        want.pop("user_id")
        got = reader.read(user)
        assert got is not None and set(got.features) == set(want)
        for name, value in want.items():
            if isinstance(value, float) or (
                value and isinstance(value, list) and isinstance(value[0], float)
            ):
                assert got.features[name] == pytest.approx(value), name
            else:
                assert got.features[name] == value, name
    assert reader.read(10**9) is None


def test_recommendations_for_a_known_user(home):
    paths, events = home
    user = int(events.user_id.iloc[0])
    with _client(paths) as client:
        response = client.get(f"/v1/users/{user}/recommendations", params={"k": 15})
    assert response.status_code == 200
    body = RecommendationsOut.model_validate(response.json())
    assert body.model_version == "none" and body.ranker == "repeat"  # no model: repeat policy
    assert not body.cold_start and len(body.items) == 15
    assert len({i.item_id for i in body.items}) == 15
    scores = [i.score for i in body.items]
    assert scores == sorted(scores, reverse=True)
    assert {i.source for i in body.items} <= {"repeat", "popular"}
    seen = set(events[events.user_id == user].item_id)
    assert all(i.source != "repeat" or i.item_id in seen for i in body.items)
    # The user's own items first, then popular ones.
    sources = [i.source for i in body.items]
    assert sources == sorted(sources, key=lambda s: s != "repeat")
    assert all(i.reason for i in body.items)


def test_cold_start_gets_trending_items(home):
    paths, _ = home
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        want = [
            r[0]
            for r in con.execute(
                "select item_id from item_stats order by pop_long desc, item_id limit 7"
            ).fetchall()
        ]
    with _client(paths) as client:
        body = client.get("/v1/users/987654321/recommendations", params={"k": 7}).json()
    assert body["cold_start"] is True
    assert [i["item_id"] for i in body["items"]] == want
    assert {i["reason"] for i in body["items"]} == {"trending now"}


def test_a_new_category_shows_up_within_the_call(home):
    """A user with a day-old interest in category A starts browsing category B: the refreshed
    top-k of that very call holds B's popular items (the category source of the served blend
    policy reads the updated short-horizon interests), next to A's."""
    paths, events = home
    user = 900_001
    old, new = _categories_by_size(events)[:2]
    items = events[events.category_id == new].drop_duplicates("item_id").item_id.head(4).tolist()
    start = events.event_time.max().to_pydatetime()
    with _client(paths, _model(paths, "blend", CATEGORY_FIRST)) as client:
        _post_history(client, events, user, old, start)
        before = client.get(f"/v1/users/{user}/recommendations").json()
        assert before["ranker"] == "blend" and before["model_version"] == "hand-made"
        assert new not in {i["category_id"] for i in before["items"]}
        when = start + timedelta(days=1)
        batch = [
            {
                "user_id": user,
                "item_id": int(item),
                "behavior": "cart" if i % 2 else "view",
                "event_time": str(when + timedelta(minutes=i)),
            }
            for i, item in enumerate(items)
        ]
        response = client.post(
            "/v1/events", params={"return_recommendations": "true"}, json={"events": batch}
        )
        assert response.status_code == 200
        body = response.json()
        assert {r["outcome"] for r in body["results"]} == {"applied"}
        [recs] = body["recommendations"]
        fresh = [i for i in recs["items"] if i["category_id"] == new]
        # Not only the browsed items themselves: the category's popular items came with them.
        assert len([i for i in fresh if i["item_id"] not in items]) >= 3
        assert any(i["source"] == "category" for i in fresh)
        assert old in {i["category_id"] for i in recs["items"]}  # the old interest stays
        again = client.get(f"/v1/users/{user}/recommendations").json()
    assert again["items"] == recs["items"]


def test_a_known_users_event_adds_to_their_history(home):
    """A user with history posts one event: the interests hold the history plus the event, as
    the marts rebuilt with it say. The updater's state file is gone, so the service seeds it
    from the warehouse at startup."""
    paths, events = home
    user = int(events.user_id.value_counts().index[0])
    mine = events[events.user_id == user]
    assert mine.category_id.nunique() > 1
    item = mine.iloc[-1]
    when = events.event_time.max().to_pydatetime() + timedelta(hours=1)
    event = {"user_id": user, "item_id": int(item.item_id), "behavior": "buy"}
    (paths.feast / "online_state.db").unlink()
    with _client(paths) as client:
        body = client.post("/v1/events", json=event | {"event_time": str(when)}).json()
        assert body["results"][0]["outcome"] == "applied"
        after = client.get(f"/v1/users/{user}/interests").json()
    build(paths, as_of=when + timedelta(microseconds=1), snapshots=[])  # drained on shutdown
    with duckdb.connect() as con:
        want = con.execute(
            "select * from read_parquet(?) where user_id = ?",
            [str(paths.features / "user_interest.parquet"), user],
        ).fetchdf()
    for horizon in ("short", "long"):
        got = after[horizon]
        assert [c["category_id"] for c in got] == list(want[f"top_categories_{horizon}"][0])
        assert [c["score"] for c in got] == pytest.approx(
            list(want[f"top_scores_{horizon}"][0]), abs=1e-6
        )
    assert len(after["long"]) == mine.category_id.nunique()


def test_exclude_purchased_policy(home):
    paths, events = home
    user = int(events.user_id.iloc[1])
    item = int(events[events.user_id == user].item_id.iloc[0])
    when = _last_time(events, user) + timedelta(minutes=5)
    with _client(paths) as client:
        posted = client.post(
            "/v1/events",
            json={"user_id": user, "item_id": item, "behavior": "buy", "event_time": str(when)},
        ).json()
        assert posted["results"][0]["outcome"] == "applied"
        url = f"/v1/users/{user}/recommendations"
        excluded = client.get(url, params={"exclude_purchased": "true"}).json()["items"]
        allowed = client.get(url, params={"exclude_purchased": "false"}).json()["items"]
    assert item not in {i["item_id"] for i in excluded}
    assert item in {i["item_id"] for i in allowed if i["source"] == "repeat"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 422, "not valid JSON"),
        ({"user_id": 1, "behavior": "view"}, 422, "item_id: Field required"),
        ({"user_id": 1, "item_id": 2, "behavior": "click2"}, 422, "unknown behavior 'click2'"),
        ({"user_id": "x" * 257, "item_id": 2, "behavior": "view"}, 422, "user_id"),
        ({"user_id": True, "item_id": 2, "behavior": "view"}, 422, "user_id"),
        ({"user_id": 1, "item_id": 2, "behavior": "view", "colour": 1}, 422, "colour"),
        (
            {"user_id": 1, "item_id": 2, "behavior": "view", "event_time": "2999-01-01"},
            422,
            "more than a day in the future",
        ),
        ({"events": []}, 422, "events"),
        ([1, 2], 422, "expected an event object"),
        ({"events": [{"user_id": 1, "item_id": 2, "behavior": "view"}] * 11}, 413, "limit of 10"),
    ],
)
def test_bad_events_get_a_clear_4xx(home, body, status, message):
    paths, _ = home
    with _client(paths, max_batch=10) as client:
        if isinstance(body, str):
            kwargs = {"content": body, "headers": {"content-type": "application/json"}}
        else:
            kwargs = {"json": body}
        response = client.post("/v1/events", **kwargs)
        assert response.status_code == status
        assert message in response.json()["error"]
        assert len(EventInbox(paths.home / "serving" / "inbox.db")) == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/v1/users/1/recommendations?k=0", "k: Input should be greater than or equal to 1"),
        ("/v1/users/1/recommendations?k=1001", "k: Input should be less than or equal to 1000"),
        (f"/v1/users/{'x' * 257}/recommendations", "user_id"),
        (f"/v1/users/{'x' * 257}/interests", "user_id"),
    ],
)
def test_bad_queries_get_a_clear_422(home, url, message):
    paths, _ = home
    with _client(paths) as client:
        response = client.get(url)
    assert response.status_code == 422
    assert message in response.json()["error"]


def test_outcomes_per_event_duplicates_out_of_order_and_unknown_items(home):
    paths, events = home
    user = int(events.user_id.iloc[2])
    known = int(events.item_id.iloc[0])
    late = _last_time(events, user) + timedelta(minutes=1)
    early = _last_time(events, user) - timedelta(hours=3)
    batch = [
        {"user_id": user, "item_id": known, "behavior": "cart", "event_time": str(late)},
        {"user_id": user, "item_id": known, "behavior": "cart", "event_time": str(late)},
        {"user_id": user, "item_id": known, "behavior": "pv", "event_time": str(early)},
        {"user_id": user, "item_id": 10**9, "behavior": "view"},
        {"user_id": user, "item_id": 10**9 + 1, "behavior": "view", "category_id": 77},
    ]
    with _client(paths) as client:
        body = client.post("/v1/events", json={"events": batch}).json()
    outcomes = [r["outcome"] for r in body["results"]]
    assert outcomes == ["applied", "duplicate", "applied", "quarantined", "applied"]
    assert "unknown item" in body["results"][3]["reason"]
    assert body["accepted"] == 4
    stored = _service_events(paths)  # drained on shutdown, duplicates once
    assert len(stored) == 3 and set(stored.behavior) == {"cart", "view"}


def test_interests_and_migrations(home):
    paths, events = home
    known = int(events.user_id.iloc[3])
    want = online_features(paths, known, store=feature_store(paths))
    user = 900_002
    old, new = _categories_by_size(events)[:2]
    start = events.event_time.max().to_pydatetime()
    with _client(paths, _model(paths, "blend", CATEGORY_FIRST)) as client:
        body = client.get(f"/v1/users/{known}/interests").json()
        assert [c["category_id"] for c in body["short"]] == want[
            "user_interest_short__top_categories_short"
        ]
        assert sum(c["share"] for c in body["short"]) == pytest.approx(1.0)
        assert body["shift"]["js_divergence"] == pytest.approx(
            want["user_interest_shift__js_divergence"]
        )
        assert client.get("/v1/users/987654321/interests").status_code == 404
        # Two days later, two purchases in a new category flip the short-horizon top
        # (2 x 4 > 10 x 1/4) but not the long one (10 x 2^(-2/14) > 8): an online migration.
        _post_history(client, events, user, old, start)
        buys = events[events.category_id == new].drop_duplicates("item_id").item_id.head(2)
        batch = [
            {
                "user_id": user,
                "item_id": int(item),
                "behavior": "buy",
                "event_time": str(start + timedelta(days=2, minutes=i)),
            }
            for i, item in enumerate(buys)
        ]
        posted = client.post(
            "/v1/events", params={"return_recommendations": "true"}, json={"events": batch}
        ).json()
        after = client.get(f"/v1/users/{user}/interests").json()
    assert after["short"][0]["category_id"] == new
    assert after["long"][0]["category_id"] == old
    online = [m for m in after["migrations"] if m["origin"] == "online"]
    assert [(m["from_category_id"], m["to_category_id"]) for m in online] == [(old, new)]
    recs = posted["recommendations"][0]
    assert recs["migration"] == {"from_category_id": old, "to_category_id": new, "origin": "online"}
    reasons = {i["reason"] for i in recs["items"] if i["category_id"] == new}
    assert f"you moved from category {old} to {new} this week" in reasons


def test_health_readiness_and_docs(home):
    paths, _ = home
    with _client(paths) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["model"].startswith("degraded: no model")
        assert ready.json()["catalogue"].startswith("loaded: ")
        schema = client.get("/openapi.json").json()
        assert {"/v1/events", "/v1/users/{user_id}/recommendations"} <= set(schema["paths"])
        assert "EventIn" in schema["components"]["schemas"]
        assert client.get("/docs").status_code == 200


def test_missing_home_fails_clearly(tmp_path):
    with pytest.raises(ServingError, match="warehouse.duckdb is missing"):
        create_app(ServiceSettings(paths=resolve_home(tmp_path)))


class RandomQueries:
    """An ``AnnSearch`` over random item embeddings with one random query per user."""

    def __init__(self, item_ids: np.ndarray, seed: int = 0) -> None:
        from recsys.models.index import EmbeddingIndex

        self.rng = np.random.default_rng(seed)
        embeddings = self.rng.standard_normal((len(item_ids), 8)).astype(np.float32)
        self.index = EmbeddingIndex(item_ids, embeddings, method="brute_force")
        self.calls: list[set[int]] = []  # the users of each search

    def search(self, users: Users, n: int) -> pl.DataFrame:
        from recsys.models.index import search_frame

        self.calls.append(set(users.user_id.tolist()))
        queries = self.rng.standard_normal((len(users.user_id), 8)).astype(np.float32)
        return search_frame(users.user_id, queries, self.index, n)


def test_an_injected_model_with_an_ann_source_is_served(home):
    """A learned-policy ranking with an ANN search plugs in: its items come back as "ann"
    candidates, and the answer names the model and its policy."""
    paths, events = home
    catalogue = load_catalogue(paths, lock_timeout_s=5)
    ann = RandomQueries(catalogue.item_ids)
    model = _model(paths, "learned", {"ann_score": 10.0, "repeat_score": 1.0}, ann, "stub-ann")
    user = int(events.user_id.iloc[0])
    settings = ServiceSettings(paths=paths, drain_interval_s=3600.0)
    with TestClient(create_app(settings, model=model, catalogue=catalogue)) as client:
        assert client.get("/readyz").json()["model"] == "loaded: stub-ann (policy learned)"
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 50}).json()
        cold = client.get("/v1/users/987654321/recommendations", params={"k": 5}).json()
    assert body["model_version"] == "stub-ann" and body["ranker"] == "learned"
    assert "ann" in {s for i in body["items"] for s in i["sources"]}
    assert ann.calls == [{user}]  # one search per request; a cold-start user is not searched
    assert cold["cold_start"] and cold["model_version"] == "stub-ann"


@pytest.fixture(scope="module")
def trained(template, tmp_path_factory):
    """A copy of the template home with a tiny interest model trained on it (``recsys train``);
    the learned policy (the one with the ANN source) is served whatever the validation says."""
    pytest.importorskip("tensorflow")

    paths, events = template
    copy = resolve_home(tmp_path_factory.mktemp("trained") / "home")
    shutil.copytree(paths.home, copy.home)
    report = train_learned(copy)
    return copy, events, report


def test_a_trained_model_is_loaded_and_retrieves(trained, tmp_path):
    """`recsys serve` after `recsys train`: /readyz names the model and its policy, "ann"
    candidates appear, and the query tower on the ONLINE profile agrees with training's batch
    encoding and with the exported TFRS index (query tower inside)."""
    import tensorflow as tf

    from recsys.models.index import load_index
    from recsys.models.saved import SavedRetrieval

    template_paths, events, report = trained
    paths = resolve_home(tmp_path / "home")
    shutil.copytree(template_paths.home, paths.home)
    users = [int(u) for u in events.user_id.unique()[:2]]
    with _client(paths) as client:
        ready = client.get("/readyz").json()["model"]
        assert ready == f"loaded: {report.version} (policy learned)"
        body = client.get(f"/v1/users/{users[0]}/recommendations", params={"k": 50}).json()
    assert body["model_version"] == report.version and body["ranker"] == "learned"
    assert "ann" in {s for i in body["items"] for s in i["sources"]}

    saved = SavedRetrieval(paths.models / report.version)
    reader = OnlineReader(feature_store(paths))
    rows = [(u, p.as_of, p.features) for u in users if (p := reader.read(u)) is not None]
    assert len(rows) == 2
    profiles = profiles_from_features(rows)
    # A request encodes one row (encode_query_row), training and scoring whole frames.
    one = saved.embed(profiles.head(1))
    both = saved.embed(profiles)
    np.testing.assert_allclose(one[0], both[0], rtol=1e-5, atol=1e-6)
    ids = profiles["user_id"].to_numpy()
    queries = saved.encoder.encode_queries(profiles, saved.gnn_user_rows(ids))
    index = load_index(paths.models / report.version / "index")
    scores, items = index({k: tf.constant(v) for k, v in queries.items()})
    n = items.shape[1]
    # The service's path: users straight from the online rows, no profile frame.
    found = saved.search(Users.from_features(rows), n)
    # The same top n up to float32 near-ties: equal score lists, and every item the exported
    # index returned scores there as the service's index scores it for that query.
    np.testing.assert_allclose(
        found["ann_score"].to_numpy(), scores.numpy().ravel(), rtol=1e-4, atol=1e-5
    )
    for row, query in enumerate(saved.embed(profiles)):
        np.testing.assert_allclose(
            saved.index.score(query, items.numpy()[row]), scores.numpy()[row], rtol=1e-4, atol=1e-5
        )
    same = found["item_id"].to_numpy() == items.numpy().ravel()
    assert same.mean() > 0.95


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Block until uvicorn reports that the app's startup (its lifespan) completed, then
    check /readyz. The service's stderr keeps being drained so that it never blocks."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError(f"the service was not ready within {timeout_s}s") from None
        assert line is not None, "the service exited during startup"
        if "Application startup complete" in line:
            assert httpx.get(f"{url}/readyz", timeout=5.0).status_code == 200
            return


def test_acknowledged_events_survive_a_crash(home):
    """kill -9 right after the acknowledgements: the events are in the inbox, and the next start
    replays them into the online state and drains them into the warehouse."""
    paths, events = home
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys.cli",
            "serve",
            "--home",
            str(paths.home),
            "--port",
            str(port),
            "--drain-interval",
            "3600",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(url, process)
        user = 555_000
        item = int(events.item_id.iloc[0])
        base = events.event_time.max().to_pydatetime()
        for i in range(5):
            stamp = str(base + timedelta(seconds=i))
            ack = httpx.post(
                f"{url}/v1/events",
                json={"user_id": user, "item_id": item, "behavior": "view", "event_time": stamp},
            )
            assert ack.json()["results"][0]["outcome"] == "applied"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert len(EventInbox(paths.home / "serving" / "inbox.db")) == 5
    assert _service_events(paths).empty
    (paths.feast / "online_state.db").unlink()  # as if the updater never saw them
    with _client(paths) as client:
        interests = client.get(f"/v1/users/{user}/interests").json()
        assert interests["short"][0]["score"] == pytest.approx(5.0, abs=1e-3)
        assert client.get("/readyz").json()["inbox"]["pending"] == 0
    assert len(_service_events(paths)) == 5


ANALYST = textwrap.dedent(
    """
    import sys, duckdb
    from recsys.home import resolve_home
    from recsys.warehouse.writeback import open_for_read
    paths, n = resolve_home(sys.argv[1]), int(sys.argv[2])
    for _ in range(n):
        with open_for_read(paths, lock_timeout_s=30) as con:
            con.execute("select count(*) from latest_recommendations").fetchone()
            con.execute("select count(*) from events").fetchone()
    print("ok")
    """
)


def test_analysts_read_while_events_are_posted(home):
    """A second process keeps opening the warehouse read-only while the service drains posted
    events into it every 20 ms: both go on, and every event arrives."""
    paths, events = home
    write_run(
        paths,
        pl.DataFrame(
            {
                "user_id": [1],
                "rank": [1],
                "item_id": [2],
                "score": [0.5],
                "category_id": [3],
                "source": ["popular"],
                "sources": [["popular"]],
                "reason": ["popular right now"],
            }
        ),
        model_version="test",
        features_as_of=events.event_time.max().to_pydatetime(),
        metrics={},
    )
    analyst = subprocess.Popen(
        [sys.executable, "-c", ANALYST, str(paths.home), "150"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    item = int(events.item_id.iloc[0])
    base = events.event_time.max().to_pydatetime()
    with _client(paths, drain_interval_s=0.02, lock_timeout_s=30.0) as client:
        for i in range(60):
            event = {
                "user_id": 777_000 + i % 3,
                "item_id": item,
                "behavior": "view",
                "event_time": str(base + timedelta(seconds=i)),
            }
            assert client.post("/v1/events", json=event).status_code == 200
    out, err = analyst.communicate(timeout=120)
    assert analyst.returncode == 0, err
    assert out.strip() == "ok"
    assert len(_service_events(paths)) == 60


def test_training_writes_user_item_and_category_embeddings_to_feast(trained):
    """`recsys train` writes the GNN readouts to Parquet and the Feast embedding views."""
    paths, events, report = trained
    assert {p.name for p in report.embedding_files} == {
        "user_embeddings.parquet",
        "item_embeddings.parquet",
        "category_embeddings.parquet",
    }
    store = feature_store(paths)
    for view, key, entity in (
        ("user_embedding", "user_id", int(events.user_id.iloc[0])),
        ("item_embedding", "item_id", int(events.item_id.iloc[0])),
        ("category_embedding", "category_id", int(events.category_id.iloc[0])),
    ):
        got = store.get_online_features(
            features=[f"{view}:embedding"], entity_rows=[{key: entity}]
        ).to_dict()["embedding"][0]
        assert got is not None and len(got) > 0 and np.isfinite(got).all(), view
