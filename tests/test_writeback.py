"""Write-back of recommendation runs: round trips, atomicity, retention, validation, locking."""

from __future__ import annotations

import multiprocessing as mp
import queue
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from sqlalchemy import text

import recsys.warehouse.writeback as wb
from recsys.home import Paths, resolve_home
from recsys.warehouse import connect as warehouse
from recsys.warehouse.build import build
from recsys.warehouse.connect import WarehouseBusyError
from recsys.warehouse.ingest import ingest_file
from recsys.warehouse.schema import SOURCES

AS_OF = datetime(2026, 1, 8)
K = 3


def make_recs(users: range, *, item_offset: int = 0) -> pl.DataFrame:
    """K rows per user: item 1000*user + rank + offset, score 2^-rank, category user % 3,
    source SOURCES[rank % 3] (ranks 1, 2, 3: transition, category, repeat); the rank-1 item was
    also proposed by the popular source.

    Scores are powers of two so that a float32 round trip keeps them exact.
    """
    rows = [
        {
            "user_id": user,
            "rank": rank,
            "item_id": 1000 * user + rank + item_offset,
            "score": 2.0**-rank,
            "category_id": user % 3,
            "source": SOURCES[rank % 3],
            "sources": [SOURCES[rank % 3], *(["popular"] if rank == 1 else [])],
            "reason": f"reason {user}/{rank}",
        }
        for user in users
        for rank in range(1, K + 1)
    ]
    return pl.DataFrame(rows, schema=wb.INPUT_COLUMNS)


def write(paths: Paths, recs, **kwargs) -> wb.RunReport:
    settings = {"model_version": "v1", "features_as_of": AS_OF, "metrics": {"recall_at_20": 0.5}}
    return wb.write_run(paths, recs, **(settings | kwargs))


def query(paths: Paths, sql: str) -> list[tuple]:
    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def stored(paths: Paths, table: str = "recommendations") -> list[tuple]:
    return query(
        paths,
        f"select run_id, user_id, rank, item_id, score, category_id, source, sources, reason "
        f"from {table} order by all",
    )


def expected_rows(run_id: int, recs: pl.DataFrame) -> list[tuple]:
    return sorted((run_id, *row) for row in recs.iter_rows())


def spool_leftovers(paths: Paths) -> list[Path]:
    return list(paths.home.glob(".writeback-*"))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return resolve_home(tmp_path / "home")


@pytest.fixture
def first_run(paths: Paths) -> pl.DataFrame:
    """A warehouse holding run 1; returns its recommendations."""
    recs = make_recs(range(1, 5))
    write(paths, recs)
    return recs


def test_round_trip_of_one_run(paths: Paths) -> None:
    recs = make_recs(range(1, 5))
    report = write(
        paths, recs, features_as_of=datetime(2026, 1, 8, 1, tzinfo=timezone(timedelta(hours=1)))
    )

    run = report.run
    assert (run.run_id, run.n_users, run.n_rows) == (1, 4, 12)
    # ranks 1, 2, 3 get sources transition, category, repeat for each of the 4 users; counts
    # are by first source only, so the popular in the rank-1 items' sources does not count
    assert run.counts == {
        "repeat": 4,
        "transition": 4,
        "category": 4,
        "next_category": 0,
        "ann": 0,
        "popular": 0,
    }
    assert run.metrics == {"recall_at_20": 0.5}
    assert (run.ranker, run.validation) == ("unknown", {})
    assert run.features_as_of == AS_OF  # 01:00 at UTC+1 is midnight UTC
    assert report.pruned_run_ids == ()
    assert stored(paths) == expected_rows(1, recs)
    assert stored(paths, "latest_recommendations") == expected_rows(1, recs)
    assert query(paths, "select distinct model_version, generated_at from recommendations") == [
        ("v1", run.generated_at)
    ]
    assert query(paths, "select status, metrics->>'recall_at_20' from recommendation_runs") == [
        ("complete", "0.5")
    ]
    assert wb.latest_run(paths) == run
    assert spool_leftovers(paths) == []


def test_batches_of_mixed_kinds_and_types_make_one_run(paths: Paths) -> None:
    recs = make_recs(range(1, 7))
    narrow = recs[6:12].with_columns(
        pl.col("user_id").cast(pl.Int32),
        pl.col("rank").cast(pl.UInt8),
        pl.col("score").cast(pl.Float32),
        pl.col("source").cast(pl.Categorical),
        pl.col("sources").cast(pl.List(pl.Categorical)),
    )
    batches = iter([recs[:6].to_arrow(), narrow, recs[12:].to_arrow().to_batches()[0]])

    report = write(paths, batches)

    assert (report.run.n_users, report.run.n_rows) == (6, 18)
    assert stored(paths) == expected_rows(1, recs)


def test_latest_view_follows_new_runs_and_retention_prunes_old_ones(paths: Paths) -> None:
    runs = [make_recs(range(1, 3 + i), item_offset=100 * i) for i in range(4)]
    pruned = [write(paths, recs, retention=2).pruned_run_ids for recs in runs]

    assert pruned == [(), (), (1,), (2,)]
    assert query(paths, "select run_id from recommendation_runs order by run_id") == [(3,), (4,)]
    assert stored(paths) == expected_rows(3, runs[2]) + expected_rows(4, runs[3])
    assert stored(paths, "latest_recommendations") == expected_rows(4, runs[3])
    assert wb.latest_run(paths).run_id == 4


def test_latest_run_is_none_without_runs(paths: Paths) -> None:
    assert wb.latest_run(paths) is None
    with wb.open_for_write(paths):
        pass  # a warehouse with only the base tables
    assert wb.latest_run(paths) is None


def test_failure_while_batches_are_produced_keeps_previous_run(
    paths: Paths, first_run: pl.DataFrame
) -> None:
    def batches():
        yield make_recs(range(10, 12))
        raise RuntimeError("scoring crashed")

    with pytest.raises(RuntimeError, match="scoring crashed"):
        write(paths, batches(), model_version="v2")

    assert stored(paths) == expected_rows(1, first_run)
    assert stored(paths, "latest_recommendations") == expected_rows(1, first_run)
    assert query(paths, "select run_id, model_version from recommendation_runs") == [(1, "v1")]
    assert spool_leftovers(paths) == []


def test_failure_inside_the_transaction_rolls_back_the_rows(
    paths: Paths, first_run: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    inserted = []

    def fail_after_inserts(con: duckdb.DuckDBPyConnection, keep: int) -> tuple[int, ...]:
        inserted.append(
            con.execute("select count(*) from recommendations where run_id = 2").fetchone()[0]
        )
        raise OSError("disk full")

    monkeypatch.setattr(wb, "prune_runs", fail_after_inserts)
    with pytest.raises(OSError, match="disk full"):
        write(paths, make_recs(range(10, 14)), model_version="v2")

    assert inserted == [4 * K]  # the failure really came after the rows were in
    assert stored(paths) == expected_rows(1, first_run)
    assert stored(paths, "latest_recommendations") == expected_rows(1, first_run)
    assert query(paths, "select run_id from recommendation_runs") == [(1,)]


def test_process_killed_mid_transaction_leaves_previous_run(
    paths: Paths, first_run: pl.DataFrame, tmp_path: Path
) -> None:
    second = make_recs(range(10, 14))
    second.write_parquet(tmp_path / "second.parquet")
    script = textwrap.dedent(
        f"""
        import os
        from datetime import datetime
        import polars as pl
        import recsys.warehouse.writeback as wb
        from recsys.home import resolve_home

        def die(con, keep):
            # exit code 3 only if the new rows were inserted before the crash
            n = con.execute("select count(*) from recommendations where run_id = 2").fetchone()[0]
            os._exit(3 if n == {4 * K} else 4)

        wb.prune_runs = die
        recs = pl.read_parquet({str(tmp_path / "second.parquet")!r})
        wb.write_run(resolve_home({str(paths.home)!r}), recs, model_version="v2",
                     features_as_of=datetime(2026, 1, 9), metrics={{}})
        """
    )
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr

    assert stored(paths) == expected_rows(1, first_run)
    assert stored(paths, "latest_recommendations") == expected_rows(1, first_run)
    assert write(paths, second).run.run_id == 2
    assert stored(paths, "latest_recommendations") == expected_rows(2, second)


BASE = make_recs(range(1, 3))


@pytest.mark.parametrize(
    ("recs", "message"),
    [
        (BASE.drop("reason"), r"missing \['reason'\], unexpected \[\]"),
        (BASE.with_columns(extra=1), r"missing \[\], unexpected \['extra'\]"),
        (BASE.with_columns(pl.col("user_id").cast(pl.String)), "column user_id has type String"),
        (BASE.with_columns(pl.col("score").cast(pl.String)), "column score has type String"),
        (BASE.with_columns(rank=pl.lit(2**40)), "column rank has values that do not fit Int32"),
        (BASE.with_columns(source=pl.lit("bandit")), "6 rows have a source outside 'repeat'"),
        (BASE.with_columns(rank=pl.col("rank") - 1), "2 rows have a rank below 1, e.g. user_id"),
        (BASE.with_columns(rank=pl.lit(1)), "user_id 1 rank 1 appears 3 times"),
        ([BASE, BASE[:1]], "user_id 1 rank 1 appears 2 times"),
        (BASE.with_columns(score=pl.lit(None, pl.Float64)), "6 rows have a null score"),
        (BASE.with_columns(score=pl.lit(float("nan"))), "have a NaN or infinite score"),
        (BASE.with_columns(reason=pl.lit("  ")), "6 rows have an empty reason"),
        (BASE.drop("sources"), r"missing \['sources'\], unexpected \[\]"),
        (
            BASE.with_columns(sources=pl.col("source")),
            r"column sources has type String, expected List\(String\)",
        ),
        (
            BASE.with_columns(sources=pl.lit(None, pl.List(pl.String))),
            "6 rows have a null sources",
        ),
        (
            BASE.with_columns(sources=pl.concat_list(pl.lit("popular"), "source")),
            "6 rows have sources that do not start with source, e.g. user_id 1",
        ),
        (
            BASE.with_columns(sources=pl.lit([], pl.List(pl.String))),
            "6 rows have sources that do not start with source",
        ),
        (
            BASE.with_columns(sources=pl.concat_list("source", pl.lit("bandit"))),
            "6 rows have sources outside 'repeat', 'transition'",
        ),
        (BASE[:0], "the input has no rows"),
        ([], "the input has no rows"),
        ([BASE, {"user_id": [1]}], "batch 1: expected a polars DataFrame or Arrow table, got dict"),
    ],
)
def test_bad_recommendations_are_rejected_before_writing(
    paths: Paths, first_run: pl.DataFrame, recs, message: str
) -> None:
    with pytest.raises(wb.WritebackError, match=message):
        write(paths, recs)

    assert stored(paths) == expected_rows(1, first_run)
    assert query(paths, "select run_id from recommendation_runs") == [(1,)]
    assert spool_leftovers(paths) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retention": 0}, "retention must keep at least 1 run, got 0"),
        ({"model_version": " "}, "model_version must be a non-empty string"),
        ({"metrics": {"ndcg": float("nan")}}, "metrics must be JSON with finite numbers"),
        ({"metrics": [0.1]}, "metrics must be a dict, got list"),
        ({"features_as_of": "2026-01-08"}, "features_as_of must be a datetime, got str"),
    ],
)
def test_bad_run_settings_are_rejected(paths: Paths, settings: dict, message: str) -> None:
    with pytest.raises(wb.WritebackError, match=message):
        write(paths, BASE, **settings)
    assert not paths.warehouse.exists()


def test_numpy_metrics_are_stored_as_plain_numbers(paths: Paths) -> None:
    metrics = {"recall_at_20": np.float32(0.25), "n_users": np.int64(4)}
    assert write(paths, BASE, metrics=metrics).run.metrics == {"recall_at_20": 0.25, "n_users": 4}


def test_prune_runs_keeps_the_newest(paths: Paths) -> None:
    for i in range(3):
        write(paths, make_recs(range(1, 2 + i)), retention=10)
    with wb.open_for_write(paths) as con:
        con.begin()
        assert wb.prune_runs(con, 1) == (1, 2)
        con.commit()
    assert query(paths, "select distinct run_id from recommendations") == [(3,)]
    assert query(paths, "select run_id from recommendation_runs") == [(3,)]


def test_run_records_the_ranker_and_its_validation_figures(paths: Paths) -> None:
    validation = {
        "repeat": {"ndcg_at_20": 0.25, "recall_at_50": 0.5, "n_users": 10},
        "learned": {"ndcg_at_20": np.float64(0.375), "recall_at_50": 0.625, "n_users": 10},
    }
    run = write(paths, BASE, ranker="learned", validation=validation).run
    expected = validation | {"learned": validation["learned"] | {"ndcg_at_20": 0.375}}
    assert (run.ranker, run.validation) == ("learned", expected)
    assert wb.latest_run(paths) == run
    assert query(
        paths,
        "select ranker, validation->'learned'->>'ndcg_at_20', validation->'repeat'->>'n_users' "
        "from recommendation_runs",
    ) == [("learned", "0.375", "10")]


def test_every_source_of_the_vocabulary_is_accepted(paths: Paths) -> None:
    recs = pl.DataFrame(
        [
            {
                "user_id": 1,
                "rank": rank,
                "item_id": rank,
                "score": 1.0 / rank,
                "category_id": 1,
                "source": source,
                "sources": [source, *[s for s in SOURCES if s != source]],
                "reason": "r",
            }
            for rank, source in enumerate(SOURCES, start=1)
        ],
        schema=wb.INPUT_COLUMNS,
    )
    run = write(paths, recs).run
    assert run.counts == dict.fromkeys(SOURCES, 1)
    assert query(paths, "select rank, sources from recommendations where rank = 4") == [
        (4, ["next_category", "repeat", "transition", "category", "ann", "popular"])
    ]


# The layout written before every source was kept (verbatim from the previous release).
OLD_DDL = """
create table recommendation_runs (
    run_id bigint primary key,
    model_version varchar not null,
    features_as_of timestamp not null,
    generated_at timestamp not null,
    status varchar not null,
    n_users bigint not null,
    n_rows bigint not null,
    n_repeat bigint not null,
    n_ann bigint not null,
    n_popular bigint not null,
    metrics json not null
);
create table recommendations (
    run_id bigint not null,
    user_id bigint not null,
    rank integer not null,
    item_id bigint not null,
    score double not null,
    category_id bigint not null,
    source varchar not null check (source in ('repeat', 'ann', 'popular')),
    reason varchar not null,
    model_version varchar not null,
    generated_at timestamp not null
);
create or replace view latest_recommendations as
select * from recommendations
where run_id = (select max(run_id) from recommendation_runs where status = 'complete');
insert into recommendation_runs values
    (1, 'v0', '2026-01-07', '2026-01-07 01:00', 'complete', 2, 3, 1, 1, 1,
     '{"recall_at_20": 0.25}');
insert into recommendations values
    (1, 1, 1, 11, 0.5, 7, 'repeat', 'you keep coming back to category 7', 'v0',
     '2026-01-07 01:00'),
    (1, 1, 2, 12, 0.25, 7, 'ann', 'similar to what you like in category 7', 'v0',
     '2026-01-07 01:00'),
    (1, 2, 1, 13, 0.5, 8, 'popular', 'trending now', 'v0', '2026-01-07 01:00');
"""


def test_tables_of_the_old_layout_are_upgraded_in_place(paths: Paths) -> None:
    with wb.open_for_write(paths) as con:
        con.execute(OLD_DDL)
    old_run = datetime(2026, 1, 7, 1)

    recs = make_recs(range(1, 3))
    report = write(paths, recs, ranker="blend", validation={"blend": {"ndcg_at_20": 0.5}})

    assert report.run.run_id == 2
    # The old rows are still there, each with its one source as its sources.
    assert stored(paths) == [
        (1, 1, 1, 11, 0.5, 7, "repeat", ["repeat"], "you keep coming back to category 7"),
        (1, 1, 2, 12, 0.25, 7, "ann", ["ann"], "similar to what you like in category 7"),
        (1, 2, 1, 13, 0.5, 8, "popular", ["popular"], "trending now"),
        *expected_rows(2, recs),
    ]
    assert query(
        paths, "select distinct model_version, generated_at from recommendations where run_id = 1"
    ) == [("v0", old_run)]
    assert stored(paths, "latest_recommendations") == expected_rows(2, recs)
    columns = ", ".join(f"n_{source}" for source in SOURCES)
    assert query(
        paths,
        f"select run_id, model_version, features_as_of, n_users, n_rows, {columns}, ranker, "
        "validation->'blend'->>'ndcg_at_20', metrics->>'recall_at_20' "
        "from recommendation_runs order by run_id",
    ) == [
        (1, "v0", datetime(2026, 1, 7), 2, 3, 1, 0, 0, 0, 1, 1, "unknown", None, "0.25"),
        (2, "v1", AS_OF, 2, 6, 2, 2, 2, 0, 0, 0, "blend", "0.5", "0.5"),
    ]
    assert query(paths, "select validation from recommendation_runs where run_id = 1") == [("{}",)]
    # The old check constraint on three sources is gone; the current one holds.
    with wb.open_for_write(paths) as con:
        assert con.execute(
            "select count(*) from duckdb_tables() where table_name like '%_old'"
        ).fetchone() == (0,)
        with pytest.raises(duckdb.ConstraintException):
            con.execute(
                "insert into recommendations values (9, 1, 1, 1, 1.0, 1, 'bandit', ['bandit'], "
                "'r', 'v', now())"
            )
    # The old run is pruned like any other.
    assert write(paths, recs, retention=1).pruned_run_ids == (1, 2)


# --- locking across processes ---------------------------------------------------------------


def hold_read_only(home: str, held, release) -> None:
    """Keep the warehouse open read-only, as an analyst's notebook would, until released."""
    con = duckdb.connect(str(resolve_home(home).warehouse), read_only=True)
    held.set()
    release.wait(60)
    con.close()


@pytest.fixture
def analyst(paths: Paths, first_run: pl.DataFrame):
    """A second process that holds the warehouse open read-only until its release is set."""
    ctx = mp.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    process = ctx.Process(target=hold_read_only, args=(str(paths.home), held, release))
    process.start()
    assert held.wait(60), "the analyst process never opened the warehouse"
    yield process, release
    release.set()
    process.join(60)


def test_writer_gives_up_with_the_holder_named(paths: Paths, analyst) -> None:
    process, _ = analyst
    busy = pytest.raises(WarehouseBusyError, match=rf"stayed locked by .*PID {process.pid}\)")
    with busy, wb.open_for_write(paths, lock_timeout_s=0.2):
        pass


def test_ingest_and_build_wait_for_the_lock_then_name_the_holder(
    paths: Paths, analyst, tmp_path: Path
) -> None:
    process, release = analyst
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,category_id,behavior,event_time\n1,2,3,view,1700000000\n")
    holder = rf"stayed locked by .*PID {process.pid}\)"
    with pytest.raises(WarehouseBusyError, match=holder):
        ingest_file(paths, events, fmt="csv", lock_timeout_s=0.2)
    with pytest.raises(WarehouseBusyError, match=holder):
        build(paths, export=False, lock_timeout_s=0.2)
    release.set()
    process.join(60)
    # once the reader is gone both go through, and the refused ingest had written nothing
    assert ingest_file(paths, events, fmt="csv").loaded == 1
    assert build(paths, export=False).events == 1


def test_writer_retries_until_the_reader_leaves(
    paths: Paths, analyst, monkeypatch: pytest.MonkeyPatch
) -> None:
    process, release = analyst
    pauses = []

    def analyst_leaves_during_pause(seconds: float) -> None:
        pauses.append(seconds)
        release.set()
        process.join(60)

    monkeypatch.setattr(warehouse, "sleep", analyst_leaves_during_pause)
    report = write(paths, make_recs(range(1, 3)))
    assert report.run.run_id == 2
    assert len(pauses) == 1


EVENTS_PER_FLUSH = 50
N_RUNS = 6
MAX_READS = 100_000

CHECK_SQL = """
select
    (select max(run_id) from recommendation_runs where status = 'complete') as newest,
    (select n_rows from recommendation_runs
        where run_id = (select max(run_id) from recommendation_runs where status = 'complete')),
    (select count(*) from latest_recommendations),
    (select count(distinct run_id) from latest_recommendations),
    (select min(run_id) from latest_recommendations),
    (select count(*) from (
        select user_id from latest_recommendations
        group by user_id having min(rank) <> 1 or max(rank) <> count(*))),
    (select count(*) from events)
"""


def read_snapshot(paths: Paths, use_sqlalchemy: bool, engine) -> tuple[tuple, int]:
    """One analyst query; returns (CHECK_SQL's row, lock conflicts met on the way)."""
    if use_sqlalchemy:
        with engine.connect() as conn:
            return tuple(conn.execute(text(CHECK_SQL)).one()), 0
    for conflicts in range(10_000):
        try:
            con = duckdb.connect(str(paths.warehouse), read_only=True)
        except duckdb.IOException:
            continue  # the writer is in; a plain analyst just tries again
        with con:
            return con.execute(CHECK_SQL).fetchone(), conflicts
    raise AssertionError("never got a read-only connection")


def analyst_loop(home: str, ready, done, seen, results) -> None:
    """Read latest_recommendations until the writer is done; report what was inconsistent."""
    paths = resolve_home(home)
    engine = wb.read_engine(paths)
    reads, conflicts, last_seen, problems = 0, 0, None, []
    ready.set()
    while not done.is_set() and reads < MAX_READS:
        row, met = read_snapshot(paths, reads % 2 == 1, engine)
        newest, n_rows, n_latest, n_runs, min_run, bad_users, n_events = row
        if (n_latest, n_runs, min_run, bad_users) != (n_rows, 1, newest, 0):
            problems.append(row)
        if n_events % EVENTS_PER_FLUSH:
            problems.append(("partial event flush", n_events))
        if newest != last_seen:
            seen.put(newest)  # only on change, so the queue stays small
            last_seen = newest
        reads, conflicts = reads + 1, conflicts + met
    results.put((reads, conflicts, problems))


FLUSH_EVENTS_SQL = """
insert into events by name
select
    range as user_id,
    range as item_id,
    1 as category_id,
    'view' as behavior,
    timestamp '2026-01-01' + to_seconds(?) as event_time,
    'service' as source_file,
    now() as ingested_at,
    hash(user_id, item_id, behavior, event_time) as event_key
from range(?)
"""


def service_loop(home: str, seen, done, errors) -> None:
    """Flush event batches and write runs in short transactions, like the service."""
    paths = resolve_home(home)
    try:
        for i in range(N_RUNS):
            with wb.open_for_write(paths) as con:
                con.execute(FLUSH_EVENTS_SQL, [i, EVENTS_PER_FLUSH])
            run_id = write(paths, make_recs(range(1, 3 + i)), retention=3).run.run_id
            # Go on only once the analyst has read this run, so reads interleave with writes.
            while seen.get(timeout=60) != run_id:
                pass
    except BaseException as exc:
        errors.put(repr(exc))
    finally:
        done.set()


def test_analyst_process_reads_complete_runs_while_the_service_writes(
    paths: Paths, first_run: pl.DataFrame
) -> None:
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    seen, results, errors = ctx.Queue(), ctx.Queue(), ctx.Queue()
    home = str(paths.home)
    analyst = ctx.Process(target=analyst_loop, args=(home, ready, done, seen, results))
    service = ctx.Process(target=service_loop, args=(home, seen, done, errors))
    analyst.start()
    assert ready.wait(60), "the analyst process did not start"
    service.start()

    reads, conflicts, problems = results.get(timeout=300)
    service.join(60)
    analyst.join(60)
    service_errors = []
    while True:
        try:
            service_errors.append(errors.get_nowait())
        except queue.Empty:
            break

    assert service_errors == []
    assert (service.exitcode, analyst.exitcode) == (0, 0)
    assert problems == []
    assert reads < MAX_READS
    print(f"analyst: {reads} consistent reads, {conflicts} lock conflicts retried")
    assert query(paths, "select run_id from recommendation_runs order by run_id") == [
        (N_RUNS - 1,),
        (N_RUNS,),
        (N_RUNS + 1,),
    ]
    assert query(paths, "select count(*) from events") == [(N_RUNS * EVENTS_PER_FLUSH,)]
    assert wb.latest_run(paths).generated_at <= datetime.now(UTC).replace(tzinfo=None)
