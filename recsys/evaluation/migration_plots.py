"""Interest migration as a picture: ``DIR/plots/interest_migrations.png``.

Left: migrations detected per day (``interest_migrations``). Right: one migrating user's
short-horizon category shares at each daily snapshot (``features/user_interest.parquet``), with
the detection marked, so the move from one category to another is visible at a glance.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.home import Paths
from recsys.warehouse.writeback import open_for_read

PLOT_FILE = "interest_migrations.png"
SHOWN_CATEGORIES = 5


def _example_user(migrations: pl.DataFrame, interest: pl.DataFrame) -> int | None:
    """The detected migration with the most snapshots around it (the clearest picture)."""
    if migrations.is_empty():
        return None
    counts = interest.group_by("user_id").len()
    strongest = migrations.join(counts, on="user_id").sort(
        ["len", "strength", "user_id"], descending=[True, True, False]
    )
    return int(strongest["user_id"][0]) if strongest.height else None


def _user_shares(interest: pl.DataFrame, user_id: int) -> pl.DataFrame:
    """(event_timestamp, category_id, share) of one user's short-horizon top categories."""
    rows = (
        interest.filter(pl.col("user_id") == user_id)
        .select("event_timestamp", "top_categories_short", "top_scores_short")
        .explode("top_categories_short", "top_scores_short")
        .rename({"top_categories_short": "category_id", "top_scores_short": "score"})
    )
    return rows.with_columns(
        share=pl.col("score") / pl.col("score").sum().over("event_timestamp")
    ).sort("event_timestamp")


def plot_migrations(paths: Paths) -> Path | None:
    """Write the plot; None when the home has no migrations or exports to draw."""
    exports = paths.features / "user_interest.parquet"
    if not exports.exists():
        return None
    with open_for_read(paths) as con:
        migrations = con.sql(
            "select user_id, from_category_id, to_category_id, detected_at, strength "
            "from interest_migrations"
        ).pl()
    if migrations.is_empty():
        return None
    interest = pl.read_parquet(exports)
    user = _example_user(migrations, interest)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (per_day, example) = plt.subplots(1, 2, figsize=(12, 4))
    daily = migrations.group_by(pl.col("detected_at").dt.date().alias("day")).len().sort("day")
    per_day.bar(daily["day"].to_list(), daily["len"].to_list(), color="tab:purple")
    per_day.set_title(f"interest migrations detected per day ({migrations.height:,} in all)")
    per_day.tick_params(axis="x", rotation=45)

    shares = _user_shares(interest, user)
    move = migrations.filter(pl.col("user_id") == user).sort("detected_at").row(0, named=True)
    top = (
        shares.group_by("category_id")
        .agg(pl.col("share").max())
        .sort("share", descending=True)
        .head(SHOWN_CATEGORIES)["category_id"]
    )
    for category in top:
        line = shares.filter(pl.col("category_id") == category)
        example.plot(line["event_timestamp"], line["share"], marker="o", label=f"cat {category}")
    example.axvline(move["detected_at"], color="black", linestyle="--", label="detected")
    example.set_title(
        f"user {user}: category {move['from_category_id']} → {move['to_category_id']}"
    )
    example.set_ylabel("share of short-horizon interest")
    example.legend(fontsize="small")
    example.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    paths.plots.mkdir(parents=True, exist_ok=True)
    target = paths.plots / PLOT_FILE
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
