"""GNN stage: item and user embeddings from the interest graph (recsys.models.gnn).

The encoder trains by link prediction: graph as of t0, targets = interactions in [t0, t1). Its
weights then embed the nodes of the graph as of any later time (t1 for the ranker's labelling
pass, as_of for serving), so an embedding as of T only reflects edges before T.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import tensorflow as tf

from recsys.evaluation._scoring import IdIndex
from recsys.learned.data import Edges, LearnedModelError
from recsys.models.device import set_seeds
from recsys.models.gnn import (
    ITEM,
    USER,
    GnnConfig,
    LinkTargets,
    build_gnn_encoder,
    build_graph,
    full_graph_embeddings,
    in_batch_softmax_loss,
)
from recsys.schema import BEHAVIORS


@dataclass(frozen=True)
class NodeIndex:
    """Node positions of every user, item and category seen before the as-of time."""

    users: IdIndex
    items: IdIndex
    categories: IdIndex
    item_category: np.ndarray  # int64 [n_items]: category position of each item

    @classmethod
    def from_events(cls, events: pl.DataFrame) -> NodeIndex:
        latest = events.sort("event_time").group_by("item_id").agg(pl.col("category_id").last())
        items = IdIndex(latest["item_id"].to_numpy())
        categories = IdIndex(latest["category_id"].to_numpy())
        order = items.positions(latest["item_id"].to_numpy())
        item_category = np.empty(len(items), np.int64)
        item_category[order] = categories.positions(latest["category_id"].to_numpy())
        return cls(IdIndex(events["user_id"].to_numpy()), items, categories, item_category)


def graph_at(edges: Edges, nodes: NodeIndex):
    """The GraphTensor of ``edges`` over all nodes of ``nodes`` (nodes without edges stay)."""
    user_item = {}
    for behavior in BEHAVIORS:
        part = edges.user_item.filter(pl.col("behavior") == behavior)
        user_item[behavior] = (
            nodes.users.positions(part["user_id"].to_numpy()),
            nodes.items.positions(part["item_id"].to_numpy()),
            part["weight"].to_numpy().astype(np.float32),
        )
    transitions = edges.item_item
    return build_graph(
        n_users=len(nodes.users),
        n_items=len(nodes.items),
        n_categories=len(nodes.categories),
        user_item_edges=user_item,
        item_item_edges=(
            nodes.items.positions(transitions["src_item_id"].to_numpy()),
            nodes.items.positions(transitions["dst_item_id"].to_numpy()),
            transitions["weight"].to_numpy().astype(np.float32),
        ),
        item_category=nodes.item_category,
    )


def link_targets(interactions: pl.DataFrame, nodes: NodeIndex) -> LinkTargets:
    """(user, item, weight) positions of labelled interactions (user_id, item_id, weight)."""
    pairs = interactions.group_by("user_id", "item_id").agg(pl.col("weight").sum())
    return LinkTargets(
        user=nodes.users.positions(pairs["user_id"].to_numpy()),
        item=nodes.items.positions(pairs["item_id"].to_numpy()),
        weight=pairs["weight"].to_numpy().astype(np.float32),
    )


class GraphEncoder:
    """A GNN encoder trained on one graph, applied to the same nodes' graph at other times."""

    def __init__(self, nodes: NodeIndex, config: GnnConfig) -> None:
        self.nodes = nodes
        self.config = config
        self._encoder: tf.keras.Model | None = None

    def fit(self, edges: Edges, targets: LinkTargets) -> GraphEncoder:
        """Full-graph training by in-batch softmax on ``targets`` (the graph's future links).

        ``recsys.models.gnn.train_gnn`` returns embeddings, not the encoder; the encoder is
        needed to embed later graphs, so the loop runs here on the same building blocks.
        """
        from rich.progress import Progress

        set_seeds(self.config.seed)
        graph = graph_at(edges, self.nodes)
        counts = {name: int(graph.node_sets[name].total_size) for name in graph.node_sets}
        encoder = build_gnn_encoder(
            graph_spec=graph.spec,
            node_counts=counts,
            hidden_dim=self.config.hidden_dim,
            num_updates=self.config.num_updates,
        )
        optimizer = tf.keras.optimizers.Adam(self.config.learning_rate)

        @tf.function(reduce_retracing=True)
        def step(users, items, weights):
            with tf.GradientTape() as tape:
                states = encoder(graph, training=True)
                loss = in_batch_softmax_loss(
                    tf.gather(states[USER], users),
                    tf.gather(states[ITEM], items),
                    items,
                    weights,
                    temperature=self.config.temperature,
                )
            grads = tape.gradient(loss, encoder.trainable_variables)
            optimizer.apply_gradients(
                (g, v)
                for g, v in zip(grads, encoder.trainable_variables, strict=True)
                if g is not None
            )
            return loss

        rng = np.random.default_rng(self.config.seed)
        size = self.config.batch_size
        n_steps = self.config.epochs * -(-len(targets.user) // size)
        with Progress(disable=not self.config.show_progress, transient=True) as progress:
            task = progress.add_task("GNN link prediction", total=n_steps)
            for _ in range(self.config.epochs):
                order = rng.permutation(len(targets.user))
                for start in range(0, len(order), size):
                    idx = order[start : start + size]
                    loss = step(
                        tf.constant(targets.user[idx]),
                        tf.constant(targets.item[idx]),
                        tf.constant(targets.weight[idx]),
                    )
                    progress.update(
                        task, advance=1, description=f"GNN link prediction loss {float(loss):.3f}"
                    )
        self._encoder = encoder
        return self

    def embed(self, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
        """(user [n_users, d], item [n_items, d]) float32 embeddings on the graph of ``edges``."""
        if self._encoder is None:
            raise LearnedModelError("GraphEncoder must be fitted before embed")
        result = full_graph_embeddings(self._encoder, graph_at(edges, self.nodes))
        return result.user.astype(np.float32), result.item.astype(np.float32)


@dataclass(frozen=True)
class GraphEmbeddings:
    """Item embeddings by id as of one time: ``item_ids`` int64 [n], ``item`` float32 [n, d]."""

    as_of: datetime
    item_ids: np.ndarray
    item: np.ndarray

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        """float32 [len(item_ids), d]; zeros for unknown items."""
        index = IdIndex(self.item_ids)
        pos = index.positions(item_ids)
        out = np.zeros((len(pos), self.item.shape[1]), np.float32)
        out[pos >= 0] = self.item[pos[pos >= 0]]
        return out
