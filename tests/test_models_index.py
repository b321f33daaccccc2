"""Top-k index: brute-force oracle, ScaNN path, SavedModel round trip, candidate scoring, the
ANN source's search frame."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsys.models import ModelInputError
from recsys.models import index as ix
from recsys.ranking.frames import PAD

IDS = np.array([101, 202, 303, 404, 505])
EMB = np.array([[1, 0], [0, 1], [0.7, 0.7], [-1, 0], [0.2, 0.1]], np.float32)


def test_brute_force_returns_argmax_of_hand_made_dot_product():
    index = ix.EmbeddingIndex(IDS, EMB, method="auto")
    assert index.method == "brute_force"
    ids, scores = index.top_k(np.array([[1.0, 0.5], [-2.0, 0.0]]), k=2)
    # q0 scores: 1, .5, 1.05, -1, .25 -> 303, 101; q1: -2, 0, -1.4, 2, -.4 -> 404, 202
    np.testing.assert_array_equal(ids, [[303, 101], [404, 202]])
    np.testing.assert_allclose(scores, [[1.05, 1.0], [2.0, 0.0]], rtol=1e-6)


def test_score_given_candidates_and_unknown_id():
    index = ix.EmbeddingIndex(IDS, EMB)
    np.testing.assert_allclose(index.score(np.array([1.0, 2.0]), [505, 101]), [0.4, 1.0])
    with pytest.raises(ModelInputError, match="999"):
        index.score(np.array([1.0, 2.0]), [999])


def test_scann_path_recalls_the_exact_best_and_rescored_exactly():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2000, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = np.arange(2000) + 10
    index = ix.EmbeddingIndex(ids, emb, method="scann")
    # Unit vectors: each query's best match is itself (cosine 1). ScaNN searches ~10% of its
    # leaves, so it is judged as an ANN: it must recall nearly every exact best, and the
    # re-scoring step must give exact scores for what it finds.
    queries = rng.choice(2000, size=200, replace=False)
    got, scores = index.top_k(emb[queries], k=5)
    found = got[:, 0] == ids[queries]
    assert found.mean() >= 0.85  # measured 0.93-0.985 over 8 index builds; random: 0.0005
    np.testing.assert_allclose(scores[found, 0], 1.0, rtol=1e-4)


def test_bad_method_and_k():
    with pytest.raises(ModelInputError, match="method"):
        ix.resolve_method("annoy", 10)
    with pytest.raises(ModelInputError, match="k must be"):
        ix.build_index(None, IDS, EMB, k=9)


def query_tower() -> tf.keras.Model:
    inputs = {"x": tf.keras.Input(shape=(3,), name="x")}
    out = tf.keras.layers.Dense(2, kernel_initializer="glorot_uniform")(inputs["x"])
    return tf.keras.Model(inputs, out)


@pytest.mark.parametrize("method", ["brute_force", "scann"])
def test_saved_model_round_trip_gives_identical_top_k(method, tmp_path):
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # ScaNN trains its quantiser on the catalogue, which needs a few hundred rows.
    ids, emb = np.arange(300) + 7, rng.normal(size=(300, 2)).astype(np.float32)
    tower = query_tower()
    index = ix.build_index(tower, ids, emb, k=3, method=method)
    queries = {"x": tf.constant(rng.normal(size=(4, 3)), tf.float32)}
    before_scores, before_ids = index(queries)
    ix.save_index(index, tmp_path / "index", queries)
    loaded = ix.load_index(tmp_path / "index")
    after_scores, after_ids = loaded(queries)
    np.testing.assert_array_equal(before_ids.numpy(), after_ids.numpy())
    np.testing.assert_array_equal(before_scores.numpy(), after_scores.numpy())
    if method == "brute_force":
        expected = np.argsort(-(tower(queries).numpy() @ emb.T), axis=1)[:, :3]
        np.testing.assert_array_equal(before_ids.numpy(), ids[expected])


def test_scann_trains_one_searcher_for_every_k_and_finds_the_exact_neighbours():
    # Clustered, as trained item embeddings are: ScaNN searches ~10% of its leaves.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(30, 8)) * 3
    emb = (centres[rng.integers(0, 30, 3000)] + rng.normal(size=(3000, 8))).astype(np.float32)
    ids = np.arange(3000) + 10
    index = ix.EmbeddingIndex(ids, emb, method="scann")
    queries = (centres[rng.integers(0, 30, 20)] + rng.normal(size=(20, 8))).astype(np.float32)
    ids_5, scores_5 = index.top_k(queries, k=5)
    searcher = index._searcher()
    ids_50, scores_50 = index.top_k(queries, k=50)
    assert index._searcher() is searcher  # trained once
    assert ids_5.shape == scores_5.shape == (20, 5) and ids_50.shape == (20, 50)
    assert ids_5.dtype == np.int64 and scores_5.dtype == np.float32
    np.testing.assert_array_equal(ids_5, ids_50[:, :5])
    np.testing.assert_array_equal(scores_5, scores_50[:, :5])
    assert (np.diff(scores_50, axis=1) <= 0).all()
    # Oracle: exact re-scoring makes the scores true dot products, and the approximate top 50
    # holds nearly all of the exact one.
    exact = queries @ emb.T
    np.testing.assert_allclose(
        scores_50, np.take_along_axis(exact, ids_50 - 10, axis=1), rtol=1e-5, atol=1e-5
    )
    truth = ids[np.argsort(-exact, axis=1)[:, :50]]
    found = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(ids_50, truth, strict=True)])
    assert found >= 0.9
    # A k beyond what the searched leaves hold: the found items best first, then padding.
    ids_300, scores_300 = index.top_k(queries, k=300)
    missing = ids_300 == PAD
    assert ids_300.shape == (20, 300) and missing.any() and (~missing[:, :50]).all()
    assert np.isneginf(scores_300[missing]).all()
    assert (np.diff(missing.astype(int), axis=1) >= 0).all()  # padding only at the end
    assert all((np.diff(row[np.isfinite(row)]) <= 0).all() for row in scores_300)
    frame = ix.search_frame(np.arange(20), queries, index, 300)
    assert frame.height == (~missing).sum() and (frame["item_id"] != PAD).all()
    # A batch beyond one thread's share is searched in parallel, with the same answers.
    many = np.repeat(queries, ix.SCANN_SERIAL_QUERIES // 20 + 1, axis=0)
    ids_many, scores_many = index.top_k(many, k=50)
    np.testing.assert_array_equal(ids_many[:: ix.SCANN_SERIAL_QUERIES // 20 + 1], ids_50)
    np.testing.assert_array_equal(scores_many[:: ix.SCANN_SERIAL_QUERIES // 20 + 1], scores_50)


def test_search_frame_lists_each_users_best_items_with_their_scores():
    index = ix.EmbeddingIndex(IDS, EMB, method="brute_force")
    frame = ix.search_frame(np.array([7, 9]), np.array([[1.0, 0.5], [-2.0, 0.0]]), index, 2)
    assert frame.columns == ["user_id", "item_id", "ann_score"]
    assert frame["user_id"].to_list() == [7, 7, 9, 9]
    assert frame["item_id"].to_list() == [303, 101, 404, 202]
    np.testing.assert_allclose(frame["ann_score"].to_numpy(), [1.05, 1.0, 2.0, 0.0], rtol=1e-6)
    # n beyond the catalogue: every item once; no users: an empty frame of the same schema.
    assert ix.search_frame(np.array([7]), np.array([[1.0, 0.5]]), index, 99).height == len(IDS)
    empty = ix.search_frame(np.array([], np.int64), np.zeros((0, 2)), index, 3)
    assert empty.is_empty() and empty.columns == frame.columns
