"""TFRS two-tower retrieval: a query tower over interest features, a candidate tower over items.

Index conventions (the caller maps raw ids before calling): item and category inputs are
indices 0..n-1 and ``-1`` means padding; ``user_id`` is the raw user id and is hashed, so users
never seen in training still get a (deterministic) embedding.

Query inputs (``query`` dict, B = batch, N = ``interest_slots``, L = ``sequence_length``):

| key                     | dtype   | shape  | meaning                                          |
|-------------------------|---------|--------|--------------------------------------------------|
| ``user_id``             | int64   | [B]    | raw user id (hashed)                             |
| ``dense``               | float32 | [B, D] | shift + funnel + interest totals, standardised   |
| ``interest_categories`` | int64   | [B, N] | decayed top-N category indices, -1 pad           |
| ``interest_scores``     | float32 | [B, N] | their decayed shares (0 at pads)                 |
| ``seq_items``           | int64   | [B, L] | recent item indices, most recent first, -1 pad   |
| ``seq_behaviors``       | int64   | [B, L] | index into ``schema.BEHAVIORS``                  |
| ``seq_gap_hours``       | float32 | [B, L] | hours between the event and the as-of time       |
| ``gnn_user``            | float32 | [B, G] | GNN user embedding (only when ``use_gnn``)       |

Candidate inputs (``candidate`` dict): ``item_id`` int64 [B], ``category_id`` int64 [B],
``item_dense`` float32 [B, S] (item stats), ``gnn_item`` float32 [B, G] (only when ``use_gnn``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.models import ModelInputError
from recsys.models.device import distribution_strategy, is_chief, set_seeds
from recsys.warehouse.schema import BEHAVIORS

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class QueryFeatureSpec:
    """Sizes of the query and candidate inputs (see the module docstring for the keys)."""

    n_items: int
    n_categories: int
    dense_dim: int
    item_dense_dim: int
    interest_slots: int = 20
    sequence_length: int = 50
    gnn_dim: int = 0


@dataclass(frozen=True)
class TwoTowerConfig:
    """Model size, ablations and training knobs."""

    embedding_dim: int = 64
    user_hash_bins: int = 100_000
    use_gnn: bool = True
    use_sequence: bool = True
    attention_heads: int = 2
    temperature: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 10
    patience: int = 2
    seed: int = 0
    show_progress: bool = True


def query_input_keys(spec: QueryFeatureSpec, config: TwoTowerConfig) -> tuple[str, ...]:
    keys = ["user_id", "dense", "interest_categories", "interest_scores"]
    if config.use_sequence:
        keys += ["seq_items", "seq_behaviors", "seq_gap_hours"]
    if config.use_gnn:
        keys.append("gnn_user")
    return tuple(keys)


def candidate_input_keys(config: TwoTowerConfig) -> tuple[str, ...]:
    return ("item_id", "category_id", "item_dense") + (("gnn_item",) if config.use_gnn else ())


def _check_spec(spec: QueryFeatureSpec, config: TwoTowerConfig) -> None:
    if config.use_gnn and spec.gnn_dim <= 0:
        raise ModelInputError("use_gnn needs QueryFeatureSpec.gnn_dim > 0")


# --------------------------------------------------------------------------------------------
# Shared pieces


class PaddedEmbedding(tf.keras.layers.Layer):
    """Embedding of indices 0..n-1 where -1 is padding: [...] -> [..., d], padding -> zeros."""

    def __init__(self, n: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        # No Keras masks: padding is zeroed here and masked explicitly where pooled.
        self.embedding = tf.keras.layers.Embedding(n + 1, dim)

    def call(self, indices: tf.Tensor) -> tf.Tensor:
        shifted = tf.cast(indices, tf.int64) + 1  # -1 (padding) -> row 0, zeroed below
        mask = tf.cast(shifted > 0, self.compute_dtype)[..., None]
        return self.embedding(shifted) * mask


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of values [B, L, d] where mask [B, L] is true; zeros for empty rows."""
    weights = tf.cast(mask, values.dtype)[..., None]
    total = tf.reduce_sum(values * weights, axis=1)
    return total / tf.maximum(tf.reduce_sum(weights, axis=1), tf.cast(1.0, values.dtype))


class SequenceEncoder(tf.keras.layers.Layer):
    """Behaviour-aware self-attention over the recent sequence: -> [B, d].

    Token = item embedding + behaviour embedding + projection of log1p(gap hours); one
    masked multi-head self-attention block, then a masked mean over valid positions.
    """

    def __init__(self, item_embedding: PaddedEmbedding, *, dim: int, heads: int, **kwargs):
        super().__init__(**kwargs)
        self.item_embedding = item_embedding
        self.behavior_embedding = tf.keras.layers.Embedding(len(BEHAVIORS), dim)
        self.gap_projection = tf.keras.layers.Dense(dim)
        self.attention = tf.keras.layers.MultiHeadAttention(heads, max(dim // heads, 1))
        self.norm = tf.keras.layers.LayerNormalization()

    def call(self, items: tf.Tensor, behaviors: tf.Tensor, gap_hours: tf.Tensor) -> tf.Tensor:
        valid = items >= 0
        behaviors = tf.clip_by_value(behaviors, 0, len(BEHAVIORS) - 1)
        log_gap = tf.math.log1p(tf.maximum(gap_hours, 0.0))[..., None]
        tokens = (
            self.item_embedding(items)
            + self.behavior_embedding(behaviors)
            + self.gap_projection(log_gap)
        )
        pair_mask = tf.logical_and(valid[:, :, None], valid[:, None, :])
        attended = self.norm(tokens + self.attention(tokens, tokens, attention_mask=pair_mask))
        return _masked_mean(attended, valid)


# --------------------------------------------------------------------------------------------
# Towers


def _l2_normalize(x: tf.Tensor) -> tf.Tensor:
    """Unit-length embeddings: scores are cosines and the temperature sets their scale."""
    return tf.keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1), dtype="float32")(x)


def _inputs(shapes: Mapping[str, tuple[tuple[int, ...], tf.DType]]) -> dict[str, tf.Tensor]:
    return {
        k: tf.keras.Input(shape=shape, dtype=dtype, name=k) for k, (shape, dtype) in shapes.items()
    }


def build_query_tower(
    *,
    spec: QueryFeatureSpec,
    config: TwoTowerConfig,
    item_embedding: PaddedEmbedding,
    category_embedding: PaddedEmbedding,
) -> tf.keras.Model:
    """Keras model: query dict (keys = ``query_input_keys``) -> float32 [B, embedding_dim]."""
    _check_spec(spec, config)
    n, seq, d = spec.interest_slots, spec.sequence_length, config.embedding_dim
    shapes = {
        "user_id": ((), tf.int64),
        "dense": ((spec.dense_dim,), tf.float32),
        "interest_categories": ((n,), tf.int64),
        "interest_scores": ((n,), tf.float32),
        "seq_items": ((seq,), tf.int64),
        "seq_behaviors": ((seq,), tf.int64),
        "seq_gap_hours": ((seq,), tf.float32),
        "gnn_user": ((spec.gnn_dim,), tf.float32),
    }
    inputs = _inputs({k: shapes[k] for k in query_input_keys(spec, config)})

    hashed = tf.keras.layers.Hashing(config.user_hash_bins, name="user_hash")(inputs["user_id"])
    parts = [tf.keras.layers.Embedding(config.user_hash_bins, d, name="user_embedding")(hashed)]

    # Interest extraction: decayed top-N categories pooled by their scores, with the dense features.
    cat_vectors = category_embedding(inputs["interest_categories"])
    scores = tf.keras.layers.Lambda(lambda s: s[..., None])(inputs["interest_scores"])
    pooled = tf.keras.layers.Lambda(lambda t: tf.reduce_sum(t[0] * t[1], axis=1))(
        [cat_vectors, scores]
    )
    interest = tf.keras.layers.Concatenate()([pooled, inputs["dense"]])
    interest = tf.keras.layers.Dense(d, activation="relu", name="interest_mlp_1")(interest)
    parts.append(tf.keras.layers.Dense(d, activation="relu", name="interest_mlp_2")(interest))

    if config.use_sequence:
        encoder = SequenceEncoder(
            item_embedding, dim=d, heads=config.attention_heads, name="sequence_encoder"
        )
        parts.append(encoder(inputs["seq_items"], inputs["seq_behaviors"], inputs["seq_gap_hours"]))
    if config.use_gnn:
        parts.append(inputs["gnn_user"])

    return tf.keras.Model(inputs, _head(parts, dim=d, name="query"), name="query_tower")


def _head(parts: list[tf.Tensor], *, dim: int, name: str) -> tf.Tensor:
    """Concatenated parts -> ReLU layer -> projection -> L2-normalised float32 [B, dim].

    The projection is float32 even under mixed precision so that scores and the loss are."""
    joined = tf.keras.layers.Concatenate()(parts)
    hidden = tf.keras.layers.Dense(dim, activation="relu", name=f"{name}_hidden")(joined)
    output = tf.keras.layers.Dense(dim, dtype="float32", name=f"{name}_embedding")(hidden)
    return _l2_normalize(output)


def build_candidate_tower(
    *,
    spec: QueryFeatureSpec,
    config: TwoTowerConfig,
    item_embedding: PaddedEmbedding,
    category_embedding: PaddedEmbedding,
) -> tf.keras.Model:
    """Keras model: candidate dict (``candidate_input_keys``) -> float32 [B, embedding_dim]."""
    _check_spec(spec, config)
    d = config.embedding_dim
    shapes = {
        "item_id": ((), tf.int64),
        "category_id": ((), tf.int64),
        "item_dense": ((spec.item_dense_dim,), tf.float32),
        "gnn_item": ((spec.gnn_dim,), tf.float32),
    }
    inputs = _inputs({k: shapes[k] for k in candidate_input_keys(config)})
    parts = [
        item_embedding(inputs["item_id"]),
        category_embedding(inputs["category_id"]),
        tf.keras.layers.Dense(d, activation="relu", name="item_stats")(inputs["item_dense"]),
    ]
    if config.use_gnn:
        parts.append(inputs["gnn_item"])
    return tf.keras.Model(inputs, _head(parts, dim=d, name="candidate"), name="candidate_tower")


class TwoTowerModel(tfrs.Model):
    """Query and candidate towers sharing item/category embeddings, trained by in-batch softmax.

    A batch is ``{"query": {...}, "candidate": {...}, "weight": [B], "probability": [B]}``:
    ``weight`` = behaviour weight of the positive, ``probability`` = the candidate's sampling
    probability (its share of training positives) for the log-Q correction.
    """

    def __init__(self, *, spec: QueryFeatureSpec, config: TwoTowerConfig):
        super().__init__()
        d = config.embedding_dim
        item_embedding = PaddedEmbedding(spec.n_items, d, name="item_id_embedding")
        category_embedding = PaddedEmbedding(spec.n_categories, d, name="category_id_embedding")
        towers = dict(
            spec=spec,
            config=config,
            item_embedding=item_embedding,
            category_embedding=category_embedding,
        )
        self.query_model = build_query_tower(**towers)
        self.candidate_model = build_candidate_tower(**towers)
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature, remove_accidental_hits=True
        )

    def compute_loss(self, features, training: bool = False) -> tf.Tensor:
        query = self.query_model(features["query"], training=training)
        candidate = self.candidate_model(features["candidate"], training=training)
        loss_sum = self.task(
            query,
            candidate,
            sample_weight=features["weight"],
            candidate_sampling_probability=features["probability"],
            candidate_ids=features["candidate"]["item_id"],
            compute_metrics=False,
        )
        # The task sums over the batch; divide by the global batch so the scale (and learning
        # rate) does not depend on batch size or replica count.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss_sum / tf.cast(tf.shape(query)[0] * replicas, loss_sum.dtype)


# --------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class RetrievalExamples:
    """Positive (query, candidate) pairs: ``query``/``candidate`` dicts of arrays with B rows."""

    query: Arrays
    candidate: Arrays
    weight: np.ndarray

    def __len__(self) -> int:
        return len(self.weight)

    def check(self, spec: QueryFeatureSpec, config: TwoTowerConfig) -> None:
        for side, arrays, keys in (
            ("query", self.query, query_input_keys(spec, config)),
            ("candidate", self.candidate, candidate_input_keys(config)),
        ):
            missing = set(keys) - set(arrays)
            if missing:
                raise ModelInputError(f"{side} arrays lack keys {sorted(missing)}")
            for key in keys:
                if len(arrays[key]) != len(self.weight):
                    raise ModelInputError(
                        f"{side}[{key!r}] has {len(arrays[key])} rows, not {len(self)}"
                    )


def item_sampling_probability(item_ids: np.ndarray, n_items: int) -> np.ndarray:
    """Share of training positives per item index: [n_items], sums to 1 (log-Q correction)."""
    counts = np.bincount(item_ids, minlength=n_items).astype(np.float64)
    return counts / counts.sum()


def make_dataset(
    examples: RetrievalExamples,
    probability: np.ndarray,
    *,
    spec: QueryFeatureSpec,
    config: TwoTowerConfig,
    shuffle: bool,
) -> tf.data.Dataset:
    """Batched tf.data pipeline of the model's batch dicts (only the keys the model uses).

    Each batch holds ``config.batch_size`` rows: the global batch. Keras splits it under a
    strategy into one batch of ``batch_size / replicas`` rows per replica, the same split
    whether the replicas are GPUs of one process or workers of a cluster.
    """
    examples.check(spec, config)
    items = np.asarray(examples.candidate["item_id"], np.int64)
    tensors = {
        "query": {k: examples.query[k] for k in query_input_keys(spec, config)},
        "candidate": {k: examples.candidate[k] for k in candidate_input_keys(config)},
        "weight": np.asarray(examples.weight, np.float32),
        "probability": probability[items].astype(np.float32),
    }
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        # Seeded, so every worker of a cluster builds the same order before it takes its share.
        ds = ds.shuffle(len(examples), seed=config.seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    # In-memory tensors have no files to shard by: each worker keeps its slice of every
    # global batch (the default, AUTO, tries files first and warns before falling back).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


class RichProgress(tf.keras.callbacks.Callback):
    """Renders Keras training as a rich progress bar: one bar over all epochs' steps."""

    def __init__(self, *, epochs: int, steps_per_epoch: int, enabled: bool = True):
        super().__init__()
        self._progress = Progress(
            TextColumn("[bold]two-tower"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            disable=not enabled,
        )
        self._total = epochs * steps_per_epoch
        self._task = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._progress.start()
        self._task = self._progress.add_task("train", total=self._total, status="")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss", float("nan"))
        self._progress.update(self._task, advance=1, status=f"epoch {self._epoch} loss {loss:.4f}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._progress.console.log(
            f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}"
        )

    def on_train_end(self, logs=None):
        # Early stopping ends before the planned total; show the bar as finished.
        self._progress.update(self._task, completed=self._total)
        self._progress.stop()


class CheckpointEachEpoch(tf.keras.callbacks.Callback):
    """Saves model and optimizer with a tf.train.CheckpointManager after every epoch.

    Only the chief keeps checkpoints. Under multi-worker training every worker must still
    save (saving may read variables through collectives), so the others save into a temporary
    folder that is removed when training ends.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3):
        super().__init__()
        self._directory = str(directory)
        self._max_to_keep = max_to_keep
        self._chief = is_chief()
        self.manager: tf.train.CheckpointManager | None = None

    def on_train_begin(self, logs=None):
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        directory = self._directory if self._chief else tempfile.mkdtemp(prefix="recsys-ckpt-")
        self.manager = tf.train.CheckpointManager(
            checkpoint, directory, max_to_keep=self._max_to_keep
        )

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch + 1)

    def on_train_end(self, logs=None):
        if not self._chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)

    @property
    def latest_checkpoint(self) -> str | None:
        """The chief's newest checkpoint prefix; None on other workers (nothing kept)."""
        return self.manager.latest_checkpoint if self._chief else None


@dataclass(frozen=True)
class TwoTowerTrainResult:
    model: TwoTowerModel
    history: dict[str, list[float]]
    latest_checkpoint: str | None
    item_probability: np.ndarray  # [n_items], used for log-Q


def train_two_tower(
    train: RetrievalExamples,
    validation: RetrievalExamples,
    *,
    spec: QueryFeatureSpec,
    config: TwoTowerConfig,
    checkpoint_dir: str | Path,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: tuple[tf.keras.callbacks.Callback, ...] = (),
) -> TwoTowerTrainResult:
    """Fit under ``strategy`` (default ``distribution_strategy()``) with early stopping on
    ``validation`` loss.

    ``validation`` should be the caller's later time window. The best epoch's weights are
    restored at the end; the chief writes a checkpoint after every epoch under
    ``checkpoint_dir``. ``config.batch_size`` is the global batch, split across replicas.
    ``callbacks`` are extra Keras callbacks (e.g. one that records every step's loss).
    """
    if len(train) == 0 or len(validation) == 0:
        raise ModelInputError("train and validation examples must be non-empty")
    # The strategy first: a multi-worker one must exist before any other TF op runs.
    strategy = strategy or distribution_strategy()
    set_seeds(config.seed)
    probability = item_sampling_probability(
        np.asarray(train.candidate["item_id"], np.int64), spec.n_items
    )
    train_ds = make_dataset(train, probability, spec=spec, config=config, shuffle=True)
    val_ds = make_dataset(validation, probability, spec=spec, config=config, shuffle=False)
    with strategy.scope():
        model = TwoTowerModel(spec=spec, config=config)
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    checkpoints = CheckpointEachEpoch(checkpoint_dir)
    callbacks = [
        *callbacks,
        tf.keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        checkpoints,
        RichProgress(
            epochs=config.epochs,
            steps_per_epoch=-(-len(train) // config.batch_size),
            enabled=config.show_progress,
        ),
    ]
    history = model.fit(
        train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks, verbose=0
    )
    return TwoTowerTrainResult(
        model=model,
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        latest_checkpoint=checkpoints.latest_checkpoint,
        item_probability=probability,
    )


def embed(tower: tf.keras.Model, arrays: Arrays, *, batch_size: int = 4096) -> np.ndarray:
    """Run a tower over a dict of arrays (only its input keys are used): [rows, embedding_dim]."""
    inputs = {k: arrays[k] for k in tower.input_names}
    n = len(next(iter(inputs.values())))
    # predict_on_batch, not predict: predict's tf.data map is rewritten under op determinism
    # and TensorFlow logs a (harmless) NodeDef error for it on every call.
    return np.concatenate(
        [
            np.asarray(
                tower.predict_on_batch({k: v[i : i + batch_size] for k, v in inputs.items()})
            )
            for i in range(0, n, batch_size)
        ]
    )
