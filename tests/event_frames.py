"""Hand-written canonical event frames for the evaluation tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

T = datetime(2026, 1, 10)


def frame(rows, *, hours_before_t: bool = False) -> pl.DataFrame:
    """rows: (user, item, category, behavior, hours) with hours after T, or before T when
    ``hours_before_t``."""
    sign = -1 if hours_before_t else 1
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "category_id": [r[2] for r in rows],
            "behavior": [r[3] for r in rows],
            "event_time": [T + timedelta(hours=sign * r[4]) for r in rows],
        }
    )
