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
from recsys.ranking.candidates import KEYS, candidate_table
from recsys.ranking.frames import RankingError
from recsys.ranking.profiles import SEQ_BEHAVIORS, SEQ_ITEMS
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
    next_categories: bool = True
    ann_candidates: int = 100
    # Query vectors per user: one for the whole profile plus one per top short-horizon
    # category up to this many (0: the whole profile only).
    ann_interests: int = 3
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
        return candidate_table(profiles, self.tables, self.sources(), context=self.spec.context)

    def fit(self, profiles: pl.DataFrame, positives: pl.DataFrame) -> Self:
        """Fit the ranker on candidates of ``profiles`` labelled 1 when (user_id, item_id) is
        in ``positives``. The repeat policy has nothing to fit."""
        if not self.spec.learned:
            return self
        table = self.candidates(profiles)
        labels = (
            table.select("user_id", "item_id")
            .join(
                positives.select("user_id", "item_id").unique().with_columns(label=pl.lit(1.0)),
                on=["user_id", "item_id"],
                how="left",
            )["label"]
            .fill_null(0.0)
            .to_numpy()
        )
        names = tuple(c for c in table.columns if c not in KEYS)
        x = table.select(names).to_numpy()
        groups = table.group_by("user_id", maintain_order=True).len()["len"].to_numpy()
        kind = self.spec.ranker
        ranker: Ranker = (
            SegmentedRanker(names.index("repeat_present"), self.settings.l2)
            if kind == "segmented"
            else GbdtRanker()
            if kind == "lambdarank"
            else LogisticRanker(self.settings.l2)
        )
        self.ranker, self.feature_names = ranker.fit(x, labels, groups), names
        return self

    def score(self, table: pl.DataFrame) -> np.ndarray:
        """float [table.height]: higher ranks first."""
        if not self.spec.learned:
            # The user's own items by long-horizon decayed score (> 0), then popular items
            # (popular_rr - 1 <= 0).
            repeat = table["repeat_long"].to_numpy() if "repeat_long" in table else 0.0
            present = table["repeat_present"].to_numpy() > 0 if "repeat_present" in table else 0
            return np.where(present, repeat, table["popular_rr"].to_numpy() - 1.0)
        if self.ranker is None:
            raise RankingError(f"the {self.spec.name} policy must be fitted before it ranks")
        x = table.select(
            [pl.col(n) if n in table.columns else pl.lit(0.0).alias(n) for n in self.feature_names]
        ).to_numpy()
        return self.ranker.score(x)

    def rank(
        self, profiles: pl.DataFrame, k: int, *, exclude_purchased: bool = False
    ) -> pl.DataFrame:
        """The top ``k`` of each profile: user_id, rank (1..), item_id, score, category_id,
        source (the first of ``sources``), sources (every source that proposed the item, the
        best-ranking first), reason. Ties: lower item id first. With ``exclude_purchased``,
        items bought within the recent sequence are left out."""
        table = self.candidates(profiles)
        scored = table.with_columns(score=pl.Series(self.score(table), dtype=pl.Float64))
        if exclude_purchased:
            scored = scored.join(_purchased(profiles), on=["user_id", "item_id"], how="anti")
        top = (
            scored.sort(["user_id", "score", "item_id"], descending=[False, True, False])
            .group_by("user_id", maintain_order=True)
            .head(k)
            .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over("user_id"))
        )
        return _explained(top, profiles, [s.name for s in self.sources()])

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


def _purchased(profiles: pl.DataFrame) -> pl.DataFrame:
    return (
        profiles.select("user_id", pl.col(SEQ_ITEMS).alias("item_id"), pl.col(SEQ_BEHAVIORS))
        .explode("item_id", SEQ_BEHAVIORS)
        .filter(pl.col(SEQ_BEHAVIORS) == "buy")
        .select("user_id", "item_id")
        .unique()
    )


def _explained(top: pl.DataFrame, profiles: pl.DataFrame, sources: list[str]) -> pl.DataFrame:
    """``top`` with its sources (best reciprocal rank first; repeat leads when present) and a
    reason. An item of the category the user's short-horizon interest moved to (the top
    category changed from the long horizon's) gives the move as its reason."""
    rr = np.column_stack([top[f"{s}_rr"].to_numpy() for s in sources]) if sources else None
    moves = profiles.select(
        "user_id",
        pl.col("user_interest_shift__top_category_long").alias("moved_from")
        if "user_interest_shift__top_category_long" in profiles
        else pl.lit(None, pl.Int64).alias("moved_from"),
        pl.col("user_interest_shift__top_category_short").alias("moved_to")
        if "user_interest_shift__top_category_short" in profiles
        else pl.lit(None, pl.Int64).alias("moved_to"),
    )
    categories = top["category_id"].to_list()
    moved = top.select("user_id").join(moves, on="user_id", how="left")
    names, reasons = [], []
    repeat = sources.index("repeat") if "repeat" in sources else -1
    for row, (category, src, dst) in enumerate(
        zip(categories, moved["moved_from"].to_list(), moved["moved_to"].to_list(), strict=True)
    ):
        order = np.argsort(-rr[row], kind="stable") if rr is not None else []
        present = [sources[j] for j in order if rr[row, j] > 0]
        if repeat >= 0 and rr[row, repeat] > 0:
            present.remove("repeat")
            present.insert(0, "repeat")
        names.append(present)
        moved_here = src is not None and dst is not None and src != dst and dst == category
        reasons.append(
            reason_for(present[0], category=category, moved_from=src if moved_here else None)
        )
    return top.with_columns(
        source=pl.Series([n[0] for n in names], dtype=pl.String),
        sources=pl.Series(names, dtype=pl.List(pl.String)),
        reason=pl.Series(reasons, dtype=pl.String),
    ).select(*OUTPUT_COLUMNS, "reason")
