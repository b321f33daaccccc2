"""Merge the sources' candidates, score them, filter, and explain each recommendation.

Scoring is pluggable (``Scorer``): it sees the merged candidates as a matrix of per-source
scores and returns one score per candidate. The default ``LinearBlend`` is

    score(item) = sum over sources s of weight_s * norm_s(item),

where norm_s rescales source s's scores of this request to [0, 1] (shift so that the smallest
is >= 0, divide by the largest) and is 0 when s did not propose the item. Items proposed by
several sources add up. A trained ranker replaces it by implementing ``Scorer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

from recsys.serving.candidates import Candidate, CandidateSource
from recsys.serving.catalogue import Catalogue
from recsys.serving.profile import UserProfile
from recsys.warehouse.writeback import reason_for

COLD_START_REASON = "trending now"
# writeback.reason_for knows repeat | ann | popular; a category-interest item is explained as
# "popular in <category> right now".
_REASON_SOURCE = {"repeat": "repeat", "ann": "ann", "popular": "popular", "category": "popular"}


@dataclass(frozen=True)
class MergedCandidates:
    """Distinct candidate items of one request.

    ``sources`` [S] names the columns; ``raw`` float64 [n, S] holds each source's own score
    (NaN where the source did not propose the item); ``normalised`` float64 [n, S] the same
    rescaled to [0, 1] per source (0 where absent).
    """

    item_ids: list[int]
    category_ids: list[int | None]
    sources: list[str]
    raw: np.ndarray
    normalised: np.ndarray


def merge(candidates: Sequence[Candidate], sources: Sequence[str]) -> MergedCandidates:
    """Group candidates by item (the first non-null category wins)."""
    column = {name: j for j, name in enumerate(sources)}
    rows: dict[int, int] = {}
    categories: list[int | None] = []
    cell_rows: list[int] = []
    cell_columns: list[int] = []
    cell_scores: list[float] = []
    for c in candidates:
        row = rows.get(c.item_id)
        if row is None:
            row = rows[c.item_id] = len(categories)
            categories.append(c.category_id)
        elif categories[row] is None:
            categories[row] = c.category_id
        cell_rows.append(row)
        cell_columns.append(column[c.source])
        cell_scores.append(c.score)
    raw = np.full((len(rows), len(sources)), np.nan)
    # fmax ignores the NaN of an empty cell and keeps a source's best score for a repeated item
    np.fmax.at(raw, (cell_rows, cell_columns), cell_scores)
    return MergedCandidates(list(rows), categories, list(sources), raw, _normalise(raw))


def _normalise(raw: np.ndarray) -> np.ndarray:
    present = ~np.isnan(raw)
    shifted = raw - np.minimum(np.nanmin(np.where(present, raw, np.inf), axis=0), 0.0)
    top = np.nanmax(np.where(present, shifted, -np.inf), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(top > 0, shifted / top, 1.0)
    return np.where(present, scaled, 0.0)


class Scorer(Protocol):
    def __call__(self, profile: UserProfile | None, merged: MergedCandidates) -> np.ndarray:
        """One score per merged candidate, float64 [n]; higher ranks first."""
        ...


def _default_weights() -> dict[str, float]:
    return {"repeat": 1.0, "category": 0.6, "ann": 0.8, "popular": 0.1}


@dataclass(frozen=True)
class LinearBlend:
    """sum_s weight_s * normalised score (see the module docstring); unknown sources weigh 0."""

    weights: Mapping[str, float] = field(default_factory=_default_weights)

    def __call__(self, profile: UserProfile | None, merged: MergedCandidates) -> np.ndarray:
        w = np.array([self.weights.get(name, 0.0) for name in merged.sources])
        return merged.normalised @ w


@dataclass(frozen=True)
class MigrationNote:
    """The user's interest moved from one category to another (``origin``: online | warehouse)."""

    from_category_id: int
    to_category_id: int
    origin: str
    detected_at: datetime | None = None


def current_migration(
    profile: UserProfile, catalogue: Catalogue, window: timedelta
) -> MigrationNote | None:
    """The online shift when the short-horizon top category differs from the long one, else the
    newest warehouse migration detected within ``window`` before the profile's time."""
    if profile.get("top_category_changed", False):
        return MigrationNote(
            int(profile.get("top_category_long")), int(profile.get("top_category_short")), "online"
        )
    if profile.as_of is None:
        return None
    recent = catalogue.recent_migrations(profile.user_id, profile.as_of - window)
    if not recent:
        return None
    m = recent[0]
    return MigrationNote(m.from_category_id, m.to_category_id, "warehouse", m.detected_at)


@dataclass(frozen=True)
class Recommender:
    """Asks every source, merges, scores, filters and explains."""

    sources: Sequence[CandidateSource]
    scorer: Scorer
    catalogue: Catalogue
    migration_window: timedelta

    def recommend(
        self, user_id: int, profile: UserProfile | None, *, k: int, exclude_purchased: bool
    ) -> dict[str, Any]:
        """The response body of GET /v1/users/{user_id}/recommendations (plain JSON types)."""
        excluded = profile.purchased if (profile is not None and exclude_purchased) else set()
        pool = k + len(excluded)
        found = [c for s in self.sources for c in s.candidates(user_id, profile, pool)]
        found = [c for c in found if c.item_id not in excluded]
        migration = (
            None
            if profile is None
            else (current_migration(profile, self.catalogue, self.migration_window))
        )
        items: list[dict[str, Any]] = []
        if found:
            merged = merge(found, [s.name for s in self.sources])
            scores = np.asarray(self.scorer(profile, merged), dtype=np.float64)
            order = np.lexsort((np.asarray(merged.item_ids), -scores))[:k]
            # per item: its sources, best normalised score first (ties keep the source order)
            ranked = np.argsort(-merged.normalised[order], axis=1, kind="stable").tolist()
            present = (~np.isnan(merged.raw[order])).tolist()
            reasons: dict[tuple[str, int | None], str] = {}
            for row, score, columns, proposed in zip(
                order.tolist(), scores[order].tolist(), ranked, present, strict=True
            ):
                names = [merged.sources[j] for j in columns if proposed[j]]
                category = merged.category_ids[row]
                key = (names[0], category)
                if key not in reasons:
                    reasons[key] = explain(names[0], category, migration, cold=profile is None)
                items.append(
                    {
                        "item_id": merged.item_ids[row],
                        "score": score,
                        "category_id": category,
                        "source": names[0],
                        "sources": names,
                        "reason": reasons[key],
                    }
                )
        return {
            "user_id": user_id,
            "cold_start": profile is None,
            "features_as_of": None
            if profile is None or profile.as_of is None
            else profile.as_of.isoformat(),
            "migration": None
            if migration is None
            else {
                "from_category_id": migration.from_category_id,
                "to_category_id": migration.to_category_id,
                "origin": migration.origin,
            },
            "items": items,
        }


def explain(
    source: str, category: int | None, migration: MigrationNote | None, *, cold: bool
) -> str:
    """A short reason: "trending now" for cold start; a migration for items of the category the
    user moved to; otherwise the source (and category) in plain words."""
    if cold:
        return COLD_START_REASON
    reason_source = _REASON_SOURCE.get(source, "ann")
    if migration is not None and category == migration.to_category_id:
        return reason_for(
            reason_source,
            from_category=migration.from_category_id,
            to_category=migration.to_category_id,
        )
    if source in ("category", "ann") and category is not None:
        return reason_for(reason_source, category=category)
    return reason_for(reason_source)
