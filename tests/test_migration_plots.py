"""The interest-migration plot: drawn from the marts and exports, skipped when nothing moved."""

from __future__ import annotations

import polars as pl
from feature_helpers import simulated_home

from recsys.evaluation.migration_plots import PLOT_FILE, _user_shares, plot_migrations
from recsys.home import resolve_home
from recsys.warehouse.writeback import open_for_read


def test_plot_is_written_for_a_home_with_migrations(tmp_path):
    paths = resolve_home(tmp_path)
    simulated_home(paths, users=300, items=2_000, days=10)
    with open_for_read(paths) as con:
        detected = con.execute("select count(*) from interest_migrations").fetchone()[0]
    assert detected > 0
    target = plot_migrations(paths)
    assert target == paths.plots / PLOT_FILE
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_plot_without_exports(tmp_path):
    assert plot_migrations(resolve_home(tmp_path)) is None


def test_user_shares_sum_to_one_per_snapshot():
    interest = pl.DataFrame(
        {
            "user_id": [1, 1, 2],
            "event_timestamp": [1, 2, 1],
            "top_categories_short": [[10, 20], [20], [30]],
            "top_scores_short": [[3.0, 1.0], [2.0], [5.0]],
        }
    )
    shares = _user_shares(interest, 1)
    assert shares.select("event_timestamp", "category_id", "share").rows() == [
        (1, 10, 0.75),
        (1, 20, 0.25),
        (2, 20, 1.0),
    ]
