"""A ranking policy: which sources propose, and how their union is ordered.

The policies compete on every validation window (``recsys.ranking.select``):

| policy | sources | order |
|---|---|---|
| ``repeat`` | repeat, popular | the user's own items by long-horizon decayed score, then popular |
| ``blend`` | repeat, transition, category, popular | a logistic ranker over the sources' features |
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


@dataclass(frozen=True)
class PolicySpec:
    name: str
    sources: tuple[str, ...]
    # None: ordered by the repeat score, then popularity; else the kind of ranker
    # (``recsys.ranking.ranker.RANKERS``)
    ranker: str | None
    context: bool = False

    @property
    def learned(self) -> bool:
        return self.ranker is not None


ALL_SOURCES = ("repeat", "transition", "category", "next_category", "ann", "popular")
POLICIES: dict[str, PolicySpec] = {
    "repeat": PolicySpec("repeat", ("repeat", "popular"), ranker=None),
    "blend": PolicySpec("blend", ("repeat", "transition", "category", "popular"), "logistic"),
    "learned": PolicySpec("learned", ALL_SOURCES, "segmented", context=True),
    "learned_gbdt": PolicySpec("learned_gbdt", ALL_SOURCES, "lambdarank", context=True),
}
SIMPLE_POLICIES = ("repeat", "blend")


@dataclass(frozen=True)
class RankingSettings:
    """Sizes of the sources and the ranker's penalty (chosen on validation days)."""

    transition_recent: int = 10
    transition_candidates: int = 100
    categories: int = 20
    items_per_category: int = 50
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
        rows = rows.take(np.flatnonzero(match((rows.user_id,), (np.unique(user_id),)) >= 0))
        if not len(rows):
            raise RankingError(f"no candidates of a user with positives to fit {self.spec.name}")
        labels = match((rows.user_id, rows.item_id), (user_id, item_id))
        names = tuple(rows.columns)
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
        """float [len(table)]: higher ranks first."""
        columns, zeros = table.rows.columns, np.zeros(len(table))
        if not self.spec.learned:
            # The user's own items by long-horizon decayed score (> 0), then popular items
            # (popular_rr - 1 <= 0).
            present = columns.get("repeat_present", zeros) > 0
            return np.where(present, columns.get("repeat_long", zeros), columns["popular_rr"] - 1.0)
        if self.ranker is None:
            raise RankingError(f"the {self.spec.name} policy must be fitted before it ranks")
        return self.ranker.score(
            np.column_stack([columns.get(n, zeros) for n in self.feature_names])
        )

    def rank(
        self, profiles: pl.DataFrame, k: int, *, exclude_purchased: bool = False
    ) -> pl.DataFrame:
        """The top ``k`` of each profile: user_id, rank (1..), item_id, score, category_id,
        source (the first of ``sources``), sources (every source that proposed the item, the
        best-ranking first), reason. Ties: lower item id first. With ``exclude_purchased``,
        items bought within the recent sequence are left out."""
        users = Users.of(profiles)
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


def _explained(
    table: Candidates, top: np.ndarray, score: np.ndarray, users: Users, sources: list[str]
) -> pl.DataFrame:
    """The output frame of ``Ranking.rank`` for the rows ``top`` of ``table`` (grouped by user,
    best first) with their ``score``: sources (best reciprocal rank first; repeat leads when
    present) and a reason. An item of the category the user's short-horizon interest moved to
    (the top category changed from the long horizon's) gives the move as its reason."""
    rows = table.rows
    user_id, category_id = rows.user_id[top], table.category_id[top]
    known = table.category_known[top]
    first = np.ones(len(top), bool)
    first[1:] = user_id[1:] != user_id[:-1]
    starts = np.flatnonzero(first)
    rank = np.arange(len(top)) - np.repeat(starts, np.diff(np.append(starts, len(top)))) + 1
    rr = np.column_stack([rows.columns[f"{s}_rr"][top] for s in sources])
    moves = _moves(users)
    names, reasons = [], []
    for row, (user, category) in enumerate(
        zip(user_id.tolist(), category_id.tolist(), strict=True)
    ):
        present = [sources[j] for j in np.argsort(-rr[row], kind="stable") if rr[row, j] > 0]
        if "repeat" in present:
            present.remove("repeat")
            present.insert(0, "repeat")
        names.append(present)
        src, dst = moves.get(user, (None, None))
        category = category if known[row] else None
        moved_here = src is not None and dst is not None and src != dst and dst == category
        reasons.append(
            reason_for(present[0], category=category, moved_from=src if moved_here else None)
        )
    category_out = pl.Series("category_id", category_id, pl.Int64)
    if not known.all():
        category_out = category_out.scatter(np.flatnonzero(~known), None)
    return pl.DataFrame(
        {
            "user_id": pl.Series(user_id, dtype=pl.Int64),
            "rank": pl.Series(rank, dtype=pl.Int32),
            "item_id": pl.Series(rows.item_id[top], dtype=pl.Int64),
            "score": pl.Series(score, dtype=pl.Float64),
            "category_id": category_out,
            "source": pl.Series([n[0] for n in names], dtype=pl.String),
            "sources": pl.Series(names, dtype=pl.List(pl.String)),
            "reason": pl.Series(reasons, dtype=pl.String),
        }
    )


def _moves(users: Users) -> dict[int, tuple[Any, Any]]:
    """user_id -> (top long-horizon category, top short-horizon category), where known."""
    profiles = users.profiles
    columns = [f"user_interest_shift__top_category_{h}" for h in ("long", "short")]
    if not all(c in profiles.columns for c in columns):
        return {}
    return dict(
        zip(
            users.user_id.tolist(),
            zip(profiles[columns[0]].to_list(), profiles[columns[1]].to_list(), strict=True),
            strict=True,
        )
    )
