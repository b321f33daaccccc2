"""The saved interest model's retrieval stage for the service: query tower + item index.

``SavedRetrieval(model_dir)`` verifies the folder (``recsys.models.artifacts.verify``: format
version, every file's sha256, no extra files) and then reads what ``InterestModel.save`` wrote,
without unpickling anything. ``embed(profiles)`` encodes ``recsys.ranking.profiles`` rows with
the same ``FeatureEncoder`` as training (one row, a request, through ``encode_query_row``, equal
to ``encode_queries``; GNN user embeddings as of the model's as-of time, zeros for users the
graph did not hold) and runs the saved query tower; ``search(profiles, n)`` is the ranking's
``AnnSearch`` over a ``recsys.models.index.EmbeddingIndex`` of the saved item embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import tensorflow as tf

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.models.artifacts import (
    ANN_FILE,
    ENCODER_ARRAYS,
    ENCODER_JSON,
    QUERY_TOWER_DIR,
    load_arrays,
    verify,
)
from recsys.models.data import LearnedModelError
from recsys.models.index import EmbeddingIndex, search_frame
from recsys.models.towers import FeatureEncoder
from recsys.ranking.frames import IdIndex
from recsys.ranking.sources import Users

# Up to this many rows (one request's queries) are encoded row by row.
ROW_ENCODING_LIMIT = 8


class SavedRetrieval:
    """A saved model's query tower, feature encoder and item index (module doc)."""

    def __init__(self, directory: Path, manifest: dict | None = None) -> None:
        """``manifest``: the folder's manifest when the caller has verified it already."""
        directory = Path(directory)
        manifest = manifest or verify(directory)
        listed = {entry["path"].split("/")[0] for entry in manifest["files"]}
        missing = [
            name
            for name in (QUERY_TOWER_DIR, ENCODER_JSON, ENCODER_ARRAYS, ANN_FILE)
            if name not in listed
        ]
        if missing:
            raise LearnedModelError(f"{directory} lacks {', '.join(missing)}: not servable")
        self.version = manifest["version"]
        self.encoder = FeatureEncoder.load(directory)
        arrays = load_arrays(directory / ANN_FILE)
        # Rows of ``gnn_user`` are aligned with ascending ``gnn_user_ids`` (``lookup_embeddings``).
        self._gnn_rows = IdIndex(arrays["gnn_user_ids"])
        self.gnn_user = np.asarray(arrays["gnn_user"], np.float32)
        self.index = EmbeddingIndex(arrays["item_ids"], arrays["item_embeddings"])
        self._tower = tf.saved_model.load(str(directory / QUERY_TOWER_DIR)).signatures[
            "serving_default"
        ]
        self._inputs = {
            k: spec.dtype for k, spec in self._tower.structured_input_signature[1].items()
        }

    def embed(self, profiles: pl.DataFrame) -> np.ndarray:
        """float32 [n, d]: the query tower on ``recsys.ranking.profiles`` rows."""
        return self.embed_users(Users.of(profiles))

    def embed_users(self, users: Users) -> np.ndarray:
        """float32 [n, d]: the query tower on ``users``. A request's few rows (its profile and
        interest queries) are encoded row by row without polars (``encode_query_row``, equal to
        the batch encoder), from the online feature dicts when ``users`` came with them: both
        cost a fraction of building the profile frame."""
        ids = users.user_id
        gnn = self.gnn_user_rows(ids)
        if 0 < len(ids) <= ROW_ENCODING_LIMIT:
            features = users.features or tuple(users.profiles.iter_rows(named=True))
            rows = [
                self.encoder.encode_query_row(int(user), row, gnn[i])
                for i, (user, row) in enumerate(zip(ids, features, strict=True))
            ]
            inputs = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        else:
            inputs = self.encoder.encode_queries(users.profiles, gnn)
        outputs = self._tower(
            **{k: tf.constant(inputs[k], dtype) for k, dtype in self._inputs.items()}
        )
        return next(iter(outputs.values())).numpy()

    def gnn_user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """float32 [n, G]: the users' GNN embeddings as of the model's as-of time; zeros for
        users the graph did not hold."""
        rows = self._gnn_rows.positions(user_ids)
        out = np.zeros((len(user_ids), self.gnn_user.shape[1]), np.float32)
        out[rows >= 0] = self.gnn_user[rows[rows >= 0]]
        return out

    def search(self, users: Users, n: int) -> pl.DataFrame:
        """``recsys.ranking.sources.AnnSearch``: (user_id, item_id, ann_score), n per user."""
        if not len(users.user_id):
            return search_frame(users.user_id, np.zeros((0, 1)), self.index, n)
        return search_frame(users.user_id, self.embed_users(users), self.index, n)
