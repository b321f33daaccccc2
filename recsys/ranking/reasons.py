"""Short, human reasons for a recommendation, from its first source and category."""

from __future__ import annotations

from recsys.ranking.frames import RankingError
from recsys.warehouse.schema import SOURCES

COLD_START_REASON = "trending now"
_PLAIN = {
    "repeat": "you showed interest in this item before",
    "transition": "often viewed next after items you just looked at",
    "category": "popular in one of your current interests",
    "next_category": "where shoppers with your interests go next",
    "ann": "similar to items you engaged with",
    "popular": "popular right now",
}
_WITH_CATEGORY = {
    "repeat": "you keep coming back to {}",
    "transition": "often viewed next after items you just looked at in {}",
    "category": "popular in {}, one of your current interests",
    "next_category": "shoppers with your interests move on to {}",
    "ann": "similar to what you like in {}",
    "popular": "popular in {} right now",
}


def category_label(category: int | str) -> str:
    """``category 123`` for an id, the name itself for a named category."""
    if isinstance(category, str):
        if not category.strip():
            raise RankingError("a category name must not be empty")
        return category.strip()
    return f"category {category}"


def reason_for(
    source: str,
    *,
    category: int | str | None = None,
    moved_from: int | str | None = None,
) -> str:
    """The reason for an item of ``category`` proposed first by ``source``; ``moved_from`` (the
    category the user's interest left for ``category``) makes the move the reason."""
    if source not in SOURCES:
        raise RankingError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if moved_from is not None:
        if category is None:
            raise RankingError("a move needs the category it went to")
        target = category_label(category)
        if not isinstance(category, str) and not isinstance(moved_from, str):
            target = str(category)  # "from category 1 to 2", not "to category 2"
        return f"you moved from {category_label(moved_from)} to {target} this week"
    if category is None:
        return _PLAIN[source]
    return _WITH_CATEGORY[source].format(category_label(category))
