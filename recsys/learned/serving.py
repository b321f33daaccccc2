"""The saved interest model's retrieval stage for the service: query tower + item index.

``SavedRetrieval(model_dir)`` reads what ``InterestModel.save`` wrote: ``query(profile)``
encodes the user's ONLINE profile row with the same ``FeatureEncoder`` as training
(``profile_frame`` + ``encode_queries``; GNN user embeddings as of the model's as-of time, zeros
for users the graph did not hold) and runs the saved query tower; ``index`` searches a
``recsys.models.index.EmbeddingIndex`` over the saved item embeddings.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.learned.data import LearnedModelError
from recsys.learned.graph import lookup_embeddings
from recsys.learned.model import ANN_FILE, ENCODER_FILE, MANIFEST_FILE, QUERY_TOWER_DIR
from recsys.learned.towers import FeatureEncoder, profile_frame
from recsys.models.index import EmbeddingIndex


@dataclass(frozen=True)
class IndexSearch:
    """``search(query [d], k)`` -> (item ids [k'], scores [k']) on an ``EmbeddingIndex``
    (the service's ``TopKIndex`` protocol)."""

    index: EmbeddingIndex

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = self.index.top_k(query, k)
        return ids[0], scores[0]


class SavedRetrieval:
    """A saved model's query tower, feature encoder and item index (module doc)."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        missing = [
            name
            for name in (MANIFEST_FILE, QUERY_TOWER_DIR, ENCODER_FILE, ANN_FILE)
            if not (directory / name).exists()
        ]
        if missing:
            raise LearnedModelError(f"{directory} lacks {', '.join(missing)}: not servable")
        self.version = json.loads((directory / MANIFEST_FILE).read_text())["version"]
        with open(directory / ENCODER_FILE, "rb") as handle:
            self.encoder: FeatureEncoder = pickle.load(handle)
        arrays = np.load(directory / ANN_FILE)
        self.gnn_user_ids, self.gnn_user = arrays["gnn_user_ids"], arrays["gnn_user"]
        self.index = IndexSearch(EmbeddingIndex(arrays["item_ids"], arrays["item_embeddings"]))
        self._tower = tf.saved_model.load(str(directory / QUERY_TOWER_DIR)).signatures[
            "serving_default"
        ]

    def embed_profile(self, user_id: int, features: dict[str, Any]) -> np.ndarray:
        """float32 [d]: the query tower on one online profile row."""
        inputs = self.encoder.encode_queries(
            profile_frame(user_id, features),
            lookup_embeddings(self.gnn_user_ids, self.gnn_user, np.array([user_id], np.int64)),
        )
        wanted = self._tower.structured_input_signature[1]
        outputs = self._tower(
            **{k: tf.constant(inputs[k], spec.dtype) for k, spec in wanted.items()}
        )
        return next(iter(outputs.values())).numpy()[0]

    def query(self, profile) -> np.ndarray | None:
        """``AnnSource``'s query function: a ``UserProfile`` -> embedding [d]."""
        return self.embed_profile(profile.user_id, profile.features)
