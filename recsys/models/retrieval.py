"""Training the retrieval side inside a ``PrivateHome``: the GNN (``recsys.models.gnn``), then
the TFRS two-tower (``recsys.models.two_tower``) on Feast point-in-time rows.

``fit_retriever`` returns a ``Retriever`` that embeds users (query tower on Feast features and
GNN user embeddings as of T) and items (candidate tower on item features and GNN item
embeddings as of T) for T in {as_of - window, as_of}, the two times ``CandidateBlend`` fits its
generators at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl
import tensorflow as tf

from recsys.models.data import Edges, LearnedModelError, PrivateHome, labelled_interactions
from recsys.models.graph import GraphEmbeddings, GraphEncoder, NodeIndex, link_targets
from recsys.models.index import EmbeddingIndex, search_frame
from recsys.models.towers import ITEM_DENSE, QUERY_DENSE, FeatureEncoder
from recsys.models.two_tower import (
    QueryFeatureSpec,
    RetrievalExamples,
    TwoTowerConfig,
    TwoTowerModel,
    embed,
    train_two_tower,
)
from recsys.ranking.sources import Users


def default_tower_config(show_progress: bool = True) -> TwoTowerConfig:
    """Small towers and few epochs: the whole fit stays within a couple of minutes on 2 CPUs.

    The GNN embeddings and the sequence encoder are off: removing either from the full model
    changed NDCG@20 by less than its 90% paired interval on both the Taobao sample and the
    simulator (``recsys evaluate --ablations``; README "Which components earn their place").
    """
    return TwoTowerConfig(
        embedding_dim=32,
        user_hash_bins=20_000,
        learning_rate=3e-3,
        batch_size=1024,
        epochs=4,
        patience=1,
        use_gnn=False,
        use_sequence=False,
        show_progress=show_progress,
    )


@dataclass
class Retriever:
    """Trained TFRS towers plus the feature access needed to embed users and items as of T
    (T in ``graph``: the times GNN embeddings were computed at)."""

    home: PrivateHome | None
    encoder: FeatureEncoder
    model: TwoTowerModel
    graph: dict[datetime, GraphEmbeddings]
    # the marts as of each time of ``graph``
    edges: dict[datetime, Edges]
    sample_query: dict[str, np.ndarray]  # one row of query inputs (traces the exported index)
    history: dict[str, list[float]] = field(default_factory=dict)
    examples: pl.DataFrame | None = None

    @property
    def query_tower(self) -> tf.keras.Model:
        return self.model.query_model

    def embed_profiles(self, profiles: pl.DataFrame, as_of: datetime) -> np.ndarray:
        """float32 [n, dim]: the query tower on ``recsys.ranking.profiles`` rows, with the GNN
        user embeddings as of ``as_of``."""
        ids = profiles["user_id"].to_numpy().astype(np.int64)
        inputs = self.encoder.encode_queries(profiles, self._graph(as_of).lookup_users(ids))
        return self._embed(self.model.query_model, inputs)

    def search_at(self, as_of: datetime, item_ids: np.ndarray) -> TowerSearch:
        """An ``AnnSearch`` as of ``as_of`` over the given items (embedded as of then)."""
        ids, embeddings = self.embed_items(item_ids, as_of)
        return TowerSearch(self, as_of, EmbeddingIndex(ids, embeddings))

    def embed_items(self, item_ids: np.ndarray, as_of: datetime) -> tuple[np.ndarray, np.ndarray]:
        """(item ids [n] ascending, float32 [n, dim]) from item features and GNN embeddings."""
        graph = self._graph(as_of)
        entities = pl.DataFrame({"item_id": np.asarray(item_ids, np.int64)}).with_columns(
            event_timestamp=pl.lit(as_of).cast(pl.Datetime("us"))
        )
        features = self._home().item_features(entities).sort("item_id")
        ids = features["item_id"].to_numpy().astype(np.int64)
        inputs = self.encoder.encode_candidates(features, graph.lookup_items(ids))
        return ids, self._embed(self.model.candidate_model, inputs)

    def _embed(self, tower: tf.keras.Model, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if not len(next(iter(inputs.values()))):
            return np.zeros((0, tower.output_shape[-1]), np.float32)
        return embed(tower, inputs).astype(np.float32)

    def _graph(self, as_of: datetime) -> GraphEmbeddings:
        if as_of not in self.graph:
            raise LearnedModelError(f"no GNN embeddings as of {as_of}")
        return self.graph[as_of]

    def _home(self) -> PrivateHome:
        if self.home is None:
            raise LearnedModelError("the retriever's private home is closed; refit to embed")
        return self.home

    def detach(self) -> Retriever:
        """This retriever without its (temporary) home: the towers stay usable for export."""
        self.home = None
        return self


@dataclass(frozen=True)
class TowerSearch:
    """``recsys.ranking.sources.AnnSearch`` on the in-memory towers as of one time."""

    retriever: Retriever
    as_of: datetime
    index: EmbeddingIndex

    def search(self, users: Users, n: int) -> pl.DataFrame:
        return search_frame(
            users.user_id,
            self.retriever.embed_profiles(users.profiles, self.as_of),
            self.index,
            n,
        )


def fit_retriever(home: PrivateHome, config) -> Retriever:
    """GNN then two-tower training on the home's data (see ``recsys.models.interest``).

    GNN: trained on the graph as of t0 = as_of - 2w to predict links in [t0, t1); its embeddings
    as of t0 feed the towers' training rows, those as of t1 and as_of the fitted generators.
    Towers: labels before t1 - w train, labels in [t1 - w, t1) stop early.
    """
    window = config.validation_window
    as_of = home.as_of
    t1, t0 = as_of - window, as_of - 2 * window
    tower_config = config.towers or default_tower_config(config.show_progress)
    events = home.events
    edges_t0, edges_t1 = home.edges(t0), home.edges(t1)
    edges_now = home.build_features()

    nodes = NodeIndex.from_events(events)
    if tower_config.use_gnn:
        targets = link_targets(labelled_interactions(events, t0, t1, home.config), nodes)
        gnn = GraphEncoder(nodes, config.gnn)
        graph = {
            t0: gnn.fit(edges_t0, targets),
            t1: gnn.embed(edges_t1),
            as_of: gnn.embed(edges_now),
        }
    else:  # the towers do not read it: no GNN training
        graph = {t: GraphEmbeddings.empty(t) for t in (t0, t1, as_of)}

    encoder = FeatureEncoder(
        nodes.items,
        nodes.categories,
        interest_slots=config.interest_slots,
        sequence_length=config.sequence_length,
    )
    examples = training_examples(home, labelled_interactions(events, None, t1, home.config))
    examples = examples.tail(config.max_examples)
    is_validation = (examples["label_time"] >= t1 - window).to_numpy()
    data = {
        split: _retrieval_examples(examples.filter(mask), graph[t0], encoder)
        for split, mask in (("train", ~is_validation), ("validation", is_validation))
    }
    if not len(data["train"]) or not len(data["validation"]):
        raise LearnedModelError(
            f"two-tower needs labels before and after {t1 - window}; got "
            f"{len(data['train'])} and {len(data['validation'])}"
        )
    spec = QueryFeatureSpec(
        n_items=len(nodes.items),
        n_categories=len(nodes.categories),
        dense_dim=len(QUERY_DENSE),
        item_dense_dim=len(ITEM_DENSE),
        interest_slots=config.interest_slots,
        sequence_length=config.sequence_length,
        gnn_dim=graph[t0].item.shape[1],
    )
    result = train_two_tower(
        data["train"],
        data["validation"],
        spec=spec,
        config=tower_config,
        checkpoint_dir=home.paths.home / "two_tower_checkpoints",
    )
    return Retriever(
        home=home,
        encoder=encoder,
        model=result.model,
        graph=graph,
        edges={e.as_of: e for e in (edges_t0, edges_t1, edges_now)},
        # the tower's own inputs only: Keras warns about every other key when it is traced
        sample_query={
            k: data["validation"].query[k][:1] for k in result.model.query_model.input_names
        },
        history=result.history,
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


def _retrieval_examples(
    examples: pl.DataFrame, graph: GraphEmbeddings, encoder: FeatureEncoder
) -> RetrievalExamples:
    users, items = examples["user_id"].to_numpy(), examples["item_id"].to_numpy()
    return RetrievalExamples(
        query=encoder.encode_queries(examples, graph.lookup_users(users)),
        candidate=encoder.encode_candidates(examples, graph.lookup_items(items)),
        weight=examples["weight"].to_numpy().astype(np.float32),
    )
