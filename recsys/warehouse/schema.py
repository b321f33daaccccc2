"""The canonical behaviour-event schema that every loader produces.

| column        | type      | notes                                        |
|---------------|-----------|----------------------------------------------|
| user_id       | BIGINT    | required                                     |
| item_id       | BIGINT    | required                                     |
| category_id   | BIGINT    | required; -1 when the source has none        |
| behavior      | VARCHAR   | one of view, cart, fav, buy                  |
| event_time    | TIMESTAMP | UTC, microseconds                            |
| session_id    | VARCHAR   | optional; derived from 30-minute gaps if null |
"""

from __future__ import annotations

BEHAVIORS: tuple[str, ...] = ("view", "cart", "fav", "buy")

# Source spellings accepted for each canonical behaviour (case-insensitive).
BEHAVIOR_ALIASES: dict[str, str] = {
    "view": "view",
    "pv": "view",
    "click": "view",
    "cart": "cart",
    "addtocart": "cart",
    "add_to_cart": "cart",
    "fav": "fav",
    "favorite": "fav",
    "favourite": "fav",
    "buy": "buy",
    "purchase": "buy",
    "transaction": "buy",
    "order": "buy",
}

EVENT_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "category_id",
    "behavior",
    "event_time",
    "session_id",
)
REQUIRED_COLUMNS: tuple[str, ...] = EVENT_COLUMNS[:-1]

UNKNOWN_CATEGORY = -1

# Where a recommended item came from: the candidate sources of ``recsys.ranking.sources``, in
# the order they are listed to people. The API and the ``recommendations`` table share it.
SOURCES: tuple[str, ...] = ("repeat", "transition", "category", "next_category", "ann", "popular")
