"""The learned interest model: protocol, no leakage, point-in-time training rows, the policy
chosen on validation, save/load, the ranked rows `recsys score` writes back and a win over
popularity on simulated interest shifts.

One small simulation is fitted once per module with a tiny configuration (TensorFlow training
dominates the run time); the win over popularity trains the default one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

tf = pytest.importorskip("tensorflow")

from recsys.models import data as learned_data  # noqa: E402
from recsys.models.artifacts import ArtifactError  # noqa: E402
from recsys.models.gnn import GnnConfig  # noqa: E402
from recsys.models.interest import InterestConfig, InterestModel  # noqa: E402
from recsys.models.two_tower import TwoTowerConfig  # noqa: E402
from recsys.ranking.policy import OUTPUT_COLUMNS, SIMPLE_POLICIES  # noqa: E402
from recsys.ranking.sources import Users  # noqa: E402
from recsys.warehouse.simulate import SimulationConfig, simulate  # noqa: E402
from recsys.warehouse.writeback import SOURCES  # noqa: E402

TINY = InterestConfig(
    policies=("repeat", "blend", "learned"),
    gnn=GnnConfig(hidden_dim=8, epochs=1, batch_size=4096, show_progress=False),
    towers=TwoTowerConfig(
        embedding_dim=8, user_hash_bins=1000, epochs=1, batch_size=256, show_progress=False
    ),
    show_progress=False,
)

K = 20


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return simulate(SimulationConfig(users=200, items=1000, days=8, seed=3)).events


@pytest.fixture(scope="module")
def as_of(events: pl.DataFrame) -> datetime:
    last = events["event_time"].max()
    return last.replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def fitted(events, as_of):
    """The model fitted on ALL events (later ones included) and what its warehouse held."""
    seen: list[tuple[int, datetime]] = []
    original = learned_data.load_events

    def spy(paths, frame):
        rows = original(paths, frame)
        con = learned_data.connect(paths, read_only=True)
        seen.append(con.execute("select count(*), max(event_time) from events").fetchone())
        con.close()
        return rows

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(learned_data, "load_events", spy)
        model = InterestModel(TINY).fit(events, as_of)
    return model, seen


def test_private_warehouse_holds_only_events_before_as_of(fitted, events, as_of):
    _, seen = fitted
    expected = events.filter(pl.col("event_time") < as_of)
    assert seen == [(expected.height, expected["event_time"].max())]
    assert events["event_time"].max() >= as_of  # the input did hold later events


def test_recommend_shape_and_validity(fitted, events, as_of):
    model, _ = fitted
    train = events.filter(pl.col("event_time") < as_of)
    users = np.unique(train["user_id"].to_numpy())[:50]
    recs = model.recommend(users, K)
    assert recs.shape == (len(users), K) and recs.dtype == np.int64
    assert (recs >= 0).all()
    assert np.isin(recs, train["item_id"].unique().to_numpy()).all()
    assert all(len(set(row)) == K for row in recs.tolist())


def test_training_rows_are_point_in_time(fitted, events):
    model, _ = fitted
    examples = model.retriever_.examples
    assert examples.height > 100
    assert (examples["event_timestamp"] <= examples["label_time"]).all()
    # Oracle: the first item of the joined recent sequence is an item of the user's last event
    # strictly before the feature snapshot.
    last = (
        examples.select("user_id", "event_timestamp")
        .unique()
        .join(events.select("user_id", "item_id", "event_time"), on="user_id")
        .filter(pl.col("event_time") < pl.col("event_timestamp"))
        .filter(
            pl.col("event_time") == pl.col("event_time").max().over("user_id", "event_timestamp")
        )
        .group_by("user_id", "event_timestamp")
        .agg(pl.col("item_id").alias("last_items"))
    )
    checked = examples.join(last, on=["user_id", "event_timestamp"])
    assert checked.height == examples.height
    assert all(
        item in items for item, items in checked.select("last_seq_item", "last_items").iter_rows()
    )


def test_the_served_policy_is_chosen_on_validation(fitted):
    model, _ = fitted
    assert set(model.validation_) == {"repeat", "blend", "learned"}
    bounds = {n: v.get("ndcg_gain_lower_bound") for n, v in model.validation_.items()}
    assert all((bounds[n] is None) == (n in SIMPLE_POLICIES) for n in bounds)
    if model.policy_ in SIMPLE_POLICIES:  # the best simple one, and no learned one beat it
        simple = {n: model.validation_[n]["ndcg_at_20"] for n in SIMPLE_POLICIES}
        assert model.policy_ == max(simple, key=simple.get)
        assert all(b is None or b <= 0 for b in bounds.values())
    else:
        assert bounds[model.policy_] > 0
    assert model.policy_ == model.ranking_.spec.name
    summary = model.summary()
    assert summary["policy"] == model.policy_ and summary["validation"] == model.validation_
    # every source's share of the validation window's positives, "any" over all of them
    pool = summary["candidate_pool"]
    assert {"repeat", "ann", "any"} <= set(pool)
    assert all(p["positives"] <= pool["any"]["positives"] for p in pool.values())
    assert all(f["n_users"] > 0 for f in model.validation_.values())


def test_save_load_round_trip(fitted, tmp_path):
    model, _ = fitted
    saved = model.save(tmp_path / "models" / "interest_v1-test")
    assert (saved / "manifest.json").exists() and (saved / "query_tower").is_dir()
    assert (saved / "ranking.json").exists() and (saved / "tables" / "items.parquet").exists()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    loaded = InterestModel.load(saved)
    assert loaded.policy_ == model.policy_ and loaded.as_of_ == model.as_of_
    assert loaded.validation_ == model.validation_
    # The loaded ranking ranks the same profiles the same way (the ANN search, when the
    # policy has one, now runs on the saved query tower and item embeddings).
    want = model.ranking_.rank(model.profiles_, K)
    got = loaded.ranking_.rank(model.profiles_, K)
    assert got.select("user_id", "rank", "item_id", "source").equals(
        want.select("user_id", "rank", "item_id", "source")
    )
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)
    # The exported TFRS index (query tower inside) agrees with the service's numpy index.
    from recsys.models.index import load_index
    from recsys.models.saved import SavedRetrieval

    sample = model.retriever_.sample_query
    scores, ids = load_index(saved / "index")({k: tf.constant(v) for k, v in sample.items()})
    query = model.retriever_.query_tower(sample, training=False).numpy()
    expected_ids, expected_scores = SavedRetrieval(saved).index.top_k(query, ids.shape[1])
    np.testing.assert_array_equal(ids.numpy(), expected_ids)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-5)


def test_saved_retrieval_embeds_profiles_as_the_fitted_towers(fitted, tmp_path):
    """Train/serve consistency: the saved query tower on profile rows (one row, as a request,
    or a batch, as scoring) gives the embeddings the in-memory towers compute as of as_of."""
    from recsys.models.saved import SavedRetrieval

    model, _ = fitted
    saved = SavedRetrieval(model.save(tmp_path / "models" / "interest_v1-test"))
    profiles = model.profiles_.head(5)
    want = model.retriever_.embed_profiles(profiles, model.as_of_)
    np.testing.assert_allclose(saved.embed(profiles), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(saved.embed(profiles.head(1)), want[:1], rtol=1e-4, atol=1e-5)
    found = saved.search(Users.of(profiles), 7)
    assert found.columns == ["user_id", "item_id", "ann_score"] and found.height == 35


def test_load_rejects_a_folder_without_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="manifest"):
        InterestModel.load(tmp_path)


def online_profiles(events: pl.DataFrame, as_of: datetime) -> list[tuple[int, dict]]:
    """Online-profile dicts built from each user's events before ``as_of`` (long sequences and
    interest lists, so truncation matters), plus hand-made edge cases."""
    from recsys.models import towers as T

    before = events.filter(pl.col("event_time") < as_of).sort("event_time", descending=True)
    profiles = []
    for (user,), rows in before.group_by("user_id", maintain_order=True):
        counts = rows["category_id"].value_counts(sort=True)
        gaps = [(as_of - t).total_seconds() for t in rows["event_time"]]
        behaviors = rows["behavior"].to_list()
        features = {
            T.SEQ_ITEMS: rows["item_id"].to_list(),
            T.SEQ_BEHAVIORS: behaviors,
            T.SEQ_GAPS: gaps,
            T.INTEREST_CATEGORIES: counts["category_id"].to_list(),
            T.INTEREST_SCORES: counts["count"].cast(pl.Float64).to_list(),
        }
        for i, column in enumerate(T.QUERY_DENSE):
            features[column] = float(len(behaviors) * (i - 3)) / 7.0
        features["user_behavior_funnel__hours_since_last_event"] = gaps[0] / 3600.0
        profiles.append((int(user), features))
    unknown = {
        T.SEQ_ITEMS: [10**12, profiles[0][1][T.SEQ_ITEMS][0], -5],
        T.SEQ_BEHAVIORS: ["buy", "view", "cart"],
        T.SEQ_GAPS: [1.5, float("nan"), 7200.0],
        T.INTEREST_CATEGORIES: [10**12, profiles[0][1][T.INTEREST_CATEGORIES][0]],
        T.INTEREST_SCORES: [0.25, float("nan")],
        "user_behavior_funnel__n_view": float("nan"),
        "user_behavior_funnel__hours_since_last_event": None,
    }
    empty = {T.SEQ_ITEMS: [], T.SEQ_BEHAVIORS: [], T.SEQ_GAPS: [], T.INTEREST_SCORES: [0.0]}
    return [*profiles, (10**9, unknown), (10**9 + 1, empty), (10**9 + 2, {})]


def test_query_row_encoding_equals_the_batch_encoder(fitted, events, as_of):
    from recsys.models.towers import profile_frame

    encoder = fitted[0].retriever_.encoder
    profiles = online_profiles(events, as_of)
    assert max(len(f.get("user_recent_sequence__seq_item_ids", [])) for _, f in profiles) > (
        encoder.sequence_length
    )
    rng = np.random.default_rng(0)
    for user_id, features in profiles:
        gnn = rng.normal(size=8).astype(np.float32)
        row = encoder.encode_query_row(user_id, features, gnn)
        batch = encoder.encode_queries(profile_frame(user_id, features), gnn[None])
        assert row.keys() == batch.keys()
        for name, expected in batch.items():
            assert row[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(row[name], expected, err_msg=name)
    # Hand-checked edge cases: unknown ids and pads are -1; the empty profile is all padding.
    unknown = encoder.encode_query_row(10**9, profiles[-3][1], np.zeros(8))
    assert unknown["seq_items"][0, [0, 2, 3]].tolist() == [-1, -1, -1]
    assert unknown["seq_items"][0, 1] >= 0 and unknown["interest_categories"][0, 0] == -1
    np.testing.assert_array_equal(unknown["seq_behaviors"][0, :4], [3, 0, 1, 0])
    empty = encoder.encode_query_row(10**9 + 2, {}, np.zeros(8))
    assert (empty["seq_items"] == -1).all() and not empty["interest_scores"].any()


def test_query_row_encoding_rejects_an_unknown_behaviour(fitted):
    encoder = fitted[0].retriever_.encoder
    with pytest.raises(learned_data.LearnedModelError, match="teleport"):
        encoder.encode_query_row(
            1, {"user_recent_sequence__seq_behaviors": ["view", "teleport"]}, np.zeros(8)
        )


def test_ranked_rows_schema_sources_and_reasons(fitted, events, as_of):
    """The rows `recsys score` writes back: ``ranking_.rank`` on the profiles as of as_of."""
    model, _ = fitted
    profiles = model.profiles_.head(40)
    users = profiles["user_id"].to_numpy()
    frame = model.ranking_.rank(profiles, K)
    assert frame.columns == [*OUTPUT_COLUMNS, "reason"]
    assert frame.height == len(users) * K
    np.testing.assert_array_equal(
        frame.sort("user_id", "rank")["item_id"].to_numpy().reshape(len(users), K),
        model.recommend(users, K),
    )
    assert set(frame["source"].unique()) <= set(SOURCES)
    assert all(row[0] == first for first, row in frame.select("source", "sources").iter_rows())
    assert frame["reason"].str.len_chars().min() > 0
    # "repeat" means the user touched the item before as_of.
    touched = events.filter(pl.col("event_time") < as_of).select("user_id", "item_id").unique()
    repeats = frame.filter(pl.col("source") == "repeat")
    assert repeats.height and repeats.join(touched, on=["user_id", "item_id"]).height == (
        repeats.height
    )
    if model.policy_ == "learned":
        assert frame.filter(pl.col("sources").list.contains("ann")).height > 0


def test_moved_users_get_a_migration_reason(fitted):
    """Users whose short-horizon top category differs from the long one: their items of the
    category the interest moved to give the move as their reason."""
    model, _ = fitted
    short = "user_interest_shift__top_category_short"
    long = "user_interest_shift__top_category_long"
    moved = model.profiles_.filter(pl.col(short) != pl.col(long))
    if moved.is_empty():
        pytest.skip("no user's interest moved before as_of in this simulation")
    frame = model.ranking_.rank(moved, K).join(
        moved.select("user_id", pl.col(short).alias("to_category_id")), on="user_id"
    )
    new_category = frame.filter(pl.col("category_id") == pl.col("to_category_id"))
    assert new_category.height
    assert new_category["reason"].str.contains("you moved from").all()
    assert (
        not frame.filter(pl.col("category_id") != pl.col("to_category_id"))["reason"]
        .str.contains("you moved from")
        .any()
    )


def test_beats_popularity_on_shift_users(tmp_path):
    from recsys.evaluation.run import EvaluationConfig, run_evaluation
    from recsys.home import Paths
    from recsys.models.data import load_events

    paths = Paths(tmp_path / "home")
    # The popularity-only jumps this check was set on (with the association graph, popularity
    # itself does better on shift users: 0.247 vs the model's 0.263 when measured).
    sim = simulate(
        SimulationConfig(users=300, items=1000, days=8, seed=5, association_probability=0.0)
    )
    load_events(paths, sim.events)
    run = run_evaluation(paths, config=EvaluationConfig(), models={"interest_model": InterestModel})
    scores = run.results.filter(
        (pl.col("group") == "shift") & (pl.col("metric") == "ndcg") & (pl.col("k") == 20)
    )
    by_model = dict(zip(scores["model"], scores["value"], strict=True))
    assert by_model["interest_model"] > by_model["popularity"] + 0.02


def test_snapshot_schedule_steps_back_from_as_of():
    as_of = datetime(2026, 1, 5, 16)
    day = timedelta(days=1)
    assert learned_data.snapshot_schedule(datetime(2026, 1, 3, 10), as_of, day) == [
        datetime(2026, 1, 3, 16),
        datetime(2026, 1, 4, 16),
        as_of,
    ]
