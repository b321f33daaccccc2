"""TFRS two-tower: inputs and ablations, log-Q loss oracle, hashing, learning a planted task."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsys.models import ModelInputError
from recsys.models import two_tower as tt

N_ITEMS, N_CATS, SEQ, SLOTS, DENSE, ITEM_DENSE, GNN = 40, 4, 6, 3, 5, 2, 4
SPEC = tt.QueryFeatureSpec(
    n_items=N_ITEMS,
    n_categories=N_CATS,
    dense_dim=DENSE,
    item_dense_dim=ITEM_DENSE,
    interest_slots=SLOTS,
    sequence_length=SEQ,
    gnn_dim=GNN,
)
ITEM_CAT = np.arange(N_ITEMS) % N_CATS


def examples(rng: np.random.Generator, n: int) -> tuple[tt.RetrievalExamples, np.ndarray]:
    """Users whose recent sequence is in category c buy an item of category c."""
    cats = rng.integers(0, N_CATS, n)
    pick = lambda c, size: rng.choice(np.flatnonzero(c == ITEM_CAT), size)  # noqa: E731
    seq = np.stack([pick(c, SEQ) for c in cats])
    seq[:, SEQ - 2 :] = -1  # padding at the old end
    target = np.array([pick(c, 1)[0] for c in cats])
    query = {
        "user_id": rng.integers(0, 10**9, n),
        "dense": rng.normal(size=(n, DENSE)).astype(np.float32),
        "interest_categories": np.full((n, SLOTS), -1),
        "interest_scores": np.zeros((n, SLOTS), np.float32),
        "seq_items": seq,
        "seq_behaviors": rng.integers(0, 4, (n, SEQ)),
        "seq_gap_hours": rng.uniform(0, 48, (n, SEQ)).astype(np.float32),
        "gnn_user": rng.normal(size=(n, GNN)).astype(np.float32),
    }
    candidate = {
        "item_id": target,
        "category_id": ITEM_CAT[target],
        "item_dense": rng.normal(size=(n, ITEM_DENSE)).astype(np.float32),
        "gnn_item": rng.normal(size=(n, GNN)).astype(np.float32),
    }
    return tt.RetrievalExamples(query, candidate, np.ones(n, np.float32)), cats


def small_config(**overrides) -> tt.TwoTowerConfig:
    base = dict(embedding_dim=16, user_hash_bins=64, batch_size=64, show_progress=False)
    return tt.TwoTowerConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    ("use_gnn", "use_sequence"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_ablation_flags_remove_inputs_and_weights(use_gnn, use_sequence):
    model = tt.TwoTowerModel(
        spec=SPEC, config=small_config(use_gnn=use_gnn, use_sequence=use_sequence)
    )
    q_inputs = set(model.query_model.input_names)
    c_inputs = set(model.candidate_model.input_names)
    assert ("gnn_user" in q_inputs) == use_gnn
    assert ("gnn_item" in c_inputs) == use_gnn
    assert ({"seq_items", "seq_behaviors", "seq_gap_hours"} <= q_inputs) == use_sequence
    assert q_inputs.isdisjoint({"seq_items"}) != use_sequence
    names = {w.name for w in model.query_model.weights}
    assert any("sequence_encoder" in n for n in names) == use_sequence
    # The query hidden layer's fan-in shrinks by exactly the removed parts.
    fan_in = model.query_model.get_layer("query_hidden").kernel.shape[0]
    assert fan_in == 16 * (2 + use_sequence) + GNN * use_gnn


def test_gnn_without_gnn_dim_is_rejected():
    with pytest.raises(ModelInputError, match="gnn_dim"):
        tt.TwoTowerModel(spec=tt.QueryFeatureSpec(4, 2, 1, 1), config=small_config())


class FixedTower(tf.keras.Model):
    """Returns a fixed embedding row per example index (for a hand-computed loss)."""

    def __init__(self, table):
        super().__init__()
        self.table = tf.constant(table, tf.float32)

    def call(self, features):
        return tf.gather(self.table, features["row"])


def test_log_q_correction_changes_the_loss_as_computed_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    c = np.array([[1.0, 1.0], [0.5, -1.0]], np.float32)
    probability = np.array([0.2, 0.6], np.float32)
    weight = np.array([1.0, 3.0], np.float32)
    model = tt.TwoTowerModel(spec=SPEC, config=small_config(temperature=0.5))
    model.query_model, model.candidate_model = FixedTower(q), FixedTower(c)
    batch = {
        "query": {"row": tf.constant([0, 1])},
        "candidate": {"row": tf.constant([0, 1]), "item_id": tf.constant([7, 8])},
        "weight": tf.constant(weight),
    }

    def expected(correct: bool) -> float:
        logits = q @ c.T / 0.5
        if correct:
            logits = logits - np.log(probability)[None, :]
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-(weight * np.diag(log_softmax)).sum() / 2)

    uniform = model.compute_loss({**batch, "probability": tf.constant([1.0, 1.0])})
    corrected = model.compute_loss({**batch, "probability": tf.constant(probability)})
    assert float(uniform) == pytest.approx(expected(False), rel=1e-5)
    assert float(corrected) == pytest.approx(expected(True), rel=1e-5)
    assert expected(True) != pytest.approx(expected(False))


def test_unseen_users_are_hashed_deterministically():
    rng = np.random.default_rng(0)
    data, _ = examples(rng, 4)
    model = tt.TwoTowerModel(spec=SPEC, config=small_config())
    query = dict(data.query)
    query["user_id"] = np.array([2**62, 2**62, 123, -5])  # never seen, huge, negative
    first = tt.embed(model.query_model, query)
    again = tt.embed(model.query_model, query)
    np.testing.assert_array_equal(first, again)
    assert np.all(np.isfinite(first))
    hashed = model.query_model.get_layer("user_hash")(tf.constant(query["user_id"])).numpy()
    assert hashed[0] == hashed[1] and np.all((hashed >= 0) & (hashed < 64))


def test_missing_keys_raise():
    data, _ = examples(np.random.default_rng(0), 4)
    query = {k: v for k, v in data.query.items() if k != "dense"}
    broken = tt.RetrievalExamples(query, data.candidate, data.weight)
    with pytest.raises(ModelInputError, match="dense"):
        broken.check(SPEC, small_config())


def test_learns_planted_category_structure_and_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    train, _ = examples(rng, 1500)
    val, _ = examples(rng, 300)
    test, test_cats = examples(rng, 200)
    config = small_config(use_gnn=False, epochs=6, learning_rate=1e-2, patience=2)
    result = tt.train_two_tower(
        train, val, spec=SPEC, config=config, checkpoint_dir=tmp_path / "ckpt"
    )
    assert result.latest_checkpoint is not None
    assert (tmp_path / "ckpt" / "checkpoint").exists()
    assert result.history["val_loss"][-1] < result.history["val_loss"][0]

    catalogue = {
        "item_id": np.arange(N_ITEMS),
        "category_id": ITEM_CAT,
        "item_dense": np.zeros((N_ITEMS, ITEM_DENSE), np.float32),
    }
    items = tt.embed(result.model.candidate_model, catalogue)
    queries = tt.embed(result.model.query_model, test.query)
    top10 = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    precision = np.mean(ITEM_CAT[top10] == test_cats[:, None])
    assert precision > 0.6  # random retrieval gets 1 / N_CATS = 0.25


@pytest.mark.gpu
def test_training_step_under_mirrored_strategy_with_mixed_precision(tmp_path):
    from recsys.models import device

    if not device.gpus():
        pytest.skip("no GPU visible")
    try:
        strategy = device.distribution_strategy()
        assert isinstance(strategy, tf.distribute.MirroredStrategy)
        assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
        train, _ = examples(np.random.default_rng(0), 128)
        result = tt.train_two_tower(
            train, train, spec=SPEC, config=small_config(epochs=1), checkpoint_dir=tmp_path
        )
        assert np.isfinite(result.history["loss"][0])
        assert result.model.query_model.output.dtype == tf.float32
        assert result.model.candidate_model.output.dtype == tf.float32
        batch = next(
            iter(
                tt.make_dataset(
                    train, result.item_probability, spec=SPEC, config=small_config(), shuffle=False
                )
            )
        )
        assert result.model.compute_loss(batch).dtype == tf.float32
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
