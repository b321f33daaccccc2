"""Non-neural reference recommenders, each fitted on events strictly before an as-of time.

Every model has ``fit(events, as_of) -> self`` (events at or after ``as_of`` are ignored, so the
whole log can be passed) and ``recommend(user_ids, k) -> int64 [len(user_ids), k]`` item ids, best
first, -1 padded. Seen items are allowed unless a model says otherwise: on retail logs a user's
own recent items are the strongest single signal, and the "novel" user group measures the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from recsys.config import FeatureConfig
from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.split import TimeSplit
from recsys.ranking.frames import (
    PAD,
    IdIndex,
    behavior_weight,
    decayed_weight,
    events_before,
    top_k_matrix,
)
from recsys.ranking.ranker import LogisticRanker


class Recommender(Protocol):
    """What the evaluation needs from a model."""

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self: ...

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray: ...


def _require_fitted(model: object, attribute: str) -> None:
    if not hasattr(model, attribute):
        raise EvaluationError(f"{type(model).__name__} must be fitted before recommend")


def item_scores(
    events: pl.DataFrame, as_of: datetime, config: FeatureConfig, half_life_hours: float | None
) -> pl.DataFrame:
    """(item_id, category_id, score): behaviour-weighted, optionally decayed, item popularity."""
    return events.group_by("item_id").agg(
        pl.col("category_id").last(),
        decayed_weight(config, as_of, half_life_hours).sum().alias("score"),
    )


def user_item_scores(
    events: pl.DataFrame, as_of: datetime, config: FeatureConfig, half_life_hours: float | None
) -> pl.DataFrame:
    """(user_id, item_id, score): each user's decayed behaviour-weighted score per item."""
    return events.group_by("user_id", "item_id").agg(
        decayed_weight(config, as_of, half_life_hours).sum().alias("score")
    )


def _ranking(scores: pl.DataFrame) -> np.ndarray:
    """Item ids by descending score, ties by lower id."""
    return scores.sort(["score", "item_id"], descending=[True, False])["item_id"].to_numpy()


@dataclass
class Popularity:
    """The same list for everyone: items by behaviour-weighted count, decayed when a half-life
    is given (``half_life_hours=config.short_half_life_hours`` gives "recent popularity")."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    half_life_hours: float | None = None

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        self.ranking_ = _ranking(item_scores(events, as_of, self.config, self.half_life_hours))
        return self

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        _require_fitted(self, "ranking_")
        top = np.full(k, PAD, dtype=np.int64)
        top[: min(k, len(self.ranking_))] = self.ranking_[:k]
        return np.tile(top, (len(user_ids), 1))


@dataclass
class Repeat:
    """The user's own items by decayed behaviour-weighted score, topped up with popular items."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    half_life_hours: float | None = 24.0

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        self.scores_ = user_item_scores(events, as_of, self.config, self.half_life_hours)
        self.popular_ = Popularity(self.config).fit(events, as_of).ranking_
        return self

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        _require_fitted(self, "scores_")
        return top_k_matrix(self.scores_, user_ids, k, fill_items=self.popular_)


@dataclass
class CategoryInterest:
    """Score(u, i) = decayed interest of u in category(i) x share of i in its category's decayed
    popularity; over the user's ``n_categories`` top categories, topped up with popular items.
    Seen items are not excluded."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    interest_half_life_hours: float | None = 24.0
    popularity_half_life_hours: float | None = 336.0
    n_categories: int = 20

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        self.interest_ = category_interest(
            events, as_of, self.config, self.interest_half_life_hours
        )
        self.items_ = category_item_share(
            events, as_of, self.config, self.popularity_half_life_hours
        )
        self.popular_ = Popularity(self.config).fit(events, as_of).ranking_
        return self

    def candidates(self, user_ids: np.ndarray, items_per_category: int) -> pl.DataFrame:
        """(user_id, item_id, category_id, interest, share, score) over the top categories."""
        _require_fitted(self, "interest_")
        top_items = (
            self.items_.sort(["category_id", "share", "item_id"], descending=[False, True, False])
            .group_by("category_id", maintain_order=True)
            .head(items_per_category)
        )
        return (
            self.interest_.filter(pl.col("user_id").is_in(np.asarray(user_ids).tolist()))
            .sort(["user_id", "interest", "category_id"], descending=[False, True, False])
            .group_by("user_id", maintain_order=True)
            .head(self.n_categories)
            .join(top_items, on="category_id")
            .with_columns(score=pl.col("interest") * pl.col("share"))
        )

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        return top_k_matrix(self.candidates(user_ids, k), user_ids, k, fill_items=self.popular_)


def category_interest(
    events: pl.DataFrame, as_of: datetime, config: FeatureConfig, half_life_hours: float | None
) -> pl.DataFrame:
    """(user_id, category_id, interest, interest_share): decayed behaviour-weighted interest."""
    return (
        events.group_by("user_id", "category_id")
        .agg(decayed_weight(config, as_of, half_life_hours).sum().alias("interest"))
        .with_columns(interest_share=pl.col("interest") / pl.col("interest").sum().over("user_id"))
    )


def category_item_share(
    events: pl.DataFrame, as_of: datetime, config: FeatureConfig, half_life_hours: float | None
) -> pl.DataFrame:
    """(item_id, category_id, share): item popularity / its category's popularity."""
    return (
        item_scores(events, as_of, config, half_life_hours)
        .with_columns(share=pl.col("score") / pl.col("score").sum().over("category_id"))
        .select("item_id", "category_id", "share")
    )


@dataclass(frozen=True)
class _UserItemMatrix:
    """Users x items sparse matrix (CSR, float32) of behaviour-weighted counts and its indexes."""

    users: IdIndex
    items: IdIndex
    matrix: sp.csr_matrix

    @classmethod
    def build(cls, scores: pl.DataFrame) -> _UserItemMatrix:
        users = IdIndex(scores["user_id"].to_numpy())
        items = IdIndex(scores["item_id"].to_numpy())
        matrix = sp.csr_matrix(
            (
                scores["score"].to_numpy().astype(np.float32),
                (
                    users.positions(scores["user_id"].to_numpy()),
                    items.positions(scores["item_id"].to_numpy()),
                ),
            ),
            shape=(len(users), len(items)),
        )
        return cls(users, items, matrix)


def _rows_to_frame(user_ids: np.ndarray, scores: sp.csr_matrix, items: IdIndex) -> pl.DataFrame:
    """(user_id, item_id, score) from a sparse [len(user_ids), n_items] score matrix."""
    coo = scores.tocoo()
    return pl.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=np.int64)[coo.row],
            "item_id": items.ids[coo.col],
            "score": coo.data.astype(np.float64),
        }
    )


@dataclass
class ItemKNN:
    """Item-item cosine CF: score(u, i) = sum over u's ``n_recent`` latest items j of
    decayed weight(u, j) x cos(i, j), cosine over the behaviour-weighted user-item matrix.
    ``exclude_seen`` drops every item the user touched before ``as_of``."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    n_recent: int = 20
    half_life_hours: float | None = 24.0
    exclude_seen: bool = False
    batch_users: int = 2048

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        self.counts_ = _UserItemMatrix.build(user_item_scores(events, as_of, self.config, None))
        x = self.counts_.matrix
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0))).ravel()
        normalised = x @ sp.diags(1.0 / np.maximum(norms, 1e-12))
        self.similarity_ = (normalised.T @ normalised).tocsr()
        recent = (
            events.sort("event_time", descending=True)
            .group_by("user_id", "item_id")
            .agg(
                pl.col("event_time").max().alias("last"),
                decayed_weight(self.config, as_of, self.half_life_hours).sum().alias("score"),
            )
            .sort(["user_id", "last"], descending=[False, True])
            .group_by("user_id", maintain_order=True)
            .head(self.n_recent)
        )
        self.recent_ = _UserItemMatrix.build(recent.select("user_id", "item_id", "score"))
        return self

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        _require_fitted(self, "similarity_")
        user_ids = np.asarray(user_ids, dtype=np.int64)
        frames = []
        for start in range(0, len(user_ids), self.batch_users):
            batch = user_ids[start : start + self.batch_users]
            rows = self.counts_.users.positions(batch)
            known = rows >= 0
            profile = self._profile(batch[known])
            scores = (profile @ self.similarity_).tocsr()
            if self.exclude_seen:
                seen = self.counts_.matrix[rows[known]]
                scores = scores - scores.multiply(seen > 0)
                scores.eliminate_zeros()
            frames.append(_rows_to_frame(batch[known], scores, self.counts_.items))
        return top_k_matrix(pl.concat(frames), user_ids, k)

    def _profile(self, user_ids: np.ndarray) -> sp.csr_matrix:
        """[len(user_ids), n_items] recent-item weights in the counts' item order."""
        recent = self.recent_.matrix[self.recent_.users.positions(user_ids)].tocoo()
        columns = self.counts_.items.positions(self.recent_.items.ids[recent.col])
        return sp.csr_matrix(
            (recent.data, (recent.row, columns)),
            shape=(len(user_ids), len(self.counts_.items)),
        )


@dataclass
class ALS:
    """``implicit`` alternating least squares on the behaviour-weighted user-item matrix.

    ``weighting="bm25"`` applies BM25 to the counts; ``"confidence"`` uses log1p(counts) with
    ``alpha`` as implicit's confidence scale. Unknown users get a row of -1.
    """

    config: FeatureConfig = field(default_factory=FeatureConfig)
    factors: int = 64
    regularization: float = 0.05
    iterations: int = 15
    weighting: str = "bm25"
    alpha: float = 1.0
    exclude_seen: bool = False
    random_state: int = 42
    threads: int = 2

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import bm25_weight
        from threadpoolctl import threadpool_limits

        if self.weighting not in ("bm25", "confidence"):
            raise EvaluationError(f"unknown ALS weighting {self.weighting!r}")
        events = events_before(events, as_of)
        self.counts_ = _UserItemMatrix.build(user_item_scores(events, as_of, self.config, None))
        counts = self.counts_.matrix
        self.weighted_ = (
            bm25_weight(counts, K1=100, B=0.8).tocsr().astype(np.float32)
            if self.weighting == "bm25"
            else counts.log1p()
        )
        # implicit runs its own threads; a multi-threaded BLAS underneath would oversubscribe
        # (implicit checks this when the model is constructed).
        with threadpool_limits(1, "blas"):
            self.model_ = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                num_threads=self.threads,
                random_state=self.random_state,
            )
            self.model_.fit(self.weighted_, show_progress=False)
        return self

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        _require_fitted(self, "model_")
        rows = self.counts_.users.positions(user_ids)
        known = np.flatnonzero(rows >= 0)
        out = np.full((len(rows), k), PAD, dtype=np.int64)
        if len(known):
            ids, _ = self.model_.recommend(
                rows[known],
                self.weighted_[rows[known]],
                N=min(k, len(self.counts_.items)),
                filter_already_liked_items=self.exclude_seen,
            )
            ids = np.asarray(ids).reshape(len(known), -1)
            out[known, : ids.shape[1]] = np.where(ids >= 0, self.counts_.items.ids[ids], PAD)
        return out


class CandidateGenerator(Protocol):
    """A source of (user, item) candidates with features, for ``CandidateBlend``.

    ``candidates`` returns a frame with user_id, item_id (unique pairs) and Float64 feature
    columns named ``<name>_*``, among them ``<name>_score`` (higher = better) which the blend
    also turns into a reciprocal-rank feature.
    """

    name: str

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self: ...

    def candidates(self, user_ids: np.ndarray) -> pl.DataFrame: ...


def _of_users(frame: pl.DataFrame, user_ids: np.ndarray) -> pl.DataFrame:
    return frame.filter(pl.col("user_id").is_in(np.asarray(user_ids).tolist()))


@dataclass
class RepeatCandidates:
    """Every item the user touched, with decayed scores, behaviour counts and recency."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    name: str = "repeat"

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of)
        c, n = self.config, self.name
        age_h = (pl.lit(as_of) - pl.col("event_time").max()).dt.total_seconds() / 3600.0
        self.table_ = events.group_by("user_id", "item_id").agg(
            decayed_weight(c, as_of, c.short_half_life_hours).sum().alias(f"{n}_score"),
            decayed_weight(c, as_of, c.long_half_life_hours).sum().alias(f"{n}_long"),
            *[
                (pl.col("behavior") == b).sum().cast(pl.Float64).alias(f"{n}_n_{b}")
                for b in c.behavior_weights
            ],
            (1.0 / (1.0 + age_h)).alias(f"{n}_recency"),
        )
        return self

    def candidates(self, user_ids: np.ndarray) -> pl.DataFrame:
        _require_fitted(self, "table_")
        return _of_users(self.table_, user_ids)


@dataclass
class TransitionCandidates:
    """Items that followed the user's ``n_recent`` latest items within sessions (anyone's).

    Transition weight src -> dst = behaviour weight of dst summed over consecutive distinct-item
    event pairs with a gap under the session gap, normalised per src. Score = sum over the user's
    recent items of decayed item weight x transition probability.
    """

    config: FeatureConfig = field(default_factory=FeatureConfig)
    name: str = "transition"
    n_recent: int = 10
    max_candidates: int = 100

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        events = events_before(events, as_of).sort("user_id", "event_time")
        gap = pl.duration(minutes=self.config.session_gap_minutes)
        prev_item = pl.col("item_id").shift(1).over("user_id")
        prev_time = pl.col("event_time").shift(1).over("user_id")
        self.transitions_ = (
            events.with_columns(src=prev_item, src_time=prev_time)
            .filter(
                (pl.col("event_time") - pl.col("src_time") <= gap)
                & (pl.col("src") != pl.col("item_id"))
            )
            .group_by("src", "item_id")
            .agg(behavior_weight(self.config).sum().alias("w"))
            .with_columns(p=pl.col("w") / pl.col("w").sum().over("src"))
            .select("src", "item_id", "p")
        )
        self.recent_ = (
            events.group_by("user_id", "item_id")
            .agg(
                pl.col("event_time").max().alias("last"),
                decayed_weight(self.config, as_of, self.config.short_half_life_hours)
                .sum()
                .alias("r"),
            )
            .sort(["user_id", "last"], descending=[False, True])
            .group_by("user_id", maintain_order=True)
            .head(self.n_recent)
            .select("user_id", pl.col("item_id").alias("src"), "r")
        )
        return self

    def candidates(self, user_ids: np.ndarray) -> pl.DataFrame:
        _require_fitted(self, "transitions_")
        n = self.name
        return (
            _of_users(self.recent_, user_ids)
            .join(self.transitions_, on="src")
            .group_by("user_id", "item_id")
            .agg(
                (pl.col("r") * pl.col("p")).sum().alias(f"{n}_score"),
                pl.col("p").sum().alias(f"{n}_p"),
                pl.len().cast(pl.Float64).alias(f"{n}_sources"),
            )
            .sort(["user_id", f"{n}_score", "item_id"], descending=[False, True, False])
            .group_by("user_id", maintain_order=True)
            .head(self.max_candidates)
        )


@dataclass
class CategoryCandidates:
    """Popular items of the user's top categories (see ``CategoryInterest``), seen or not."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    name: str = "category"
    n_categories: int = 10
    items_per_category: int = 20

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        self.model_ = CategoryInterest(self.config, n_categories=self.n_categories).fit(
            events, as_of
        )
        return self

    def candidates(self, user_ids: np.ndarray) -> pl.DataFrame:
        _require_fitted(self, "model_")
        n = self.name
        return self.model_.candidates(user_ids, self.items_per_category).select(
            "user_id",
            "item_id",
            pl.col("score").alias(f"{n}_score"),
            pl.col("interest").alias(f"{n}_interest"),
            pl.col("interest_share").alias(f"{n}_interest_share"),
            pl.col("share").alias(f"{n}_item_share"),
        )


def default_generators(config: FeatureConfig = FeatureConfig()) -> list[CandidateGenerator]:
    """Repeat + session transitions + category interest."""
    return [RepeatCandidates(config), TransitionCandidates(config), CategoryCandidates(config)]


@dataclass
class CandidateBlend:
    """Candidate generators merged by a learned scorer.

    ``fit(events, as_of)`` fits the generators as of ``as_of - validation_window``, labels their
    candidates for users active on both sides with "the user touched the item in
    [as_of - validation_window, as_of)", fits ``ranker`` on that, then refits the generators as of
    ``as_of``. Nothing at or after ``as_of`` is read. Features: every generator column, a
    reciprocal rank per generator (0 when absent) and item popularity (short and long decay);
    missing values are 0. Rows short of k are topped up with popular items. (The served learned
    ranking, with category context and seen/unseen rankers, is ``recsys.ranking.policy``.)
    """

    generators: list[CandidateGenerator] = field(default_factory=default_generators)
    config: FeatureConfig = field(default_factory=FeatureConfig)
    ranker: LogisticRanker = field(default_factory=LogisticRanker)
    validation_window: timedelta = timedelta(days=1)

    def fit(self, events: pl.DataFrame, as_of: datetime) -> Self:
        window = TimeSplit(as_of - self.validation_window, as_of)
        before, during = window.train(events), window.test(events)
        users = np.intersect1d(before["user_id"].unique(), during["user_id"].unique())
        if not len(users):
            raise EvaluationError(f"no user active on both sides of {window.train_end}")
        self._fit_sources(before, window.train_end)
        table = self.features(users)
        labels = table.join(
            during.select("user_id", "item_id").unique().with_columns(label=pl.lit(1.0)),
            on=["user_id", "item_id"],
            how="left",
        )["label"].fill_null(0.0)
        self.feature_names_ = [c for c in table.columns if c not in ("user_id", "item_id")]
        x, y = table.select(self.feature_names_).to_numpy(), labels.to_numpy()
        self.ranker.fit(x, y)
        self._fit_sources(events, as_of)
        return self

    def score(self, table: pl.DataFrame) -> np.ndarray:
        """float [table.height]: ranker logits of ``features`` rows."""
        _require_fitted(self, "feature_names_")
        return self.ranker.score(table.select(self.feature_names_).to_numpy())

    def _fit_sources(self, events: pl.DataFrame, as_of: datetime) -> None:
        events = events_before(events, as_of)
        for generator in self.generators:
            generator.fit(events, as_of)
        c = self.config
        self.item_features_ = (
            item_scores(events, as_of, c, c.short_half_life_hours)
            .select("item_id", pl.col("score").alias("item_pop_short"))
            .join(
                item_scores(events, as_of, c, c.long_half_life_hours).select(
                    "item_id", pl.col("score").alias("item_pop_long")
                ),
                on="item_id",
            )
        )
        self.popular_ = Popularity(c).fit(events, as_of).ranking_

    def features(self, user_ids: np.ndarray) -> pl.DataFrame:
        """(user_id, item_id, features...): the union of all generators' candidates."""
        table: pl.DataFrame | None = None
        for generator in self.generators:
            score = f"{generator.name}_score"
            rank = pl.col(score).rank(method="ordinal", descending=True).over("user_id")
            frame = generator.candidates(user_ids).with_columns(
                (1.0 / rank).alias(f"{generator.name}_rr"),
                (pl.col(score) / pl.col(score).max().over("user_id")).alias(
                    f"{generator.name}_rel"
                ),
                pl.lit(1.0).alias(f"{generator.name}_present"),
            )
            table = (
                frame
                if table is None
                else table.join(frame, on=["user_id", "item_id"], how="full", coalesce=True)
            )
        if table is None:
            raise EvaluationError("CandidateBlend needs at least one generator")
        table = table.join(self.item_features_, on="item_id", how="left")
        return table.with_columns(pl.exclude("user_id", "item_id").cast(pl.Float64).fill_null(0.0))

    def recommend(self, user_ids: np.ndarray, k: int) -> np.ndarray:
        _require_fitted(self, "feature_names_")
        table = self.features(user_ids)
        scored = table.select("user_id", "item_id").with_columns(score=self.score(table))
        return top_k_matrix(scored, user_ids, k, fill_items=self.popular_)
