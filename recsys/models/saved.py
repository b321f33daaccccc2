"""The saved interest model's retrieval stage for the service: query tower + item index.

``SavedRetrieval(model_dir)`` reads what ``InterestModel.save`` wrote: ``query(profile)``
encodes the user's ONLINE profile row with the same ``FeatureEncoder`` as training
(``encode_query_row``, equal to ``profile_frame`` + ``encode_queries``; GNN user embeddings as of
the model's as-of time, zeros for users the graph did not hold) and runs the saved query tower;
``index`` searches a ``recsys.models.index.EmbeddingIndex`` over the saved item embeddings.
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
from recsys.evaluation._scoring import IdIndex
from recsys.models.data import LearnedModelError
from recsys.models.index import EmbeddingIndex
from recsys.models.interest import ANN_FILE, ENCODER_FILE, MANIFEST_FILE, QUERY_TOWER_DIR
from recsys.models.towers import FeatureEncoder


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
        # Rows of ``gnn_user`` are aligned with ascending ``gnn_user_ids`` (``lookup_embeddings``).
        self._gnn_rows = IdIndex(arrays["gnn_user_ids"])
        self.gnn_user = np.asarray(arrays["gnn_user"], np.float32)
        self.index = IndexSearch(EmbeddingIndex(arrays["item_ids"], arrays["item_embeddings"]))
        self._tower = tf.saved_model.load(str(directory / QUERY_TOWER_DIR)).signatures[
            "serving_default"
        ]
        self._inputs = {
            k: spec.dtype for k, spec in self._tower.structured_input_signature[1].items()
        }

    def embed_profile(self, user_id: int, features: dict[str, Any]) -> np.ndarray:
        """float32 [d]: the query tower on one online profile row."""
        inputs = self.encoder.encode_query_row(user_id, features, self.gnn_user_row(user_id))
        outputs = self._tower(
            **{k: tf.constant(inputs[k], dtype) for k, dtype in self._inputs.items()}
        )
        return next(iter(outputs.values())).numpy()[0]

    def gnn_user_row(self, user_id: int) -> np.ndarray:
        """float32 [G]: the user's GNN embedding as of the model's as-of time; zeros if unknown."""
        row = self._gnn_rows.positions(np.array([user_id], np.int64))[0]
        return self.gnn_user[row] if row >= 0 else np.zeros(self.gnn_user.shape[1], np.float32)

    def query(self, profile) -> np.ndarray | None:
        """``AnnSource``'s query function: a ``UserProfile`` -> embedding [d]."""
        return self.embed_profile(profile.user_id, profile.features)
