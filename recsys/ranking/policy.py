"""A ranking policy: which sources propose, and how their union is ordered.

The policies compete on every validation window (``recsys.ranking.select``):

| policy | sources | order |
|---|---|---|
| ``repeat`` | repeat, popular | the user's own items by long-horizon decayed score, then popular |
| ``blend`` | repeat, transition, category, popular | a logistic ranker; popular only fills |
| ``learned`` | every source, ANN included | seen/unseen logistic rankers, category context |
| ``learned_gbdt`` | every source, ANN included | LightGBM lambdarank, category context |

``Ranking.rank(profiles, k)`` is the one ranking function: ``recsys score`` calls it on
profiles read from the Feast exports, ``recsys evaluate`` on profiles as of the split, and the
service on one online profile per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Self

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.ranking.arrays import Groups, best_within, match
from recsys.ranking.candidates import Candidates, candidate_arrays
from recsys.ranking.frames import RankingError
from recsys.ranking.ranker import (
    GbdtRanker,
    LogisticRanker,
    SegmentedRanker,
    ranker_from_dict,
)
from recsys.ranking.reasons import reason_for
from recsys.ranking.sources import (
    AnnSearch,
    AnnSource,
    CategorySource,
    NextCategorySource,
    PopularSource,
    RepeatSource,
    Rows,
    Source,
    TransitionSource,
    Users,
)
from recsys.ranking.tables import ItemTables
from recsys.warehouse.schema import SOURCES

Ranker = LogisticRanker | SegmentedRanker | GbdtRanker
# Items a user bought come back by default: on both the Taobao sample and the simulator users
# revisit them the next day, and dropping them cost 18% NDCG@20 on the Taobao split
# (benchmarks/served_quality.py). Apps that never want them pass exclude_purchased=true.
EXCLUDE_PURCHASED = False
OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "category_id", "source", "sources")
# One recommended item as the API returns it (``Ranked.items``).
ITEM_FIELDS = ("item_id", "score", "category_id", "source", "sources", "reason")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    sources: tuple[str, ...]
    # None: ordered by the repeat score, then popularity; else the kind of ranker
    # (``recsys.ranking.ranker.RANKERS``)
    ranker: str | None
    context: bool = False
    # The source whose items only fill short lists: after every item another source proposed,
    # in that source's order, and never seen by the ranker (None: every source is ranked).
    fill: str | None = None

    @property
    def learned(self) -> bool:
        return self.ranker is not None


ALL_SOURCES = ("repeat", "transition", "category", "next_category", "ann", "popular")
POLICIES: dict[str, PolicySpec] = {
    "repeat": PolicySpec("repeat", ("repeat", "popular"), ranker=None, fill="popular"),
    # Popular items only fill the blend's lists: ranked among the others they cost it 0.0015
    # to 0.0020 NDCG@20 on the Taobao validation days (2017-12-01, -02) and nothing on the
    # simulator's.
    "blend": PolicySpec(
        "blend", ("repeat", "transition", "category", "popular"), "logistic", fill="popular"
    ),
    "learned": PolicySpec("learned", ALL_SOURCES, "segmented", context=True),
    "learned_gbdt": PolicySpec("learned_gbdt", ALL_SOURCES, "lambdarank", context=True),
}
SIMPLE_POLICIES = ("repeat", "blend")


@dataclass(frozen=True)
class RankingSettings:
    """Sizes of the sources and the ranker's penalty (chosen on validation days)."""

    transition_recent: int = 10
    transition_candidates: int = 100
    # 10 x 20, the blend baseline's sizes: on the validation days of the Taobao sample and the
    # simulator the blend policy with 20 x 50 scored 0.001 to 0.005 NDCG@20 lower.
    categories: int = 10
    items_per_category: int = 20
    # The next_category source and the multi-interest ANN queries are off: removing either
    # from the full model changed NDCG@20 by less than its 90% paired interval on both the
    # Taobao sample and the simulator (README "Which components earn their place").
    next_categories: bool = False
    ann_candidates: int = 100
    # Query vectors per user: one for the whole profile plus one per top short-horizon
    # category up to this many (0: the whole profile only).
    ann_interests: int = 0
    popular_candidates: int = 100
    l2: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# A policy's sizes where they differ from the settings every policy starts from (chosen on
# validation days). The lambdarank ranker orders a wider category pool, 20 x 50: on the
# validation days of the simulator (2026-01-20) and the Taobao sample (2017-12-02) it kept
# NDCG@20 (0.2913 vs 0.2916, 0.1284 vs 0.1271) and raised Recall@50 (+0.006, +0.001) and novel
# Recall@50 (0.221 vs 0.209, 0.0033 vs 0.0020); the learned policy lost 0.0025 and 0.0006 with it.
POLICY_SETTINGS: dict[str, dict[str, Any]] = {
    "learned_gbdt": {"categories": 20, "items_per_category": 50},
}


def policy_settings(policy: str, base: RankingSettings) -> RankingSettings:
    """``base`` with ``policy``'s own sizes (``POLICY_SETTINGS``) over it."""
    return replace(base, **POLICY_SETTINGS.get(policy, {}))


@dataclass
class Ranking:
    """One policy with its tables (and ANN search), fitted or not (module doc)."""

    spec: PolicySpec
    config: FeatureConfig
    tables: ItemTables
    settings: RankingSettings = field(default_factory=RankingSettings)
    ann: AnnSearch | None = None
    ranker: Ranker | None = None
    feature_names: tuple[str, ...] = ()

    def sources(self) -> list[Source]:
        s, names = self.settings, set(self.spec.sources)
        if not s.next_categories:
            names.discard("next_category")
        if self.ann is None:
            names.discard("ann")
        built: dict[str, Source] = {
            "repeat": RepeatSource(self.config),
            "transition": TransitionSource(
                self.config, s.transition_recent, s.transition_candidates
            ),
            "category": CategorySource(s.categories, s.items_per_category),
            "next_category": NextCategorySource(),
            "popular": PopularSource(s.popular_candidates),
        }
        if self.ann is not None:
            built["ann"] = AnnSource(self.ann, s.ann_candidates, s.ann_interests)
        return [built[name] for name in SOURCES if name in names]

    def at(self, tables: ItemTables, ann: AnnSearch | None) -> Ranking:
        """The same fitted policy reading other tables (another time)."""
        return replace(self, tables=tables, ann=ann)

    def candidates(self, profiles: pl.DataFrame) -> pl.DataFrame:
        """The candidate table of ``profiles`` (``recsys.ranking.candidates``) as a frame."""
        return self._candidates(Users.of(profiles)).frame()

    def _candidates(self, users: Users) -> Candidates:
        return candidate_arrays(users, self.tables, self.sources(), context=self.spec.context)

    def fit(self, profiles: pl.DataFrame, positives: pl.DataFrame) -> Self:
        """Fit the ranker on the candidates of the ``profiles`` of users with positives,
        labelled 1 when (user_id, item_id) is in ``positives``. The repeat policy has nothing to
        fit.

        Users without a positive are left out, as they are when a window is measured: their
        candidates are negatives only because the user did not come back, and a pointwise
        ranker would learn from them to rank the user's own items lower (on the simulator that
        cost the blend 0.02 NDCG@20)."""
        if not self.spec.learned:
            return self
        user_id = positives["user_id"].to_numpy().astype(np.int64)
        item_id = positives["item_id"].to_numpy().astype(np.int64)
        rows = self._candidates(Users.of(profiles)).rows
        active = match((rows.user_id,), (np.unique(user_id),)) >= 0
        rows = rows.take(np.flatnonzero(active & ~self._filler(rows)))
        if not len(rows):
            raise RankingError(f"no candidates of a user with positives to fit {self.spec.name}")
        labels = match((rows.user_id, rows.item_id), (user_id, item_id))
        fill = self.spec.fill
        names = tuple(n for n in rows.columns if fill is None or not n.startswith(f"{fill}_"))
        x = np.column_stack([rows.columns[n] for n in names])
        groups = Groups.of(rows.user_id).count()  # rows are sorted by user
        kind = self.spec.ranker
        ranker: Ranker = (
            SegmentedRanker(names.index("repeat_present"), self.settings.l2)
            if kind == "segmented"
            else GbdtRanker()
            if kind == "lambdarank"
            else LogisticRanker(self.settings.l2)
        )
        self.ranker = ranker.fit(x, (labels >= 0).astype(np.float64), groups)
        self.feature_names = names
        return self

    def score(self, table: Candidates) -> np.ndarray:
        """float [len(table)]: higher ranks first. The repeat policy orders the user's own
        items by long-horizon decayed score, the others their ranker; items only the fill
        source proposed come after each user's ranked ones (``_filled``)."""
        columns, zeros = table.rows.columns, np.zeros(len(table))
        if not self.spec.learned:
            ranked = columns.get("repeat_long", zeros)
        elif self.ranker is None:
            raise RankingError(f"the {self.spec.name} policy must be fitted before it ranks")
        else:
            ranked = self.ranker.score(
                np.column_stack([columns.get(n, zeros) for n in self.feature_names])
            )
        return ranked if self.spec.fill is None else self._filled(table.rows, ranked)

    def _filler(self, rows: Rows) -> np.ndarray:
        """bool [len(rows)]: rows that only the fill source proposed."""
        proposed = np.zeros(len(rows), bool)
        if self.spec.fill is None:
            return proposed
        for source in self.sources():
            if source.name != self.spec.fill:
                proposed |= rows.columns[f"{source.name}_present"] > 0
        return ~proposed

    def _filled(self, rows: Rows, ranked: np.ndarray) -> np.ndarray:
        """``ranked`` with each fill-only row moved below its user's lowest ranked row, in the
        fill source's order: lowest - 2 + its reciprocal rank, in (lowest - 2, lowest - 1]
        (lowest = 0 for a user with no ranked row). Per user, so that one user ranked alone
        (the service) gets the scores a batch gives it."""
        filler = self._filler(rows)
        groups = Groups.of(rows.user_id)
        lowest = groups.min(np.where(filler, np.inf, ranked))
        lowest = np.where(np.isfinite(lowest), lowest, 0.0)[groups.ids()]
        return np.where(filler, lowest - 2.0 + rows.columns[f"{self.spec.fill}_rr"], ranked)

    def rank(
        self, profiles: pl.DataFrame, k: int, *, exclude_purchased: bool = False
    ) -> pl.DataFrame:
        """The top ``k`` of each profile: user_id, rank (1..), item_id, score, category_id,
        source (the first of ``sources``), sources (every source that proposed the item, the
        best-ranking first), reason. Ties: lower item id first. With ``exclude_purchased``,
        items bought within the recent sequence are left out."""
        return self.rank_users(Users.of(profiles), k, exclude_purchased=exclude_purchased).frame()

    def rank_users(self, users: Users, k: int, *, exclude_purchased: bool = False) -> Ranked:
        """``rank`` on profiles already flattened (the service's ``Users.from_features``),
        as ``Ranked`` rows: a request turns them into JSON without building a frame."""
        table = self._candidates(users)
        score, rows = self.score(table), table.rows
        allowed = np.arange(len(table))
        if exclude_purchased:
            e = users.events
            bought = e.behavior == "buy"
            purchased = match((rows.user_id, rows.item_id), (e.user_id[bought], e.item_id[bought]))
            allowed = allowed[purchased < 0]
        top = allowed[best_within(rows.user_id[allowed], score[allowed], rows.item_id[allowed], k)]
        return _explained(table, top, score[top], users, [s.name for s in self.sources()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.spec.name,
            "settings": self.settings.to_dict(),
            "feature_names": list(self.feature_names),
            "ranker": None if self.ranker is None else self.ranker.to_dict(),
        }

    @classmethod
    def from_dict(
        cls,
        state: dict[str, Any],
        *,
        config: FeatureConfig,
        tables: ItemTables,
        ann: AnnSearch | None,
    ) -> Ranking:
        spec = POLICIES.get(state.get("policy", ""))
        if spec is None:
            raise RankingError(f"unknown ranking policy {state.get('policy')!r}")
        ranker_state = state.get("ranker")
        ranker = None if ranker_state is None else ranker_from_dict(ranker_state)
        return cls(
            spec,
            config,
            tables,
            RankingSettings(**state["settings"]),
            ann,
            ranker,
            tuple(state["feature_names"]),
        )


@dataclass(frozen=True)
class Ranked:
    """The rows of ``Ranking.rank_users``, grouped by user, best first: user_id, rank (1..),
    item_id, score [n] arrays; category_id (None where unknown), sources (best first) and
    reason [n] lists."""

    user_id: np.ndarray
    rank: np.ndarray
    item_id: np.ndarray
    score: np.ndarray
    category_id: list[int | None]
    sources: list[list[str]]
    reason: list[str]

    def frame(self) -> pl.DataFrame:
        """The ``OUTPUT_COLUMNS`` frame (plus reason) that ``Ranking.rank`` returns."""
        return pl.DataFrame(
            {
                "user_id": pl.Series(self.user_id, dtype=pl.Int64),
                "rank": pl.Series(self.rank, dtype=pl.Int32),
                "item_id": pl.Series(self.item_id, dtype=pl.Int64),
                "score": pl.Series(self.score, dtype=pl.Float64),
                "category_id": pl.Series(self.category_id, dtype=pl.Int64),
                "source": pl.Series([n[0] for n in self.sources], dtype=pl.String),
                "sources": pl.Series(self.sources, dtype=pl.List(pl.String)),
                "reason": pl.Series(self.reason, dtype=pl.String),
            }
        )

    def items(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per row with the ``ITEM_FIELDS`` (the API's item fields, equal to
        those columns of ``frame()``)."""
        return [
            dict(
                zip(ITEM_FIELDS, (item, score, category, sources[0], sources, reason), strict=True)
            )
            for item, score, category, sources, reason in zip(
                self.item_id.tolist(),
                self.score.tolist(),
                self.category_id,
                self.sources,
                self.reason,
                strict=True,
            )
        ]


def _explained(
    table: Candidates, top: np.ndarray, score: np.ndarray, users: Users, sources: list[str]
) -> Ranked:
    """The ``Ranked`` rows ``top`` of ``table`` (grouped by user, best first) with their
    ``score``: sources (best reciprocal rank first; repeat leads when present) and a reason.
    An item of the category the user's short-horizon interest moved to (the top category
    changed from the long horizon's) gives the move as its reason."""
    rows = table.rows
    user_id, category_id = rows.user_id[top], table.category_id[top]
    known = table.category_known[top]
    first = np.ones(len(top), bool)
    first[1:] = user_id[1:] != user_id[:-1]
    starts = np.flatnonzero(first)
    rank = np.arange(len(top)) - np.repeat(starts, np.diff(np.append(starts, len(top)))) + 1
    rr = np.column_stack([rows.columns[f"{s}_rr"][top] for s in sources])
    names, reasons, categories = [], [], []
    for row, (user, category) in enumerate(
        zip(user_id.tolist(), category_id.tolist(), strict=True)
    ):
        present = [sources[j] for j in np.argsort(-rr[row], kind="stable") if rr[row, j] > 0]
        if "repeat" in present:
            present.remove("repeat")
            present.insert(0, "repeat")
        names.append(present)
        src, dst = users.moves.get(user, (None, None))
        category = category if known[row] else None
        categories.append(category)
        moved_here = src is not None and dst is not None and src != dst and dst == category
        reasons.append(
            reason_for(present[0], category=category, moved_from=src if moved_here else None)
        )
    return Ranked(
        user_id, rank.astype(np.int32), rows.item_id[top], score, categories, names, reasons
    )
