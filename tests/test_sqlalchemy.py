"""The README's analyst queries, run through SQLAlchemy + duckdb-engine on a written-back run.

The marts are minimal hand-made tables with the contract's names and columns, so every expected
answer below is counted by hand from the fixture.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

import recsys.warehouse.writeback as wb
from recsys.home import Paths, resolve_home
from recsys.ranking.reasons import reason_for

AS_OF = datetime(2026, 1, 15)

# Kept word for word in the README's "Querying recommendations" section.
TOP_CATEGORIES_BY_SEGMENT = """
select
    case when shift.top_category_changed then 'shifted' else 'stable' end as segment,
    recs.category_id,
    count(*) as n_recommendations,
    count(distinct recs.user_id) as n_users
from latest_recommendations as recs
join user_interest_shift as shift using (user_id)
group by segment, recs.category_id
qualify row_number() over (
    partition by segment order by n_recommendations desc, recs.category_id
) <= 5
order by segment, n_recommendations desc, recs.category_id
"""

MIGRATED_USERS_AND_THEIR_RECOMMENDATIONS = """
with latest_run as (
    select features_as_of from recommendation_runs
    where status = 'complete' order by run_id desc limit 1
)
select
    migrations.user_id,
    migrations.from_category_id,
    migrations.to_category_id,
    recs.rank,
    recs.item_id,
    recs.category_id,
    recs.category_id = migrations.to_category_id as serves_new_interest,
    recs.source,
    recs.reason
from interest_migrations as migrations
join latest_recommendations as recs using (user_id)
where migrations.detected_at >= (select features_as_of from latest_run) - interval 7 days
order by migrations.user_id, migrations.detected_at, recs.rank
"""

COVERAGE = """
select
    count(distinct item_id) as recommended_items,
    (select count(*) from item_stats) as catalogue_items,
    count(distinct item_id) / (select count(*) from item_stats) as coverage
from latest_recommendations
"""

RUNS_COMPARED = """
select
    runs.run_id,
    runs.model_version,
    cast(runs.metrics ->> 'recall_at_20' as double) as recall_at_20,
    count(distinct recs.item_id) / (select count(*) from item_stats) as coverage
from recommendation_runs as runs
join recommendations as recs using (run_id)
where runs.status = 'complete'
group by runs.run_id, runs.model_version, runs.metrics
order by runs.run_id
"""

MARTS = """
create table user_interest_shift as
select * from (values
    (1, 0.6, 20, 10, true), (2, 0.4, 40, 30, true), (3, 0.0, 10, 10, false),
    (4, 0.1, 10, 10, false)
) as t(user_id, js_divergence, top_category_short, top_category_long, top_category_changed);
create table interest_migrations as
select * from (values
    (1, 10, 20, timestamp '2026-01-13 09:00', 0.8),
    (2, 30, 40, timestamp '2026-01-05 09:00', 0.7)
) as t(user_id, from_category_id, to_category_id, detected_at, strength);
create table item_stats as
select range + 100 as item_id, 10 as category_id from range(1, 11)
union all select range + 200, 20 from range(1, 3)
union all select range + 300, 30 from range(1, 2)
union all select range + 400, 40 from range(1, 2)
union all select 999, 50;
"""
# item_stats: items 101..110, 201, 202, 301, 401, 999 -> a catalogue of 15 items

# (user_id, rank, item_id, category_id, source); user 1 moved 10 -> 20 this week, user 2 moved
# 30 -> 40 ten days before AS_OF, users 3 and 4 are stable.
LATEST = [
    (1, 1, 201, 20, "ann"),
    (1, 2, 101, 10, "repeat"),
    (2, 1, 401, 40, "ann"),
    (2, 2, 202, 20, "popular"),
    (3, 1, 101, 10, "repeat"),
    (3, 2, 301, 30, "popular"),
    (4, 1, 101, 10, "popular"),
    (4, 2, 102, 10, "ann"),
]


def as_recs(rows: list[tuple]) -> pl.DataFrame:
    reasons = [
        reason_for(source, category=20, moved_from=10)
        if (user, category) == (1, 20)
        else reason_for(source, category=category)
        for user, _, _, category, source in rows
    ]
    frame = pl.DataFrame(
        rows, schema=["user_id", "rank", "item_id", "category_id", "source"], orient="row"
    )
    return frame.with_columns(
        score=1.0 / pl.col("rank"),
        sources=pl.concat_list("source"),
        reason=pl.Series(reasons),
    )


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    paths = resolve_home(tmp_path / "home")
    with wb.open_for_write(paths) as con:
        con.execute(MARTS)
    # an older run recommending 3 items, then the latest run
    older = [(user, 1, 101, 10, "popular") for user in (1, 2, 3)] + [(4, 1, 999, 50, "ann")]
    common = {"features_as_of": AS_OF}
    wb.write_run(paths, as_recs(older), model_version="v1", metrics={"recall_at_20": 0.1}, **common)
    wb.write_run(
        paths, as_recs(LATEST), model_version="v2", metrics={"recall_at_20": 0.3}, **common
    )
    return paths


def run_all(engine) -> dict[str, list[tuple]]:
    queries = {
        "segments": TOP_CATEGORIES_BY_SEGMENT,
        "migrations": MIGRATED_USERS_AND_THEIR_RECOMMENDATIONS,
        "coverage": COVERAGE,
        "runs": RUNS_COMPARED,
    }
    with engine.connect() as conn:
        return {
            name: [tuple(row) for row in conn.execute(text(sql))] for name, sql in queries.items()
        }


EXPECTED = {
    # shifted = users 1, 2: category 20 twice (201, 202), 10 once, 40 once;
    # stable = users 3, 4: category 10 three times (101 twice, 102), 30 once
    "segments": [
        ("shifted", 20, 2, 2),
        ("shifted", 10, 1, 1),
        ("shifted", 40, 1, 1),
        ("stable", 10, 3, 2),
        ("stable", 30, 1, 1),
    ],
    # only user 1 migrated within 7 days of AS_OF
    "migrations": [
        (1, 10, 20, 1, 201, 20, True, "ann", "you moved from category 10 to 20 this week"),
        (1, 10, 20, 2, 101, 10, False, "repeat", "you keep coming back to category 10"),
    ],
    # latest run: items 101, 102, 201, 202, 301, 401 out of 15
    "coverage": [(6, 15, 6 / 15)],
    # run 1: items 101, 999 out of 15
    "runs": [(1, "v1", 0.1, 2 / 15), (2, "v2", 0.3, 6 / 15)],
}


@pytest.mark.parametrize(
    "make_engine",
    [
        pytest.param(lambda p: create_engine(f"duckdb:///{p.warehouse}"), id="read-write"),
        pytest.param(
            lambda p: create_engine(
                f"duckdb:///{p.warehouse}", connect_args={"read_only": True}, poolclass=NullPool
            ),
            id="read-only",
        ),
        pytest.param(wb.read_engine, id="read_engine"),
    ],
)
def test_readme_queries_through_sqlalchemy(paths: Paths, make_engine) -> None:
    engine = make_engine(paths)
    try:
        assert run_all(engine) == EXPECTED
    finally:
        engine.dispose()


def test_read_engine_lets_go_of_the_file_between_uses(paths: Paths) -> None:
    engine = wb.read_engine(paths)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from latest_recommendations")).scalar() == 8
    # DuckDB refuses a read-write open next to a read-only one in the same process, so this
    # write only works if the engine closed its connection.
    report = wb.write_run(
        paths, as_recs(LATEST[:2]), model_version="v3", features_as_of=AS_OF, metrics={}
    )
    with engine.connect() as conn:
        assert conn.execute(text("select max(run_id) from latest_recommendations")).scalar() == 3
    assert report.run.run_id == 3
