"""User profiles as one polars frame: the only user-side input of every ranking step.

One row per user: ``user_id``, ``as_of`` (the time the row describes: the snapshot a batch row
was computed at, or the newest online row of a user) and the flat ``<view>__<feature>`` columns
of the ``user_profile_v1`` feature service. Decayed scores and sequence gaps are as of ``as_of``.

Batch scoring and evaluation read the rows from the Feast exports (``profiles_at``), the service
from the online store (``profiles_from_features``); after ``materialize`` both are the same rows,
so both rank the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from recsys.home import Paths

PROFILE_SERVICE = "user_profile_v1"

SEQ_ITEMS = "user_recent_sequence__seq_item_ids"
SEQ_CATEGORIES = "user_recent_sequence__seq_category_ids"
SEQ_BEHAVIORS = "user_recent_sequence__seq_behaviors"
SEQ_GAPS = "user_recent_sequence__seq_gap_seconds"
SHORT_CATEGORIES = "user_interest_short__top_categories_short"
SHORT_SCORES = "user_interest_short__top_scores_short"
SHORT_TOTAL = "user_interest_short__interest_total_short"
LONG_CATEGORIES = "user_interest_long__top_categories_long"
LONG_SCORES = "user_interest_long__top_scores_long"
LONG_TOTAL = "user_interest_long__interest_total_long"

# The columns ranking reads, with the types it reads them as; a profile may carry more (the
# query tower reads the rest of the service).
SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Int64(),
    "as_of": pl.Datetime("us"),
    SEQ_ITEMS: pl.List(pl.Int64),
    SEQ_CATEGORIES: pl.List(pl.Int64),
    SEQ_BEHAVIORS: pl.List(pl.String),
    SEQ_GAPS: pl.List(pl.Float64),
    SHORT_CATEGORIES: pl.List(pl.Int64),
    SHORT_SCORES: pl.List(pl.Float64),
    SHORT_TOTAL: pl.Float64(),
    LONG_CATEGORIES: pl.List(pl.Int64),
    LONG_SCORES: pl.List(pl.Float64),
    LONG_TOTAL: pl.Float64(),
}
_LISTS = [name for name, dtype in SCHEMA.items() if isinstance(dtype, pl.List)]


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the ranking columns in their types: a missing list is empty, a missing
    total 0; other columns are kept as they are."""
    missing = [
        pl.lit(None, dtype).alias(name) for name, dtype in SCHEMA.items() if name not in frame
    ]
    frame = frame.with_columns(missing) if missing else frame
    return frame.with_columns(
        [pl.col(name).cast(dtype) for name, dtype in SCHEMA.items()]
    ).with_columns(
        *[pl.col(name).fill_null(pl.lit(pl.Series([[]], dtype=SCHEMA[name]))) for name in _LISTS],
        pl.col(SHORT_TOTAL).fill_null(0.0),
        pl.col(LONG_TOTAL).fill_null(0.0),
    )


def profiles_from_features(rows: Sequence[tuple[int, datetime, Mapping[str, Any]]]) -> pl.DataFrame:
    """Profiles from (user_id, as_of, flat ``<view>__<feature>`` dict) rows: the online path."""
    names = sorted({name for _, _, features in rows for name in features})
    data: dict[str, list[Any]] = {
        "user_id": [user for user, _, _ in rows],
        "as_of": [as_of for _, as_of, _ in rows],
    }
    for name in names:
        data[name] = [features.get(name) for _, _, features in rows]
    schema = {name: SCHEMA[name] for name in data if name in SCHEMA}
    return conform(pl.DataFrame(data, schema_overrides=schema, strict=False))


def profiles_at(
    paths: Paths, user_ids: np.ndarray, as_of: datetime, *, store: Any = None
) -> pl.DataFrame:
    """Point-in-time profiles: for each user, the export rows stamped at or before ``as_of``
    (computed from events strictly before it), through Feast's offline store. ``as_of`` should
    be a snapshot time of the exports (the rows then describe exactly that time). Users without
    a row are left out."""
    from recsys.features.read import historical_frame

    entities = pl.DataFrame({"user_id": np.asarray(user_ids, np.int64)}).with_columns(
        event_timestamp=pl.lit(as_of).cast(pl.Datetime("us"))
    )
    rows = historical_frame(paths, entities, PROFILE_SERVICE, store=store)
    return conform(
        rows.filter(pl.col("user_recent_sequence__seq_len").is_not_null())
        .drop("event_timestamp")
        .with_columns(as_of=pl.lit(as_of))
        .sort("user_id")
    )
