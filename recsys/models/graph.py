"""GNN stage: item and user embeddings from the interest graph (recsys.models.gnn).

The encoder trains by link prediction (``recsys.models.gnn.train_gnn``): graph as of t0, targets
= interactions in [t0, t1). Its weights then embed the nodes of the graph as of any later time
(t1 for the ranker's labelling pass, as_of for serving), so an embedding as of T only reflects
edges before T.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import tensorflow as tf

from recsys.models.data import Edges, LearnedModelError
from recsys.models.gnn import (
    GnnConfig,
    GnnEmbeddings,
    LinkTargets,
    build_graph,
    full_graph_embeddings,
    train_gnn,
)
from recsys.ranking.frames import IdIndex
from recsys.warehouse.schema import BEHAVIORS


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

    def fit(self, edges: Edges, targets: LinkTargets) -> GraphEmbeddings:
        """Train by link prediction on ``targets`` (the graph's future links); returns the
        embeddings on the training graph itself (as of ``edges.as_of``)."""
        result = train_gnn(graph_at(edges, self.nodes), targets, config=self.config)
        self._encoder = result.encoder
        return self._embeddings(edges.as_of, result.embeddings)

    def embed(self, edges: Edges) -> GraphEmbeddings:
        """User, item and category embeddings on the graph of ``edges`` (as of its as_of)."""
        if self._encoder is None:
            raise LearnedModelError("GraphEncoder must be fitted before embed")
        graph = graph_at(edges, self.nodes)
        return self._embeddings(edges.as_of, full_graph_embeddings(self._encoder, graph))

    def _embeddings(self, as_of: datetime, result: GnnEmbeddings) -> GraphEmbeddings:
        return GraphEmbeddings(
            as_of,
            user_ids=self.nodes.users.ids,
            user=result.user.astype(np.float32),
            item_ids=self.nodes.items.ids,
            item=result.item.astype(np.float32),
            category_ids=self.nodes.categories.ids,
            category=result.category.astype(np.float32),
        )


@dataclass(frozen=True)
class GraphEmbeddings:
    """GNN embeddings by id as of one time: ``*_ids`` int64 [n] ascending, ``user`` / ``item``
    / ``category`` float32 [n, d]."""

    as_of: datetime
    user_ids: np.ndarray
    user: np.ndarray
    item_ids: np.ndarray
    item: np.ndarray
    category_ids: np.ndarray
    category: np.ndarray

    @classmethod
    def empty(cls, as_of: datetime) -> GraphEmbeddings:
        """No nodes and d = 0: what the towers get when they do not use the GNN."""
        ids, rows = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        return cls(as_of, ids, rows, ids, rows, ids, rows)

    def lookup_users(self, user_ids: np.ndarray) -> np.ndarray:
        """float32 [len(user_ids), d]; zeros for unknown users."""
        return lookup_embeddings(self.user_ids, self.user, user_ids)

    def lookup_items(self, item_ids: np.ndarray) -> np.ndarray:
        """float32 [len(item_ids), d]; zeros for unknown items."""
        return lookup_embeddings(self.item_ids, self.item, item_ids)


def lookup_embeddings(ids: np.ndarray, embeddings: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of ``embeddings`` (aligned with ascending ``ids``) for ``wanted`` ids: float32
    [len(wanted), d], zeros for ids not in ``ids``."""
    pos = IdIndex(ids).positions(wanted)
    out = np.zeros((len(pos), embeddings.shape[1]), np.float32)
    out[pos >= 0] = embeddings[pos[pos >= 0]]
    return out
