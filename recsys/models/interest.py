"""``InterestModel``: GNN + two-tower retrieval blended with repeat/transition/category candidates.

fit(events, as_of), with w = the validation window (1 day) and t1 = as_of - w, t0 = t1 - w:

1. a private home (``PrivateHome``) receives only the events before as_of; marts and Feast
   exports are built there (snapshots every w back from as_of);
2. GNN: graph as of t0, link targets in [t0, t1); embeddings on the graphs as of t1 and as_of;
3. two-tower: labels before t1 - w train, labels in [t1 - w, t1) stop early; query features are
   Feast point-in-time rows at the snapshot just before each label;
4. ``CandidateBlend`` labels its candidates on [t1, as_of) with every generator fitted as of t1
   (the towers never saw those labels), then refits the generators as of as_of. Its ranker sees
   the user's short/long interest in each candidate's category, and seen and unseen candidates
   get separate rankers (the cues of a revisit and of a new item differ).

So nothing at or after as_of is read, and the ranker's labels are unseen by the retrieval models.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Self

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.evaluation._scoring import events_before, top_k_matrix
from recsys.evaluation.baselines import (
    CandidateBlend,
    CategoryCandidates,
    RepeatCandidates,
    TransitionCandidates,
)
from recsys.models.data import LearnedModelError, PrivateHome
from recsys.models.gnn import GnnConfig

MIGRATION_LOOKBACK = timedelta(days=7)
# Seen and unseen candidates get their own ranker (``CandidateBlend.segment_by``).
SEEN_SEGMENT = "repeat_present"
MODEL_NAME = "interest_v1"
MANIFEST_FILE, BLEND_FILE, ITEMS_FILE = "manifest.json", "blend.pkl", "items.parquet"
# Serving artefacts (see ``InterestModel.save``).
QUERY_TOWER_DIR, INDEX_DIR, ENCODER_FILE, ANN_FILE = (
    "query_tower",
    "index",
    "encoder.pkl",
    "ann.npz",
)


@dataclass(frozen=True)
class InterestConfig:
    """Settings of the learned model (chosen on validation days, never on a test day)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    validation_window: timedelta = timedelta(days=1)
    ann_candidates: int = 100
    # Category candidates: the popular items of each of the user's top categories. Wider than
    # the "blend" baseline's 10 x 20: it raised novel recall on both validation days.
    candidate_categories: int = 20
    items_per_category: int = 50
    # Full-graph GNN training: every step runs the whole graph, so big batches (few steps).
    gnn: GnnConfig = field(
        default_factory=lambda: GnnConfig(
            hidden_dim=32, epochs=4, batch_size=4096, show_progress=True
        )
    )
    # recsys.models.two_tower.TwoTowerConfig; None = ``retrieval.default_tower_config`` (kept
    # lazy: TensorFlow stays off the CLI's import path).
    towers: object = None
    interest_slots: int = 5
    sequence_length: int = 20
    max_examples: int = 300_000
    show_progress: bool = True


@dataclass
class AnnCandidates:
    """Top-N items by two-tower inner product, as of the time ``fit`` was last called.

    ``fit(events, as_of)`` is cheap: it embeds users (Feast query features as of ``as_of``) and
    the items seen before ``as_of`` with already trained towers. Columns of ``candidates``:
    user_id, item_id, ann_score (inner product of unit vectors).
    """

    retriever: object  # recsys.models.retrieval.Retriever (holds the towers and feature access)
    n_candidates: int = 100
    name: str = "ann"

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        self.user_ids_, self.users_ = self.retriever.embed_users(
            np.unique(events["user_id"].to_numpy()), as_of
        )
        self.item_ids_, self.items_ = self.retriever.embed_items(
            np.unique(events["item_id"].to_numpy()), as_of
        )
        return self

    def candidates(self, user_ids: np.ndarray) -> pl.DataFrame:
        if not hasattr(self, "users_"):
            raise LearnedModelError("AnnCandidates must be fitted before candidates")
        rows = np.searchsorted(self.user_ids_, np.asarray(user_ids, np.int64))
        rows = np.minimum(rows, max(len(self.user_ids_) - 1, 0))
        known = (len(self.user_ids_) > 0) & (self.user_ids_[rows] == np.asarray(user_ids))
        users = np.asarray(user_ids, np.int64)[known]
        n = min(self.n_candidates, len(self.item_ids_))
        scores = self.users_[rows[known]] @ self.items_.T  # [n_users, n_items]
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n else np.zeros((len(users), 0))
        top = top.astype(np.int64)
        return pl.DataFrame(
            {
                "user_id": np.repeat(users, n),
                "item_id": self.item_ids_[top].ravel(),
                "ann_score": np.take_along_axis(scores, top, axis=1).ravel().astype(np.float64),
            }
        )

    def __getstate__(self) -> dict:
        # The towers are saved as SavedModels; the fitted embeddings are all recommend needs.
        return {k: v for k, v in self.__dict__.items() if k != "retriever"} | {"retriever": None}


class InterestModel:
    """The learned recommender (module doc); ``recommend`` follows the evaluation protocol."""

    def __init__(self, config: InterestConfig | None = None) -> None:
        self.config = config or InterestConfig()

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        from recsys.models.retrieval import fit_retriever

        c = self.config
        events = events_before(events, as_of)
        started = time.perf_counter()
        with PrivateHome(
            events, as_of, config=c.features, snapshot_every=c.validation_window
        ) as home:
            self.loaded_ = home.report()
            retriever = fit_retriever(home, c)
            self.ann_ = AnnCandidates(retriever, c.ann_candidates)
            self.blend_ = CandidateBlend(
                generators=[
                    RepeatCandidates(c.features),
                    TransitionCandidates(c.features),
                    CategoryCandidates(
                        c.features,
                        n_categories=c.candidate_categories,
                        items_per_category=c.items_per_category,
                    ),
                    self.ann_,
                ],
                config=c.features,
                validation_window=c.validation_window,
                category_context=True,
                segment_by=SEEN_SEGMENT,
            ).fit(events, as_of)
            self.retriever_ = retriever.detach()
            self.migrations_ = recent_migrations(retriever.migrations, as_of)
        self.items_ = (
            events.sort("event_time")
            .group_by("item_id")
            .agg(pl.col("category_id").last())
            .sort("item_id")
        )
        self.as_of_ = as_of
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def save(self, directory: Path) -> Path:
        """Write the model to ``directory`` atomically (temp folder + rename) and return it.

        Layout: ``manifest.json`` (version, as_of, files), ``blend.pkl`` (ranker weights and the
        fitted candidate generators, ANN embeddings included), ``items.parquet`` (item table)
        and, for the service (``recsys.models.saved``): ``query_tower/`` (SavedModel),
        ``index/`` (SavedModel of the TFRS top-k index with the query tower inside: query
        feature dict -> (scores, item ids)), ``encoder.pkl`` (the feature encoder) and
        ``ann.npz`` (item ids and embeddings, GNN user ids and embeddings, as of as_of).
        """
        self._require_fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            with open(partial / BLEND_FILE, "wb") as handle:
                pickle.dump(
                    {"blend": self.blend_, "migrations": self.migrations_, "as_of": self.as_of_},
                    handle,
                )
            self.items_.write_parquet(partial / ITEMS_FILE)
            if self.retriever_ is not None:
                self._save_retrieval(partial)
            manifest = {
                "model": MODEL_NAME,
                "version": directory.name,
                "as_of": self.as_of_.isoformat(),
                "files": sorted(p.name for p in partial.iterdir()),
            }
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(partial, directory)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return directory

    def _save_retrieval(self, directory: Path) -> None:
        from recsys.models.index import build_index, save_index

        retriever, ann = self.retriever_, self.ann_
        graph = retriever.graph[self.as_of_]
        retriever.query_tower.save(directory / QUERY_TOWER_DIR)
        index = build_index(
            retriever.query_tower,
            ann.item_ids_,
            ann.items_,
            k=min(self.config.ann_candidates, len(ann.item_ids_)),
        )
        save_index(index, directory / INDEX_DIR, retriever.sample_query)
        with open(directory / ENCODER_FILE, "wb") as handle:
            pickle.dump(retriever.encoder, handle)
        np.savez(
            directory / ANN_FILE,
            item_ids=ann.item_ids_,
            item_embeddings=ann.items_,
            gnn_user_ids=graph.user_ids,
            gnn_user=graph.user,
        )

    @classmethod
    def load(cls, directory: Path, config: InterestConfig | None = None) -> InterestModel:
        """A model saved by ``save``; recommends exactly what the saved one did."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.exists():
            raise LearnedModelError(f"no {MANIFEST_FILE} in {directory}: not a saved model")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("model") != MODEL_NAME:
            raise LearnedModelError(
                f"{directory} holds {manifest.get('model')!r}, not {MODEL_NAME}"
            )
        with open(directory / BLEND_FILE, "rb") as handle:
            state = pickle.load(handle)
        model = cls(config)
        model.blend_, model.migrations_, model.as_of_ = (
            state["blend"],
            state["migrations"],
            state["as_of"],
        )
        model.items_ = pl.read_parquet(directory / ITEMS_FILE)
        model.retriever_ = None
        model.manifest_ = manifest
        return model

    def _require_fitted(self) -> None:
        if not hasattr(self, "blend_"):
            raise LearnedModelError("InterestModel must be fitted (or loaded) before recommend")

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """int64 [len(user_ids), k] item ids, best first, -1 padded."""
        self._require_fitted()
        return self.blend_.recommend(np.asarray(user_ids, np.int64), k)

    def recommend_frame(self, user_ids: np.ndarray, k: int) -> pl.DataFrame:
        """(user_id, rank, item_id, score, category_id, source, reason) for the write-back.

        source: "repeat" (the user touched the item before), else "ann" (the two-tower
        retrieved it), else "popular" (category/transition candidates and popular fill).
        """
        from recsys.warehouse.writeback import reason_for

        self._require_fitted()
        user_ids = np.asarray(user_ids, np.int64)
        blend = self.blend_
        table = blend.features(user_ids)
        scored = table.select("user_id", "item_id", "repeat_present", "ann_present").with_columns(
            score=blend.score(table)
        )
        top = top_k_matrix(scored, user_ids, k, fill_items=blend.popular_)
        fill_score = float(scored["score"].min()) - 1.0 if scored.height else 0.0
        frame = (
            pl.DataFrame(
                {
                    "user_id": np.repeat(user_ids, k),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
                    "item_id": top.ravel(),
                }
            )
            .filter(pl.col("item_id") >= 0)
            .join(scored, on=["user_id", "item_id"], how="left")
            .join(self.items_, on="item_id", how="left")
            .join(self.migrations_, on="user_id", how="left")
            .with_columns(
                pl.col("score").fill_null(fill_score),
                source=pl.when(pl.col("repeat_present") == 1.0)
                .then(pl.lit("repeat"))
                .when(pl.col("ann_present") == 1.0)
                .then(pl.lit("ann"))
                .otherwise(pl.lit("popular")),
            )
        )
        reasons = [
            reason_for(source, from_category=src, to_category=dst)
            if dst is not None and dst == category
            else reason_for(source, category=category)
            for source, category, src, dst in frame.select(
                "source", "category_id", "from_category_id", "to_category_id"
            ).iter_rows()
        ]
        return frame.with_columns(reason=pl.Series(reasons, dtype=pl.String)).select(
            "user_id", "rank", "item_id", "score", "category_id", "source", "reason"
        )


def recent_migrations(migrations: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """(user_id, from_category_id, to_category_id): each user's latest migration detected in
    the week before ``as_of``."""
    return (
        migrations.filter(pl.col("detected_at") >= as_of - MIGRATION_LOOKBACK)
        .sort("detected_at")
        .group_by("user_id")
        .agg(pl.col("from_category_id").last(), pl.col("to_category_id").last())
    )
