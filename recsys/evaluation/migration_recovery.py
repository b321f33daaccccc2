"""How well the interest-migration detector recovers planted migrations.

A detection matches a planted migration when it has the same user and destination category and
``migrated_at <= detected_at <= migrated_at + window``. Precision is the share of detections that
match some planted migration; recall is the share of planted migrations matched by some detection.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

DEFAULT_WINDOW = timedelta(days=2)


def migration_recovery(
    detected: pl.DataFrame, planted: pl.DataFrame, *, window: timedelta = DEFAULT_WINDOW
) -> tuple[float, float]:
    """(precision, recall) of detections (user_id, to_category_id, detected_at) against planted
    migrations (user_id, to_category_id, migrated_at); an empty side scores 1.0 (nothing wrong)."""
    pairs = (
        detected.select("user_id", "to_category_id", "detected_at")
        .with_row_index("detection")
        .join(
            planted.select("user_id", "to_category_id", "migrated_at").with_row_index("planted"),
            on=["user_id", "to_category_id"],
        )
        .filter(
            (pl.col("detected_at") >= pl.col("migrated_at"))
            & (pl.col("detected_at") <= pl.col("migrated_at") + window)
        )
    )
    precision = pairs["detection"].n_unique() / detected.height if detected.height else 1.0
    recall = pairs["planted"].n_unique() / planted.height if planted.height else 1.0
    return precision, recall
