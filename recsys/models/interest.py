"""``InterestModel``: the GNN + two-tower retrieval and the ranking policy that apps receive.

fit(events, as_of), with w = the validation window (1 day), t1 = as_of - w, t0 = t1 - w:

1. a private home (``PrivateHome``) receives only the events before as_of; marts and Feast
   exports are built there, with snapshots every w back from as_of;
2. GNN and two-tower retrieval (``recsys.models.retrieval.fit_retriever``): the towers train on
   labels before t0 and stop early on [t0, t1);
3. every policy of ``recsys.ranking.policy`` is fitted on [t0, t1) (profiles, tables and ANN
   as of t0) and validated on [t1, as_of) (as of t1); ``recsys.ranking.select.choose`` picks
   the one to serve: the learned policy only when it beats the best simple one beyond chance;
4. the chosen policy is refitted on [t1, as_of) (as of t1) and set to rank as of as_of.

Nothing at or after as_of is read. ``save`` writes a folder with a manifest of sha256 hashes
(``recsys.models.artifacts``), ``load`` verifies it; the service, ``recsys score`` and
``recsys evaluate`` all rank with the loaded ``ranking_``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.models.artifacts import (
    ANN_FILE,
    INDEX_DIR,
    QUERY_TOWER_DIR,
    read_json,
    save_arrays,
    verify,
    write_json,
    write_manifest,
)
from recsys.models.data import LearnedModelError, PrivateHome
from recsys.models.gnn import GnnConfig
from recsys.ranking.frames import events_before
from recsys.ranking.metrics import GroundTruth
from recsys.ranking.policy import (
    POLICIES,
    SIMPLE_POLICIES,
    Ranking,
    RankingSettings,
    policy_settings,
)
from recsys.ranking.profiles import profiles_at
from recsys.ranking.select import (
    K_RECALL,
    choose,
    gain_lower_bound,
    pool_recall,
    recommendation_matrix,
    validate,
)
from recsys.ranking.sources import AnnSearch
from recsys.ranking.tables import ItemTables, TableSettings

MODEL_NAME = "interest_v1"
RANKING_FILE = "ranking.json"
TABLES_DIR = "tables"


@dataclass(frozen=True)
class InterestConfig:
    """Settings of the learned model (chosen on validation days, never on a test day)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    validation_window: timedelta = timedelta(days=1)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    tables: TableSettings = field(default_factory=TableSettings)
    # The policies that compete on the validation window ("learned" plus the simple ones).
    policies: tuple[str, ...] = ("repeat", "blend", "learned", "learned_gbdt")
    # Full-graph GNN training: every step runs the whole graph, so big batches (few steps).
    gnn: GnnConfig = field(
        default_factory=lambda: GnnConfig(
            hidden_dim=32, epochs=4, batch_size=4096, show_progress=True
        )
    )
    # recsys.models.two_tower.TwoTowerConfig; None = ``retrieval.default_tower_config``.
    towers: object = None
    interest_slots: int = 5
    sequence_length: int = 20
    max_examples: int = 300_000
    show_progress: bool = True


def window_positives(events: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """(user_id, item_id): every item a user touched in [start, end)."""
    return (
        events.filter(pl.col("event_time").is_between(start, end, closed="left"))
        .select("user_id", "item_id")
        .unique()
    )


def _recorded(validations: dict, *, simple: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The validation figures kept with the model: each policy's means and, for learned
    policies, the lower bound of their NDCG@20 gain over the best simple policy (the figure
    ``choose`` requires above 0)."""
    simple_ones = [v for name, v in validations.items() if name in simple]
    best_simple = max(simple_ones, key=lambda v: v.ndcg.mean()) if simple_ones else None
    recorded = {}
    for name, v in validations.items():
        recorded[name] = dict(v.figures)
        if name not in simple and best_simple is not None:
            bound = gain_lower_bound(v.ndcg, best_simple.ndcg)
            recorded[name]["ndcg_gain_lower_bound"] = bound if np.isfinite(bound) else None
    return recorded


class InterestModel:
    """The recommender apps receive (module doc); ``recommend`` follows the evaluation protocol."""

    def __init__(self, config: InterestConfig | None = None) -> None:
        self.config = config or InterestConfig()

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        from recsys.models.retrieval import fit_retriever

        c = self.config
        events = events_before(events, as_of)
        w = c.validation_window
        t1, t0 = as_of - w, as_of - 2 * w
        started = time.perf_counter()
        with PrivateHome(events, as_of, config=c.features, snapshot_every=w) as home:
            self.loaded_ = home.report()
            retriever = fit_retriever(home, c)
            users = np.unique(events["user_id"].to_numpy())
            profiles = {
                t: profiles_at(home.paths, users, t, store=home.store) for t in (t0, t1, as_of)
            }
            tables = {
                t: ItemTables.from_marts(
                    t,
                    item_stats=retriever.edges[t].item_stats,
                    item_item=retriever.edges[t].item_item,
                    category_transitions=retriever.edges[t].category_category,
                    settings=c.tables,
                )
                for t in profiles
            }
            ann = {
                t: retriever.search_at(t, tables[t].items["item_id"].to_numpy()) for t in profiles
            }
        first, second = window_positives(events, t0, t1), window_positives(events, t1, as_of)
        truth = GroundTruth.from_frame(second.join(profiles[t1].select("user_id"), on="user_id"))

        def policy(name: str, at: datetime) -> Ranking:
            settings = policy_settings(name, c.ranking)
            return Ranking(POLICIES[name], c.features, tables[at], settings, ann[at])

        validations = {}
        for name in c.policies:
            fitted = policy(name, t0).fit(profiles[t0], first)
            ranked = fitted.at(tables[t1], ann[t1]).rank(profiles[t1], K_RECALL)
            validations[name] = validate(ranked, truth)
        self.policy_ = choose(validations, simple=SIMPLE_POLICIES)
        self.validation_ = _recorded(validations, simple=SIMPLE_POLICIES)
        # the widest pool: every source at the lambdarank policy's sizes
        every_source = policy("learned_gbdt", t1)
        self.pool_ = pool_recall(every_source.candidates(profiles[t1]), second, profiles[t1])
        final = policy(self.policy_, t1)
        self.ranking_ = final.fit(profiles[t1], second).at(tables[as_of], ann[as_of])
        self.profiles_ = profiles[as_of]
        self.retriever_ = retriever.detach()
        self.as_of_ = as_of
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def summary(self) -> dict[str, Any]:
        """The policy served, the validation figures behind the choice and, per candidate
        source, the validation window's (novel) positives it proposed."""
        return {
            "policy": self.policy_,
            "validation": self.validation_,
            "candidate_pool": getattr(self, "pool_", {}),
        }

    def save(self, directory: Path) -> Path:
        """Write the model to ``directory`` atomically (temp folder + rename) and return it.

        Layout: ``ranking.json`` (policy, settings, ranker weights), ``tables/*.parquet`` (the
        item tables as of as_of), ``query_tower/`` (SavedModel), ``index/`` (SavedModel of the
        TFRS top-k index with the query tower inside), ``encoder.json`` + ``encoder.npz`` (the
        feature encoder), ``ann.npz`` (item ids and embeddings, GNN user ids and embeddings as
        of as_of) and ``manifest.json`` (format version, sha256 of every file).
        """
        self._require_fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            write_json(partial / RANKING_FILE, self.ranking_.to_dict())
            (partial / TABLES_DIR).mkdir()
            self.ranking_.tables.save(partial / TABLES_DIR)
            self._save_retrieval(partial)
            write_manifest(
                partial,
                model=MODEL_NAME,
                version=directory.name,
                as_of=self.as_of_,
                extra={
                    **self.summary(),
                    "features": {k: v for k, v in self.config.features.__dict__.items()},
                },
            )
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(partial, directory)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return directory

    def _save_retrieval(self, directory: Path) -> None:
        from recsys.models.index import build_index, save_index

        retriever, search = self.retriever_, self.ranking_.ann
        graph = retriever.graph[self.as_of_]
        retriever.query_tower.save(directory / QUERY_TOWER_DIR)
        index = build_index(
            retriever.query_tower,
            search.index.ids,
            search.index.embeddings,
            k=min(self.ranking_.settings.ann_candidates, len(search.index.ids)),
        )
        save_index(index, directory / INDEX_DIR, retriever.sample_query)
        retriever.encoder.save(directory)
        save_arrays(
            directory / ANN_FILE,
            item_ids=search.index.ids,
            item_embeddings=search.index.embeddings,
            gnn_user_ids=graph.user_ids,
            gnn_user=graph.user,
        )

    @classmethod
    def load(cls, directory: Path, config: InterestConfig | None = None) -> InterestModel:
        """A model saved by ``save``, verified against its manifest; ranks exactly as the saved
        one did. TensorFlow is loaded only when the served policy retrieves with the towers."""
        directory = Path(directory)
        manifest = verify(directory)
        if manifest.get("model") != MODEL_NAME:
            raise LearnedModelError(
                f"{directory} holds {manifest.get('model')!r}, not {MODEL_NAME}"
            )
        model = cls(config)
        state = read_json(directory / RANKING_FILE)
        as_of = datetime.fromisoformat(manifest["as_of"])
        ann: AnnSearch | None = None
        if "ann" in POLICIES[state["policy"]].sources:
            from recsys.models.saved import SavedRetrieval

            ann = SavedRetrieval(directory, manifest)
        model.ranking_ = Ranking.from_dict(
            state,
            config=model.config.features,
            tables=ItemTables.load(directory / TABLES_DIR, as_of),
            ann=ann,
        )
        model.policy_ = manifest.get("policy", state["policy"])
        model.validation_ = manifest.get("validation", {})
        model.pool_ = manifest.get("candidate_pool", {})
        model.as_of_ = as_of
        model.manifest_ = manifest
        return model

    def _require_fitted(self) -> None:
        if not hasattr(self, "ranking_"):
            raise LearnedModelError("InterestModel must be fitted (or loaded) before recommend")

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        """int64 [len(user_ids), k] item ids, best first, -1 padded, ranked from the profiles as
        of the fitted as_of; users without a profile get the popular items."""
        self._require_fitted()
        if not hasattr(self, "profiles_"):
            raise LearnedModelError(
                "a loaded model has no profiles of its own: rank profiles with ranking_.rank "
                "(recsys score reads them from the home)"
            )
        user_ids = np.asarray(user_ids, np.int64)
        profiles = self.profiles_.filter(pl.col("user_id").is_in(user_ids.tolist()))
        recs = recommendation_matrix(self.ranking_.rank(profiles, k), user_ids, k)
        cold = ~np.isin(user_ids, profiles["user_id"].to_numpy())
        popular = self.ranking_.tables.popular(k)["item_id"].to_numpy()
        recs[cold, : len(popular)] = popular
        return recs


def load_latest(models_dir: Path) -> tuple[InterestModel, Path]:
    """The newest complete, verified model under ``models_dir`` (folders that fail their
    manifest are skipped) and its folder; ``ArtifactError`` when there is none."""
    from recsys.models.artifacts import latest_verified

    directory, _ = latest_verified(models_dir, MODEL_NAME)
    return InterestModel.load(directory), directory
