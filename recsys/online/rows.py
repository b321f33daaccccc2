"""The one Python mirror of the SQL marts' user features (sql/models/marts/*.sql), in microseconds.

Definitions match the marts exactly: a row "as of A" uses events strictly before A. Interest is
a decayed sum per (user, category) and half-life h, s(T) = sum w * 2^(-(T - t)/h), anchored at a
reference time; it is order-independent, so an event older than the anchor adds
w * 2^(-(ref - t)/h) to the sum (``add_decayed``) and out-of-order events are applied exactly.
The row functions take a user's decayed categories, counts and recent events and return the
pushed rows of ``user_interest``, ``user_interest_shift``, ``user_behavior_funnel`` and
``user_recent_sequence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from recsys.warehouse.schema import BEHAVIORS

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True)
class Category:
    """One category of a user: interest decayed to the row's as_of, and first event time."""

    category_id: int
    short: float
    long: float
    first_us: int


def decay(value: float, dt_us: float, half_life_us: float) -> float:
    """A decayed sum carried ``dt_us`` later: value * 2^(-dt/h)."""
    return value * 2.0 ** (-dt_us / half_life_us)


def add_decayed(
    row: tuple[float, float, int], weight: float, event_us: int, short_h: float, long_h: float
) -> tuple[float, float, int]:
    """Add weight w at ``event_us`` to sums anchored at ``ref_us``; returns the new anchor."""
    short, long, ref_us = row
    if event_us >= ref_us:
        dt = event_us - ref_us
        return decay(short, dt, short_h) + weight, decay(long, dt, long_h) + weight, event_us
    dt = ref_us - event_us
    return short + decay(weight, dt, short_h), long + decay(weight, dt, long_h), ref_us


def interest_row(categories: list[Category], top_n: int) -> dict[str, Any]:
    """Top-N category ids and scores per horizon (ties: smallest category id first)."""
    row: dict[str, Any] = {}
    for horizon in ("short", "long"):
        ranked = sorted(categories, key=lambda c: (-getattr(c, horizon), c.category_id))[:top_n]
        row[f"top_categories_{horizon}"] = [c.category_id for c in ranked]
        row[f"top_scores_{horizon}"] = [getattr(c, horizon) for c in ranked]
        row[f"interest_total_{horizon}"] = math.fsum(getattr(c, horizon) for c in categories)
    return row


def shift_row(categories: list[Category], as_of_us: int, window_us: int) -> dict[str, Any]:
    """JS divergence, top categories, novel share and entropies (bits), as the shift mart."""
    total_short = sum(c.short for c in categories)
    total_long = sum(c.long for c in categories)
    p = [c.short / total_short if total_short else 0.0 for c in categories]
    q = [c.long / total_long if total_long else 0.0 for c in categories]
    js = 0.0
    for ps, ql in zip(p, q, strict=True):
        mid = (ps + ql) / 2
        js += 0.5 * (ps * math.log2(ps / mid) if ps > 0 else 0.0)
        js += 0.5 * (ql * math.log2(ql / mid) if ql > 0 else 0.0)
    top_short = min(categories, key=lambda c: (-c.short, c.category_id)).category_id
    top_long = min(categories, key=lambda c: (-c.long, c.category_id)).category_id
    return {
        "js_divergence": max(js, 0.0),
        "top_category_short": top_short,
        "top_category_long": top_long,
        "top_category_changed": top_short != top_long,
        "novel_category_share": sum(
            share
            for share, c in zip(p, categories, strict=True)
            if c.first_us >= as_of_us - window_us
        ),
        "entropy_short": max(-sum(x * math.log2(x) for x in p if x > 0), 0.0),
        "entropy_long": max(-sum(x * math.log2(x) for x in q if x > 0), 0.0),
    }


def funnel_row(counts: tuple[int, ...], last: dict[str, int], as_of_us: int) -> dict[str, Any]:
    """Counts, distinct-item rates (None without a base) and hours since each behaviour."""
    n_view, n_cart, n_fav, n_buy, viewed, carted, v_cart, v_fav, v_buy, c_buy = counts

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    def hours(behavior: str) -> float | None:
        return (as_of_us - last[behavior]) / US_PER_HOUR if behavior in last else None

    return {
        "n_view": n_view,
        "n_cart": n_cart,
        "n_fav": n_fav,
        "n_buy": n_buy,
        "cart_rate": ratio(v_cart, viewed),
        "fav_rate": ratio(v_fav, viewed),
        "buy_rate": ratio(v_buy, viewed),
        "cart_to_buy_rate": ratio(c_buy, carted),
        **{f"hours_since_last_{b}": hours(b) for b in BEHAVIORS},
        "hours_since_last_event": (as_of_us - max(last.values())) / US_PER_HOUR,
    }


def sequence_row(recent: list[tuple[int, int, str, int]], as_of_us: int) -> dict[str, Any]:
    """The recent-sequence arrays, most recent first; gaps in seconds before ``as_of_us``."""
    return {
        "seq_item_ids": [r[0] for r in recent],
        "seq_category_ids": [r[1] for r in recent],
        "seq_behaviors": [r[2] for r in recent],
        "seq_gap_seconds": [(as_of_us - r[3]) / US_PER_SECOND for r in recent],
        "seq_len": len(recent),
    }
