"""TF-GNN interest-association model: users, items and categories in one heterogeneous graph.

The graph (``build_graph``) has three node sets, ``user``, ``item``, ``category``, each with an
``id`` feature (the caller's 0..n-1 index), and one edge set per relation plus its reverse, so
that every node set receives messages (TF-GNN convolutions send along source -> target):

| edge set              | source -> target    | weight feature              |
|-----------------------|---------------------|-----------------------------|
| ``{b}`` for behaviour | user -> item        | behaviour weight (caller's) |
| ``{b}_rev``           | item -> user        | same                        |
| ``transition``        | item -> item        | session transition weight   |
| ``transition_rev``    | item -> item        | same                        |
| ``in_category``       | item -> category    | 1                           |
| ``in_category_rev``   | category -> item    | 1                           |

The model follows TF-GNN's modelling guide in three named steps: ``encode`` (trainable id
embeddings via ``MapFeatures``), ``update_{k}`` (``GraphUpdate`` rounds with ``SimpleConv`` mean
pooling on every edge set) and ``readout`` (L2-normalised user, item, category embeddings).
It trains by link prediction on *future* interactions: graph edges from before t1, target
(user, item) pairs from t1..t2, in-batch sampled softmax weighted by behaviour.
Graphs up to ``GnnConfig.max_full_graph_edges`` train on the full graph every step; bigger
ones train on subgraphs drawn by TF-GNN's in-memory sampler around the batch's users and items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
import tensorflow_gnn as tfgnn
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from tensorflow_gnn.experimental import sampler as tfgnn_sampler
from tensorflow_gnn.experimental.sampler.subgraph_pipeline import SamplingPipeline

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.models import ModelInputError
from recsys.models.device import compute_dtype, set_seeds
from recsys.warehouse.schema import BEHAVIORS

USER, ITEM, CATEGORY = "user", "item", "category"
NODE_SETS = (USER, ITEM, CATEGORY)
TRANSITION, IN_CATEGORY = "transition", "in_category"
ID, WEIGHT = "id", "weight"

# (source array, target array, weight array), all length num_edges.
EdgeArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def reverse_name(edge_set_name: str) -> str:
    return f"{edge_set_name}_rev"


@dataclass(frozen=True)
class GnnConfig:
    """Knobs of the GNN model and its training."""

    hidden_dim: int = 64
    num_updates: int = 2
    epochs: int = 5
    batch_size: int = 1024
    learning_rate: float = 5e-3
    temperature: float = 0.1
    # Above this many directed input edges, train on sampled subgraphs instead of the full graph.
    max_full_graph_edges: int = 1_000_000
    # "auto" (by edge count), "full" or "sampled".
    training_mode: str = "auto"
    # Neighbours drawn per edge set at hop 1, 2, ... (one hop per graph update).
    sample_sizes: tuple[int, ...] = (8, 4)
    seed: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class LinkTargets:
    """Future (user, item) interactions to predict, one row per pair; ``weight`` > 0."""

    user: np.ndarray
    item: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.user) == len(self.item) == len(self.weight)):
            raise ModelInputError("LinkTargets arrays must have the same length")
        if len(self.user) == 0:
            raise ModelInputError("LinkTargets is empty: no future interactions to learn from")


@dataclass(frozen=True)
class GnnEmbeddings:
    """Readout embeddings by node index: user [n_users, d], item [n_items, d], category [n_c, d]."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray

    def to_parquet(
        self,
        directory: str | Path,
        *,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        category_ids: np.ndarray,
    ) -> dict[str, Path]:
        """Write ``gnn_{user,item,category}_embeddings.parquet`` (original id, ``embedding`` list).

        ``*_ids[i]`` is the original id of node index ``i``. Returns the written paths by node set.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for name, emb, ids in (
            (USER, self.user, user_ids),
            (ITEM, self.item, item_ids),
            (CATEGORY, self.category, category_ids),
        ):
            if len(ids) != len(emb):
                raise ModelInputError(f"{name}_ids has {len(ids)} ids for {len(emb)} embeddings")
            flat = pa.array(np.asarray(emb, np.float32).reshape(-1))
            table = pa.table(
                {
                    f"{name}_id": pa.array(np.asarray(ids, np.int64)),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]),
                }
            )
            path = directory / f"gnn_{name}_embeddings.parquet"
            pq.write_table(table, path)
            written[name] = path
        return written


# --------------------------------------------------------------------------------------------
# Graph


def _check_edges(name: str, edges: EdgeArrays, n_source: int, n_target: int) -> None:
    src, dst, weight = edges
    if not (len(src) == len(dst) == len(weight)):
        raise ModelInputError(f"edge set {name!r}: source, target and weight lengths differ")
    for side, idx, n in (("source", src, n_source), ("target", dst, n_target)):
        if len(idx) and (np.min(idx) < 0 or np.max(idx) >= n):
            raise ModelInputError(f"edge set {name!r}: {side} index outside 0..{n - 1}")


def _edge_set(source: str, target: str, edges: EdgeArrays) -> tfgnn.EdgeSet:
    src, dst, weight = edges
    # int32 indices match what the in-memory sampler emits, so one model spec fits both paths.
    return tfgnn.EdgeSet.from_fields(
        sizes=tf.constant([len(src)], tf.int32),
        adjacency=tfgnn.Adjacency.from_indices(
            (source, tf.constant(src, tf.int32)), (target, tf.constant(dst, tf.int32))
        ),
        features={WEIGHT: tf.constant(weight, tf.float32)},
    )


def build_graph(
    *,
    n_users: int,
    n_items: int,
    n_categories: int,
    user_item_edges: Mapping[str, EdgeArrays],
    item_item_edges: EdgeArrays,
    item_category: np.ndarray,
) -> tfgnn.GraphTensor:
    """The heterogeneous graph (see module docstring) as a scalar ``GraphTensor``.

    ``user_item_edges[b]`` = (user index [E], item index [E], weight [E]) for behaviour ``b``
    (missing behaviours get empty edge sets); ``item_item_edges`` = session transitions
    (src item [E], dst item [E], weight [E]); ``item_category[i]`` = category index of item ``i``.
    """
    unknown = set(user_item_edges) - set(BEHAVIORS)
    if unknown:
        raise ModelInputError(f"unknown behaviours in user_item_edges: {sorted(unknown)}")
    if len(item_category) != n_items:
        raise ModelInputError(f"item_category has {len(item_category)} rows for {n_items} items")
    empty: EdgeArrays = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    item_index = np.arange(n_items)
    relations: dict[str, tuple[str, str, EdgeArrays]] = {
        b: (USER, ITEM, user_item_edges.get(b, empty)) for b in BEHAVIORS
    }
    relations[TRANSITION] = (ITEM, ITEM, item_item_edges)
    relations[IN_CATEGORY] = (ITEM, CATEGORY, (item_index, item_category, np.ones(n_items)))
    sizes = {USER: n_users, ITEM: n_items, CATEGORY: n_categories}
    edge_sets = {}
    for name, (source, target, edges) in relations.items():
        _check_edges(name, edges, sizes[source], sizes[target])
        src, dst, weight = edges
        edge_sets[name] = _edge_set(source, target, edges)
        edge_sets[reverse_name(name)] = _edge_set(target, source, (dst, src, weight))
    node_sets = {
        name: tfgnn.NodeSet.from_fields(
            sizes=tf.constant([n], tf.int32), features={ID: tf.range(n, dtype=tf.int64)}
        )
        for name, n in sizes.items()
    }
    return tfgnn.GraphTensor.from_pieces(node_sets=node_sets, edge_sets=edge_sets)


def num_input_edges(graph: tfgnn.GraphTensor) -> int:
    """Edges the caller gave (reverse edge sets not counted)."""
    return sum(
        int(es.total_size) for name, es in graph.edge_sets.items() if not name.endswith("_rev")
    )


def relaxed_spec(spec: tfgnn.GraphTensorSpec) -> tfgnn.GraphTensorSpec:
    """``spec`` with any number of components, nodes and edges, so one trace serves all graphs."""
    return spec.relax(num_components=True, num_nodes=True, num_edges=True)


# --------------------------------------------------------------------------------------------
# Model: encode -> graph updates -> readout


def _encode_step(*, node_counts: Mapping[str, int], hidden_dim: int) -> tfgnn.keras.layers.Layer:
    """Initial states: trainable embedding of each node's ``id``; edge weight -> log1p [E, 1]."""

    def node_sets_fn(node_set, *, node_set_name):
        embed = tf.keras.layers.Embedding(
            node_counts[node_set_name], hidden_dim, name=f"{node_set_name}_id_embedding"
        )
        return embed(node_set[ID])

    def edge_sets_fn(edge_set, *, edge_set_name):
        del edge_set_name
        # The weight joins float16 states under mixed precision, so it takes the compute dtype.
        log_weight = tf.math.log1p(tf.maximum(edge_set[WEIGHT], 0.0))
        return {WEIGHT: tf.cast(tf.expand_dims(log_weight, -1), compute_dtype())}

    return tfgnn.keras.layers.MapFeatures(
        node_sets_fn=node_sets_fn, edge_sets_fn=edge_sets_fn, name="encode"
    )


def _update_step(
    *, graph_spec: tfgnn.GraphTensorSpec, hidden_dim: int, round_index: int
) -> tfgnn.keras.layers.GraphUpdate:
    """One round: each node set mean-pools messages from every edge set pointing at it."""
    node_set_updates = {}
    for node_set_name in graph_spec.node_sets_spec:
        convs = {
            edge_set_name: tfgnn.keras.layers.SimpleConv(
                message_fn=tf.keras.layers.Dense(hidden_dim, activation="relu"),
                reduce_type="mean",
                receiver_tag=tfgnn.TARGET,
                sender_edge_feature=WEIGHT,
            )
            for edge_set_name, edge_spec in graph_spec.edge_sets_spec.items()
            if edge_spec.adjacency_spec.target_name == node_set_name
        }
        node_set_updates[node_set_name] = tfgnn.keras.layers.NodeSetUpdate(
            convs,
            tfgnn.keras.layers.NextStateFromConcat(
                tf.keras.layers.Dense(hidden_dim, activation="relu")
            ),
        )
    return tfgnn.keras.layers.GraphUpdate(node_sets=node_set_updates, name=f"update_{round_index}")


class _Readout(tf.keras.layers.Layer):
    """Final states of all nodes, projected and L2-normalised, in float32: {set: [n, d]}."""

    def __init__(self, hidden_dim: int, **kwargs):
        super().__init__(**kwargs)
        self._projections = {
            name: tf.keras.layers.Dense(hidden_dim, name=f"{name}_projection") for name in NODE_SETS
        }

    def call(self, graph: tfgnn.GraphTensor) -> dict[str, tf.Tensor]:
        out = {}
        for name, projection in self._projections.items():
            state = projection(graph.node_sets[name][tfgnn.HIDDEN_STATE])
            out[name] = tf.math.l2_normalize(tf.cast(state, tf.float32), axis=-1)
        return out


def build_gnn_encoder(
    *,
    graph_spec: tfgnn.GraphTensorSpec,
    node_counts: Mapping[str, int],
    hidden_dim: int,
    num_updates: int,
) -> tf.keras.Model:
    """Keras model GraphTensor -> {"user": [n_u, d], "item": [n_i, d], "category": [n_c, d]}.

    ``graph_spec`` is relaxed inside, so the same model runs on the full graph and on merged
    sampled subgraphs. ``node_counts`` = number of nodes per set in the full graph (embedding rows).
    """
    spec = relaxed_spec(graph_spec)
    graph = inputs = tf.keras.Input(type_spec=spec)
    graph = _encode_step(node_counts=node_counts, hidden_dim=hidden_dim)(graph)
    for k in range(num_updates):
        graph = _update_step(graph_spec=spec, hidden_dim=hidden_dim, round_index=k)(graph)
    outputs = _Readout(hidden_dim, name="readout")(graph)
    return tf.keras.Model(inputs, outputs, name="gnn_encoder")


# --------------------------------------------------------------------------------------------
# Training


def in_batch_softmax_loss(
    user_emb: tf.Tensor,
    item_emb: tf.Tensor,
    item_ids: tf.Tensor,
    weights: tf.Tensor,
    *,
    temperature: float,
) -> tf.Tensor:
    """Weighted sampled-softmax loss; the batch's other items are the negatives.

    ``user_emb``, ``item_emb`` [B, d] row-aligned positives; ``item_ids`` [B] masks accidental
    hits (the same item elsewhere in the batch is not a negative); ``weights`` [B].
    """
    logits = tf.matmul(user_emb, item_emb, transpose_b=True) / temperature
    same_item = tf.equal(item_ids[:, None], item_ids[None, :])
    accidental = tf.logical_and(same_item, tf.logical_not(tf.eye(tf.shape(item_ids)[0]) > 0))
    logits = tf.where(accidental, tf.constant(-1e9, logits.dtype), logits)
    labels = tf.range(tf.shape(logits)[0])
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(per_example * weights) / tf.reduce_sum(weights)


def _first_node_states(graph: tfgnn.GraphTensor, states: tf.Tensor, node_set: str) -> tf.Tensor:
    """State of each component's first node (the sampler puts the seed first): [components, d]."""
    starts = tf.math.cumsum(graph.node_sets[node_set].sizes, exclusive=True)
    return tf.gather(states, starts)


def _hop_merged_sampling_spec(
    schema,
    edge_sets: Mapping[str, tuple[str, str]],
    seed_node_set: str,
    sample_sizes: tuple[int, ...],
):
    """Sampling spec that samples every outgoing edge set once per hop from all nodes reached.

    ``make_sampling_spec_tree`` branches per path (about 7x more sampling ops with 12 edge sets,
    and minutes to build); joining the hop's frontier per node set keeps one op per edge set.
    """
    builder = tfgnn.sampler.SamplingSpecBuilder(
        schema, default_strategy=tfgnn.sampler.SamplingStrategy.RANDOM_UNIFORM
    )
    frontier = {seed_node_set: [builder.seed(seed_node_set)]}
    for hop, sample_size in enumerate(sample_sizes):
        reached: dict[str, list] = {}
        for node_set, steps in frontier.items():
            parent = steps[0] if len(steps) == 1 else tfgnn.sampler.SamplingSpecBuilder.join(steps)
            for edge_set_name, (source, target) in edge_sets.items():
                if source == node_set:
                    step = parent.sample(
                        sample_size,
                        edge_set_name,
                        op_name=f"{seed_node_set}_hop{hop}_{node_set}_{edge_set_name}",
                    )
                    reached.setdefault(target, []).append(step)
        frontier = reached
    return builder.build()


class InMemorySubgraphs:
    """Subgraphs of a big in-memory graph around seed nodes, via TF-GNN's in-memory sampler."""

    def __init__(self, graph: tfgnn.GraphTensor, *, sample_sizes: tuple[int, ...], seed: int):
        self._edge_sets = {
            name: (es.adjacency.source_name, es.adjacency.target_name)
            for name, es in graph.edge_sets.items()
        }
        schema = tfgnn.create_schema_pb_from_graph_spec(graph)
        specs = {
            name: _hop_merged_sampling_spec(schema, self._edge_sets, name, sample_sizes)
            for name in NODE_SETS
        }
        # Samplers and accessors hold tensors of the full graph; they are made here, eagerly,
        # because the pipeline would otherwise create them inside the first tf.function that
        # calls it and a second function could not use them.
        edge_samplers = {
            op.op_name: tfgnn_sampler.InMemUniformEdgesSampler.from_graph_tensor(
                graph, op.edge_set_name, sample_size=op.sample_size, seed=seed, name=op.op_name
            )
            for spec in specs.values()
            for op in spec.sampling_ops
        }
        accessors = {
            name: tfgnn_sampler.InMemIndexToFeaturesAccessor.from_graph_tensor(graph, name)
            for name in NODE_SETS
        }
        # The pipeline is called directly inside tf.function: wrapping it in a Keras model
        # (create_sampling_model_from_spec) costs minutes of graph construction per node set.
        self._pipelines = {
            name: SamplingPipeline(
                graph_schema=schema,
                sampling_spec=spec,
                edge_sampler_factory=lambda op: edge_samplers[op.op_name],
                node_features_accessor_factory=accessors.__getitem__,
            )
            for name, spec in specs.items()
        }

    def __call__(self, node_set: str, seeds: tf.Tensor) -> tfgnn.GraphTensor:
        """One merged GraphTensor with one component per seed in ``seeds`` [B] (seed node first)."""
        seeds = tf.cast(seeds, tf.int32)  # the adjacency's index dtype
        ragged = tf.RaggedTensor.from_row_lengths(seeds, tf.ones_like(seeds))
        return self._complete(self._pipelines[node_set](ragged).merge_batch_to_components())

    def _complete(self, sub: tfgnn.GraphTensor) -> tfgnn.GraphTensor:
        """``sub`` plus empty node and edge sets for those the sampling did not reach.

        The encoder has a convolution per edge set, so every subgraph must carry all of them.
        """
        components = tf.shape(sub.context.sizes)[0]
        zero_per_component = tf.zeros([components], tf.int32)
        node_sets = dict(sub.node_sets)
        for name in NODE_SETS:
            if name not in node_sets:
                node_sets[name] = tfgnn.NodeSet.from_fields(
                    sizes=zero_per_component, features={ID: tf.zeros([0], tf.int64)}
                )
        edge_sets = dict(sub.edge_sets)
        for name, (source, target) in self._edge_sets.items():
            if name not in edge_sets:
                empty = tf.zeros([0], tf.int32)
                edge_sets[name] = tfgnn.EdgeSet.from_fields(
                    sizes=zero_per_component,
                    adjacency=tfgnn.Adjacency.from_indices((source, empty), (target, empty)),
                    features={WEIGHT: tf.zeros([0], tf.float32)},
                )
        return tfgnn.GraphTensor.from_pieces(
            context=sub.context, node_sets=node_sets, edge_sets=edge_sets
        )


def _batches(targets: LinkTargets, batch_size: int, rng: np.random.Generator) -> Iterator:
    order = rng.permutation(len(targets.user))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield (
            tf.constant(targets.user[idx], tf.int64),
            tf.constant(targets.item[idx], tf.int64),
            tf.constant(targets.weight[idx], tf.float32),
        )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


@dataclass(frozen=True)
class GnnTrainResult:
    embeddings: GnnEmbeddings
    mode: str  # "full" or "sampled"
    losses: tuple[float, ...]  # mean loss per epoch
    seconds_per_step: float  # median over the steps after the first (which traces)
    # The trained encoder: embeds later graphs of the same node sets (``full_graph_embeddings``).
    encoder: tf.keras.Model


def choose_mode(graph: tfgnn.GraphTensor, config: GnnConfig) -> str:
    if config.training_mode in ("full", "sampled"):
        return config.training_mode
    if config.training_mode != "auto":
        raise ModelInputError(
            f"training_mode must be auto, full or sampled: {config.training_mode}"
        )
    return "full" if num_input_edges(graph) <= config.max_full_graph_edges else "sampled"


class GnnTrainStep:
    """The encoder for ``graph``, its optimizer and one compiled training step.

    ``step(users [B], items [B], weights [B])`` takes one optimizer step on the in-batch softmax
    loss of those target pairs and returns the loss; ``embeddings()`` reads out every node.
    ``mode`` is "full" (every step runs the whole graph) or "sampled" (``choose_mode``).
    """

    def __init__(self, graph: tfgnn.GraphTensor, *, config: GnnConfig):
        self.node_counts = {name: int(graph.node_sets[name].total_size) for name in NODE_SETS}
        self.mode = choose_mode(graph, config)
        self.encoder = build_gnn_encoder(
            graph_spec=graph.spec,
            node_counts=self.node_counts,
            hidden_dim=config.hidden_dim,
            num_updates=config.num_updates,
        )
        self._graph, self._config = graph, config
        self._optimizer = tf.keras.optimizers.Adam(config.learning_rate)
        if self.mode == "full":
            self._subgraphs = None
            self._embed_pairs = _full_graph_pairs(self.encoder, graph)
        else:
            self._subgraphs = InMemorySubgraphs(
                graph, sample_sizes=config.sample_sizes, seed=config.seed
            )
            self._embed_pairs = _sampled_pairs(self.encoder, self._subgraphs)
        self.step = tf.function(self._step, reduce_retracing=True)

    def _step(self, users: tf.Tensor, items: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            user_emb, item_emb = self._embed_pairs(users, items)
            loss = in_batch_softmax_loss(
                user_emb, item_emb, items, weights, temperature=self._config.temperature
            )
        variables = self.encoder.trainable_variables
        grads = tape.gradient(loss, variables)
        # The category readout gets no gradient from a user-item loss; skip such variables.
        self._optimizer.apply_gradients(
            (g, v) for g, v in zip(grads, variables, strict=True) if g is not None
        )
        return loss

    def embeddings(self) -> GnnEmbeddings:
        """Readout of every node: one full-graph pass, or a sampled subgraph around each node."""
        if self._subgraphs is None:
            return full_graph_embeddings(self.encoder, self._graph)
        return sampled_embeddings(
            self.encoder, self._subgraphs, self.node_counts, batch_size=self._config.batch_size
        )


def train_gnn(
    graph: tfgnn.GraphTensor, targets: LinkTargets, *, config: GnnConfig
) -> GnnTrainResult:
    """Train the encoder on ``graph`` (edges before t1) to predict ``targets`` (t1..t2 pairs).

    Runs in the default strategy's scope, also in a multi-worker cluster: full-graph message
    passing does not split across replicas, so every worker trains the same copy (same data,
    seed and deterministic kernels) and the towers of all workers read the same embeddings.
    On one GPU TensorFlow places the ops there anyway.
    """
    set_seeds(config.seed)
    for side, ids in ((USER, targets.user), (ITEM, targets.item)):
        n = int(graph.node_sets[side].total_size)
        if np.min(ids) < 0 or np.max(ids) >= n:
            raise ModelInputError(f"LinkTargets.{side} index outside 0..{n - 1}")
    trainer = GnnTrainStep(graph, config=config)
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = -(-len(targets.user) // config.batch_size)
    losses, step_times = [], []
    with _progress(config.show_progress) as progress:
        task = progress.add_task(
            f"GNN ({trainer.mode})", total=config.epochs * steps_per_epoch, status="loss -"
        )
        for epoch in range(config.epochs):
            epoch_losses = []
            for users, items, weights in _batches(targets, config.batch_size, rng):
                start = time.perf_counter()
                epoch_losses.append(float(trainer.step(users, items, weights)))
                step_times.append(time.perf_counter() - start)
                progress.update(
                    task, advance=1, status=f"epoch {epoch + 1} loss {epoch_losses[-1]:.4f}"
                )
            losses.append(float(np.mean(epoch_losses)))
    timed = step_times[1:] or step_times
    return GnnTrainResult(
        trainer.embeddings(), trainer.mode, tuple(losses), float(np.median(timed)), trainer.encoder
    )


def _full_graph_pairs(encoder: tf.keras.Model, graph: tfgnn.GraphTensor) -> Callable:
    def embed_pairs(users, items):
        states = encoder(graph, training=True)
        return tf.gather(states[USER], users), tf.gather(states[ITEM], items)

    return embed_pairs


def _sampled_pairs(encoder: tf.keras.Model, subgraphs: InMemorySubgraphs) -> Callable:
    def embed_pairs(users, items):
        user_graph = subgraphs(USER, users)
        item_graph = subgraphs(ITEM, items)
        user_emb = _first_node_states(user_graph, encoder(user_graph, training=True)[USER], USER)
        item_emb = _first_node_states(item_graph, encoder(item_graph, training=True)[ITEM], ITEM)
        return user_emb, item_emb

    return embed_pairs


def full_graph_embeddings(encoder: tf.keras.Model, graph: tfgnn.GraphTensor) -> GnnEmbeddings:
    """Readout of every node from one pass over the full graph."""
    states = encoder(graph, training=False)
    return GnnEmbeddings(**{name: states[name].numpy() for name in NODE_SETS})


def sampled_embeddings(
    encoder: tf.keras.Model,
    subgraphs: InMemorySubgraphs,
    node_counts: Mapping[str, int],
    *,
    batch_size: int,
) -> GnnEmbeddings:
    """Readout of every node from a subgraph sampled around it (for graphs too big for one pass)."""

    @tf.function(reduce_retracing=True)
    def embed(node_set_name: str, seeds: tf.Tensor) -> tf.Tensor:
        sub = subgraphs(node_set_name, seeds)
        return _first_node_states(sub, encoder(sub, training=False)[node_set_name], node_set_name)

    out = {}
    for name in NODE_SETS:
        chunks = [
            embed(name, tf.range(start, min(start + batch_size, node_counts[name]), dtype=tf.int64))
            for start in range(0, node_counts[name], batch_size)
        ]
        out[name] = tf.concat(chunks, axis=0).numpy()
    return GnnEmbeddings(**out)
