"""Training the retrieval side (GNN, then the two towers) inside a ``PrivateHome``.

``fit_retriever`` returns a ``Retriever`` that embeds users (query tower on Feast features as
of T) and items (candidate tower on item features and GNN embeddings as of T) for T in
{as_of - window, as_of}, the two times ``CandidateBlend`` fits its generators at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl
import tensorflow as tf

from recsys.learned.data import LearnedModelError, PrivateHome, labelled_interactions
from recsys.learned.graph import GraphEmbeddings, GraphEncoder, NodeIndex, link_targets
from recsys.learned.towers import (
    ITEM_DENSE,
    QUERY_DENSE,
    TowerConfig,
    TowerData,
    Vocabulary,
    build_towers,
    encode_candidates,
    encode_queries,
    train_towers,
)

PREDICT_BATCH = 4096


@dataclass
class Retriever:
    """Trained towers plus the feature access needed to embed users and items as of T."""

    home: PrivateHome | None
    vocab: Vocabulary
    config: TowerConfig
    query_tower: tf.keras.Model
    candidate_tower: tf.keras.Model
    graph: dict[datetime, GraphEmbeddings]
    migrations: pl.DataFrame
    # GNN embeddings as of as_of, for the Feast embedding files: (ids [n], float32 [n, d])
    graph_users: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros((0, 0)))
    history: list[tuple[float, float]] = field(default_factory=list)
    examples: pl.DataFrame | None = None

    def embed_users(self, user_ids: np.ndarray, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(user ids with features [n], float32 [n, dim]) from query features as of ``as_of``."""
        home = self._home()
        entities = pl.DataFrame({"user_id": np.asarray(user_ids, np.int64)}).with_columns(
            event_timestamp=pl.lit(as_of).cast(pl.Datetime("us"))
        )
        features = home.query_features(entities).filter(
            pl.col("user_recent_sequence__seq_len").is_not_null()
        )
        inputs = encode_queries(features, self.vocab, self.config, home.config)
        ids = features["user_id"].to_numpy().astype(np.int64)
        order = np.argsort(ids)
        return ids[order], _predict(self.query_tower, inputs)[order]

    def embed_items(self, item_ids: np.ndarray, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(item ids [n], float32 [n, dim]) from item features and GNN embeddings as of T."""
        if as_of not in self.graph:
            raise LearnedModelError(f"no GNN embeddings as of {as_of}")
        entities = pl.DataFrame({"item_id": np.asarray(item_ids, np.int64)}).with_columns(
            event_timestamp=pl.lit(as_of).cast(pl.Datetime("us"))
        )
        features = self._home().item_features(entities)
        ids = features["item_id"].to_numpy().astype(np.int64)
        inputs = encode_candidates(features, self.graph[as_of].lookup(ids), self.vocab)
        order = np.argsort(ids)
        return ids[order], _predict(self.candidate_tower, inputs)[order]

    def _home(self) -> PrivateHome:
        if self.home is None:
            raise LearnedModelError("the retriever's private home is closed; refit to embed")
        return self.home

    def detach(self) -> Retriever:
        """This retriever without its (temporary) home: the towers stay usable for export."""
        self.home = None
        return self


def _predict(model: tf.keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    out = [
        model({k: v[start : start + PREDICT_BATCH] for k, v in inputs.items()}, training=False)
        for start in range(0, n, PREDICT_BATCH)
    ]
    return np.concatenate([o.numpy() for o in out]) if out else np.zeros((0, 0), np.float32)


def fit_retriever(home: PrivateHome, config) -> Retriever:
    """GNN then two-tower training on the home's data (see ``recsys.learned.model``)."""
    window = config.validation_window
    as_of = home.as_of
    t1, t0 = as_of - window, as_of - 2 * window
    tower_config = config.towers or TowerConfig(show_progress=config.show_progress)
    events = home.events
    edges_t0, edges_t1 = home.edges(t0), home.edges(t1)
    edges_now, migrations = home.build_features()

    nodes = NodeIndex.from_events(events)
    targets = link_targets(labelled_interactions(events, t0, t1, home.config), nodes)
    encoder = GraphEncoder(nodes, config.gnn).fit(edges_t0, targets)
    graph = {}
    for moment, edges in ((t1, edges_t1), (as_of, edges_now)):
        users, items = encoder.embed(edges)
        graph[moment] = GraphEmbeddings(moment, nodes.items.ids, items)

    vocab = Vocabulary(nodes.items, nodes.categories)
    examples = training_examples(home, labelled_interactions(events, None, t1, home.config))
    examples = examples.tail(tower_config.max_examples)
    is_validation = (examples["label_time"] >= t1 - window).to_numpy()
    data = {
        split: _tower_data(examples.filter(mask), graph[t1], vocab, tower_config, home)
        for split, mask in (("train", ~is_validation), ("validation", is_validation))
    }
    if not len(data["train"]):
        raise LearnedModelError(f"no two-tower training examples before {t1 - window}")
    query_tower, candidate_tower = build_towers(
        vocab=vocab,
        config=tower_config,
        n_query_dense=len(QUERY_DENSE),
        n_item_dense=len(ITEM_DENSE),
        graph_dim=graph[t1].item.shape[1],
    )
    history = train_towers(
        query_tower, candidate_tower, data["train"], data["validation"], tower_config
    )
    return Retriever(
        home=home,
        vocab=vocab,
        config=tower_config,
        query_tower=query_tower,
        candidate_tower=candidate_tower,
        graph=graph,
        migrations=migrations,
        graph_users=(nodes.users.ids, users),
        history=history,
        examples=examples.select(
            "user_id", "item_id", "label_time", "event_timestamp", "last_seq_item"
        ),
    )


def training_examples(home: PrivateHome, interactions: pl.DataFrame) -> pl.DataFrame:
    """Labelled interactions joined point-in-time with query and item features.

    Each label (user, item, label_time) gets the features of the latest snapshot
    ``event_timestamp`` <= label_time (Feast then reads rows stamped <= that snapshot, i.e.
    computed from events strictly before it). Labels of users without history are dropped.
    """
    labels = (
        interactions.rename({"event_time": "label_time"})
        .with_columns(event_timestamp=home.snapshot_at_or_before(interactions["event_time"]))
        .drop_nulls("event_timestamp")
    )
    key = pl.col("event_timestamp").cast(pl.Datetime("us"))
    queries = home.query_features(
        labels.select("user_id", "event_timestamp").unique()
    ).with_columns(key)
    items = home.item_features(labels.select("item_id", "event_timestamp").unique()).with_columns(
        key
    )
    return (
        labels.join(queries, on=["user_id", "event_timestamp"])
        .filter(pl.col("user_recent_sequence__seq_len").is_not_null())
        .join(items, on=["item_id", "event_timestamp"], how="left")
        .with_columns(last_seq_item=pl.col("user_recent_sequence__seq_item_ids").list.first())
        .sort("label_time", "user_id", "item_id")
    )


def _tower_data(
    examples: pl.DataFrame,
    graph: GraphEmbeddings,
    vocab: Vocabulary,
    config: TowerConfig,
    home: PrivateHome,
) -> TowerData:
    return TowerData(
        queries=encode_queries(examples, vocab, config, home.config),
        candidates=encode_candidates(examples, graph.lookup(examples["item_id"].to_numpy()), vocab),
        weights=examples["weight"].to_numpy().astype(np.float32),
    )
