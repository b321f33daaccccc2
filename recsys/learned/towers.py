"""Two-tower retrieval on Feast features: encodings, the towers, training with early stopping.

Query tower inputs (from ``two_tower_v1_query`` rows), n rows:
  ``seq_items``/``seq_cats`` int32 [n, L] vocabulary positions (0 = padding/unknown),
  ``seq_weights`` float32 [n, L] behaviour weight x short-horizon decay of each recent event,
  ``short_cats``/``long_cats`` int32 [n, C], ``short_weights``/``long_weights`` float32 [n, C]
  (top-category interest shares), ``dense`` float32 [n, F] (shift + funnel, log-compressed).
Candidate tower inputs, n items: ``item``/``category`` int32 [n], ``dense`` float32 [n, G]
(item_stats, log-compressed), ``graph`` float32 [n, D] (GNN item embedding).
Both towers output L2-normalised float32 [n, dim]; the item and category embedding tables are
shared, so the user's recent items and the candidates live in one space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import tensorflow as tf

from recsys.config import FeatureConfig
from recsys.evaluation._scoring import IdIndex
from recsys.models.device import set_seeds
from recsys.models.gnn import in_batch_softmax_loss

QUERY_DENSE = (
    "user_interest_short__interest_total_short",
    "user_interest_long__interest_total_long",
    "user_interest_shift__js_divergence",
    "user_interest_shift__novel_category_share",
    "user_interest_shift__entropy_short",
    "user_interest_shift__entropy_long",
    "user_behavior_funnel__n_view",
    "user_behavior_funnel__n_cart",
    "user_behavior_funnel__n_fav",
    "user_behavior_funnel__n_buy",
    "user_behavior_funnel__buy_rate",
    "user_behavior_funnel__hours_since_last_event",
    "user_recent_sequence__seq_len",
)
ITEM_DENSE = (
    "item_stats__pop_short",
    "item_stats__pop_long",
    "item_stats__n_users",
    "item_stats__buy_rate",
    "item_stats__trend",
    "item_stats__hours_since_last_event",
)
# A missing "hours since" means "never": far in the past.
NEVER_HOURS = 10_000.0


@dataclass(frozen=True)
class TowerConfig:
    """Sizes and training knobs of the two towers (small: CPU-friendly)."""

    dim: int = 32
    hidden: int = 64
    sequence_length: int = 20
    top_categories: int = 5
    temperature: float = 0.1
    learning_rate: float = 3e-3
    batch_size: int = 512
    max_epochs: int = 6
    patience: int = 1
    max_examples: int = 300_000
    seed: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class Vocabulary:
    """Item and category ids -> embedding rows 1..n (row 0 = padding and unknown ids)."""

    items: IdIndex
    categories: IdIndex

    def item_rows(self, ids: np.ndarray) -> np.ndarray:
        return (self.items.positions(ids) + 1).astype(np.int32)

    def category_rows(self, ids: np.ndarray) -> np.ndarray:
        return (self.categories.positions(ids) + 1).astype(np.int32)


def _compress(values: np.ndarray) -> np.ndarray:
    return (np.sign(values) * np.log1p(np.abs(values))).astype(np.float32)


def _dense(frame: pl.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """float32 [n, len(columns)]: log-compressed; nulls -> 0, missing hours -> 'never'."""
    out = []
    for column in columns:
        fill = NEVER_HOURS if "hours_since" in column else 0.0
        series = frame[column].cast(pl.Float64).fill_nan(None).fill_null(fill)
        out.append(series.to_numpy())
    return _compress(np.stack(out, axis=1))


def _padded(frame: pl.DataFrame, column: str, length: int) -> np.ndarray:
    """The first ``length`` entries of a list column as an object-free array [n, length]
    (float64, NaN padded)."""
    lists = frame[column].fill_null([]).list.head(length)
    out = np.full((frame.height, length), np.nan)
    lens = lists.list.len().to_numpy()
    flat = lists.explode().drop_nulls().cast(pl.Float64).to_numpy()
    rows = np.repeat(np.arange(frame.height), lens)
    cols = np.concatenate([np.arange(n) for n in lens]) if len(lens) else np.zeros(0, int)
    out[rows, cols] = flat
    return out


def _ids(padded: np.ndarray, rows_of) -> np.ndarray:
    known = ~np.isnan(padded)
    out = np.zeros(padded.shape, np.int32)
    out[known] = rows_of(padded[known].astype(np.int64))
    return out


def _shares(padded: np.ndarray) -> np.ndarray:
    scores = np.nan_to_num(padded)
    total = scores.sum(axis=1, keepdims=True)
    return (scores / np.where(total > 0, total, 1.0)).astype(np.float32)


def encode_queries(
    features: pl.DataFrame, vocab: Vocabulary, config: TowerConfig, features_config: FeatureConfig
) -> dict[str, np.ndarray]:
    """Query-tower inputs (module doc) from ``two_tower_v1_query`` rows."""
    length, top = config.sequence_length, config.top_categories
    behaviors = features["user_recent_sequence__seq_behaviors"].fill_null([]).list.head(length)
    weights = behaviors.list.eval(
        pl.element().replace_strict(features_config.behavior_weights, return_dtype=pl.Float64)
    )
    gaps = _padded(features, "user_recent_sequence__seq_gap_seconds", length)
    decay = 2.0 ** (-np.nan_to_num(gaps) / (features_config.short_half_life_hours * 3600.0))
    seq_weights = np.nan_to_num(_padded(pl.DataFrame({"w": weights}), "w", length) * decay).astype(
        np.float32
    )
    return {
        "seq_items": _ids(
            _padded(features, "user_recent_sequence__seq_item_ids", length), vocab.item_rows
        ),
        "seq_cats": _ids(
            _padded(features, "user_recent_sequence__seq_category_ids", length), vocab.category_rows
        ),
        "seq_weights": seq_weights,
        "short_cats": _ids(
            _padded(features, "user_interest_short__top_categories_short", top), vocab.category_rows
        ),
        "short_weights": _shares(_padded(features, "user_interest_short__top_scores_short", top)),
        "long_cats": _ids(
            _padded(features, "user_interest_long__top_categories_long", top), vocab.category_rows
        ),
        "long_weights": _shares(_padded(features, "user_interest_long__top_scores_long", top)),
        "dense": _dense(features, QUERY_DENSE),
    }


def encode_candidates(
    features: pl.DataFrame, graph: np.ndarray, vocab: Vocabulary
) -> dict[str, np.ndarray]:
    """Candidate-tower inputs from ``two_tower_v1_candidate`` rows (item_id, item_stats__*) and
    their GNN embeddings ``graph`` [n, D]."""
    return {
        "item": vocab.item_rows(features["item_id"].to_numpy()),
        "category": vocab.category_rows(
            features["item_stats__category_id"].fill_null(-1).to_numpy()
        ),
        "dense": _dense(features, ITEM_DENSE),
        "graph": np.asarray(graph, np.float32),
    }


def _pool(table: tf.keras.layers.Embedding, ids: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Weighted mean of the rows of ``ids`` [n, L] -> [n, d]; padding rows weigh 0."""
    weights = weights * tf.cast(ids > 0, weights.dtype)
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    pooled = tf.reduce_sum(table(ids) * weights[..., None], axis=1)
    return pooled / tf.maximum(total, 1e-6)


def build_towers(
    *, vocab: Vocabulary, config: TowerConfig, n_query_dense: int, n_item_dense: int, graph_dim: int
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(query tower, candidate tower): Keras models from the input dicts to [n, dim]."""
    item_table = tf.keras.layers.Embedding(len(vocab.items) + 1, config.dim, name="item_embedding")
    category_table = tf.keras.layers.Embedding(
        len(vocab.categories) + 1, config.dim, name="category_embedding"
    )
    length, top = config.sequence_length, config.top_categories
    q = {
        "seq_items": tf.keras.Input((length,), dtype=tf.int32, name="seq_items"),
        "seq_cats": tf.keras.Input((length,), dtype=tf.int32, name="seq_cats"),
        "seq_weights": tf.keras.Input((length,), name="seq_weights"),
        "short_cats": tf.keras.Input((top,), dtype=tf.int32, name="short_cats"),
        "short_weights": tf.keras.Input((top,), name="short_weights"),
        "long_cats": tf.keras.Input((top,), dtype=tf.int32, name="long_cats"),
        "long_weights": tf.keras.Input((top,), name="long_weights"),
        "dense": tf.keras.Input((n_query_dense,), name="dense"),
    }
    query = tf.keras.layers.Concatenate()(
        [
            _pool(item_table, q["seq_items"], q["seq_weights"]),
            _pool(category_table, q["seq_cats"], q["seq_weights"]),
            _pool(category_table, q["short_cats"], q["short_weights"]),
            _pool(category_table, q["long_cats"], q["long_weights"]),
            tf.keras.layers.Dense(config.hidden, activation="relu")(q["dense"]),
        ]
    )
    c = {
        "item": tf.keras.Input((), dtype=tf.int32, name="item"),
        "category": tf.keras.Input((), dtype=tf.int32, name="category"),
        "dense": tf.keras.Input((n_item_dense,), name="dense"),
        "graph": tf.keras.Input((graph_dim,), name="graph"),
    }
    candidate = tf.keras.layers.Concatenate()(
        [
            item_table(c["item"]),
            category_table(c["category"]),
            tf.keras.layers.Dense(config.hidden, activation="relu")(c["dense"]),
            tf.keras.layers.Dense(config.hidden, activation="relu")(c["graph"]),
        ]
    )
    return _head(q, query, config, "query_tower"), _head(c, candidate, config, "candidate_tower")


def _head(inputs: dict, x: tf.Tensor, config: TowerConfig, name: str) -> tf.keras.Model:
    x = tf.keras.layers.Dense(config.hidden, activation="relu")(x)
    x = tf.keras.layers.Dense(config.dim)(x)
    out = tf.keras.layers.Lambda(lambda t: tf.math.l2_normalize(t, axis=-1), name="normalise")(x)
    return tf.keras.Model(inputs, out, name=name)


@dataclass(frozen=True)
class TowerData:
    """Row-aligned training examples: query inputs, candidate inputs, item rows, weights."""

    queries: dict[str, np.ndarray]
    candidates: dict[str, np.ndarray]
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)

    def take(self, idx: np.ndarray) -> tuple[dict, dict, np.ndarray]:
        return (
            {k: v[idx] for k, v in self.queries.items()},
            {k: v[idx] for k, v in self.candidates.items()},
            self.weights[idx],
        )


def train_towers(
    query_tower: tf.keras.Model,
    candidate_tower: tf.keras.Model,
    train: TowerData,
    validation: TowerData,
    config: TowerConfig,
) -> list[tuple[float, float]]:
    """In-batch softmax training; stops when the validation loss stops falling and keeps the best
    epoch's weights. Returns (train loss, validation loss) per epoch."""
    from rich.progress import Progress

    set_seeds(config.seed)
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)
    variables = query_tower.trainable_variables + [
        v
        for v in candidate_tower.trainable_variables
        if v.ref() not in {w.ref() for w in query_tower.trainable_variables}
    ]

    def loss_of(queries, candidates, weights, training):
        return in_batch_softmax_loss(
            query_tower(queries, training=training),
            candidate_tower(candidates, training=training),
            candidates["item"],
            weights,
            temperature=config.temperature,
        )

    @tf.function(reduce_retracing=True)
    def step(queries, candidates, weights):
        with tf.GradientTape() as tape:
            loss = loss_of(queries, candidates, weights, True)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    evaluate = tf.function(lambda q, c, w: loss_of(q, c, w, False), reduce_retracing=True)
    rng = np.random.default_rng(config.seed)
    history: list[tuple[float, float]] = []
    best, best_weights, waited = np.inf, None, 0
    steps = -(-len(train) // config.batch_size)
    with Progress(disable=not config.show_progress, transient=True) as progress:
        task = progress.add_task("two-tower", total=config.max_epochs * steps)
        for epoch in range(config.max_epochs):
            order = rng.permutation(len(train))
            losses = []
            for start in range(0, len(order), config.batch_size):
                losses.append(float(step(*train.take(order[start : start + config.batch_size]))))
                progress.update(
                    task, advance=1, description=f"two-tower epoch {epoch + 1} {losses[-1]:.3f}"
                )
            val = _mean_loss(evaluate, validation, config.batch_size)
            history.append((float(np.mean(losses)), val))
            if val < best - 1e-4:
                best, waited = val, 0
                best_weights = (query_tower.get_weights(), candidate_tower.get_weights())
            else:
                waited += 1
                if waited > config.patience:
                    break
    if best_weights is not None:
        query_tower.set_weights(best_weights[0])
        candidate_tower.set_weights(best_weights[1])
    return history


def _mean_loss(evaluate, data: TowerData, batch_size: int) -> float:
    """Weighted mean in-batch loss over fixed, time-ordered batches (comparable across epochs)."""
    if not len(data):
        return float("nan")
    total = weight = 0.0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        q, c, w = data.take(idx)
        if len(idx) < 2:
            continue
        total += float(evaluate(q, c, w)) * float(w.sum())
        weight += float(w.sum())
    return total / weight if weight else float("nan")
