"""Candidate sources: each proposes up to k items for a user, with a source-specific score.

- ``RepeatSource`` ("repeat"): items of the user's recent sequence, scored by
  sum(w_behavior * 2^(-gap / short half-life)) over their occurrences.
- ``CategoryInterestSource`` ("category"): the most popular items of the categories the user
  cares about now; a category's weight is 0.5 * its short-horizon interest share + 0.5 * its
  share of the current session (the latest events without a gap longer than the session gap).
  The session term is what puts a category the user has just started browsing into the list
  within the same call, before it has built up any long-run interest.
- ``PopularSource`` ("popular"): items by decayed popularity (``item_stats.pop_short``), for
  filling and for never-seen users.
- ``AnnSource`` ("ann"): nearest items to a query embedding (a trained query tower, or the
  mean of the recent items' embeddings) in a top-k index.

Sources never filter (the merger does), and return [] when they have nothing for the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from recsys.config import FeatureConfig
from recsys.serving.catalogue import Catalogue
from recsys.serving.profile import UserProfile


class TopKIndex(Protocol):
    """Inner-product top-k: ``search(query [d], k)`` -> (item ids int64 [k'], scores [k']),
    best first (``recsys.models.saved.IndexSearch`` over ``recsys.models.index``)."""

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class Candidate(NamedTuple):
    """One proposed item; ``score`` is on the source's own scale (higher is better). A tuple:
    a request makes a few hundred, and a tuple is built in half a dataclass's time."""

    item_id: int
    score: float
    source: str
    category_id: int | None


class CandidateSource(Protocol):
    name: str

    def candidates(self, user_id: int, profile: UserProfile | None, k: int) -> list[Candidate]:
        """Up to k candidates, best first; ``profile`` is None for a user never seen."""
        ...


def _best(scores: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:k]


@dataclass(frozen=True)
class RepeatSource:
    config: FeatureConfig
    name: str = "repeat"

    def candidates(self, user_id: int, profile: UserProfile | None, k: int) -> list[Candidate]:
        if profile is None:
            return []
        half_life_s = self.config.short_half_life_hours * 3600.0
        scores: dict[int, float] = {}
        categories: dict[int, int] = {}
        for item, category, behavior, gap in profile.sequence:
            weight = self.config.behavior_weights[behavior] * 2.0 ** (-gap / half_life_s)
            scores[item] = scores.get(item, 0.0) + weight
            categories[item] = category
        return [
            Candidate(item, score, self.name, categories[item]) for item, score in _best(scores, k)
        ]


def session_category_shares(profile: UserProfile, config: FeatureConfig) -> dict[int, float]:
    """Behaviour-weighted category shares of the user's latest session (the most recent events
    with no gap between consecutive ones above ``config.session_gap_minutes``)."""
    gap_limit_s = config.session_gap_minutes * 60.0
    weights: dict[int, float] = {}
    previous_gap: float | None = None
    for _, category, behavior, gap in profile.sequence:
        if previous_gap is not None and gap - previous_gap > gap_limit_s:
            break
        weights[category] = weights.get(category, 0.0) + config.behavior_weights[behavior]
        previous_gap = gap
    total = sum(weights.values())
    return {category: w / total for category, w in weights.items()} if total else {}


def category_weights(profile: UserProfile, config: FeatureConfig) -> dict[int, float]:
    """0.5 * short-horizon interest share + 0.5 * current-session share, per category."""
    interests = profile.short_interests
    total = sum(score for _, score in interests)
    weights = {c: 0.5 * score / total for c, score in interests} if total else {}
    for category, share in session_category_shares(profile, config).items():
        weights[category] = weights.get(category, 0.0) + 0.5 * share
    return weights


@dataclass(frozen=True)
class CategoryInterestSource:
    catalogue: Catalogue
    config: FeatureConfig
    n_categories: int = 3
    name: str = "category"

    def candidates(self, user_id: int, profile: UserProfile | None, k: int) -> list[Candidate]:
        if profile is None:
            return []
        weights = category_weights(profile, self.config)
        scored: list[tuple[float, int, int]] = []
        for category, weight in _best(weights, self.n_categories):
            items = self.catalogue.top_in_category(category, k)
            if items:
                top = items[0][2] or 1.0
                scored.extend(
                    (-weight * max(pop, 0.0) / top, item, category) for item, _, pop in items
                )
        scored.sort()  # best score first, then the smaller item id
        return [
            Candidate(item, -score, self.name, category) for score, item, category in scored[:k]
        ]


@dataclass(frozen=True)
class PopularSource:
    catalogue: Catalogue
    name: str = "popular"

    def candidates(self, user_id: int, profile: UserProfile | None, k: int) -> list[Candidate]:
        return [
            Candidate(item, pop, self.name, category)
            for item, category, pop in self.catalogue.top_items(k)
        ]


# A query embedding float32 [d] for a profile, or None when the user has none.
QueryFunction = Callable[[UserProfile], np.ndarray | None]


@dataclass(frozen=True)
class AnnSource:
    """``query(profile)`` -> embedding [d] (or None); ``index.search(embedding, k)``."""

    query: QueryFunction
    index: TopKIndex
    catalogue: Catalogue
    name: str = "ann"

    def candidates(self, user_id: int, profile: UserProfile | None, k: int) -> list[Candidate]:
        if profile is None:
            return []
        embedding = self.query(profile)
        if embedding is None:
            return []
        # k grows with the user's purchases (the caller's pool); a power of two keeps the values
        # an index sees few, as some build a search structure per k (the TFRS ScaNN layer).
        item_ids, scores = self.index.search(embedding, 1 << (k - 1).bit_length())
        item_ids = item_ids[:k]
        return [
            Candidate(item, score, self.name, category)
            for item, score, category in zip(
                item_ids.tolist(),
                scores[:k].tolist(),
                self.catalogue.categories_of(item_ids),
                strict=True,
            )
        ]
