"""Ingest: exact counts on real data, quarantine with line numbers, idempotence, atomicity."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.home import resolve_home
from recsys.warehouse import ingest as ingest_module
from recsys.warehouse.ingest import IngestError, ingest_file, parse_mapping

TAOBAO = Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao_user_behavior_sample.csv"


def _rows(paths, sql: str) -> list[tuple]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home")


def test_taobao_sample_ingests_exactly(home):
    if not TAOBAO.exists():
        pytest.skip(f"real Taobao sample not found at {TAOBAO} (see ../shared/README.md)")
    report = ingest_file(home, TAOBAO, fmt="taobao")
    assert (report.loaded, report.quarantined, report.duplicates) == (84_475, 1, 0)
    [(line, raw, reason)] = _rows(home, "select line, raw, reason from quarantine_events")
    assert line == 84_476
    assert raw == "100370,1968385,1875258,pv"
    assert "MISSING COLUMNS" in reason
    # pv is stored as view; timestamps are UTC.
    assert _rows(home, "select count(*) from events where behavior = 'pv'") == [(0,)]
    first = _rows(home, "select event_time from events where source_line = 1")
    assert first == [(datetime(2017, 11, 24, 17, 21, 10),)]

    again = ingest_file(home, TAOBAO, fmt="taobao")
    assert (again.loaded, again.duplicates, again.quarantined) == (0, 84_475, 0)
    assert again.already_quarantined == 1
    assert _rows(home, "select count(*) from events") == [(84_475,)]
    assert _rows(home, "select count(*) from quarantine_events") == [(1,)]


def test_quarantine_keeps_line_raw_and_reason(home, tmp_path):
    csv = _write(
        tmp_path / "events.csv",
        "user_id,item_id,category_id,behavior,event_time\n"  # line 1
        "1,10,100,view,2024-01-01T00:00:00\n"  # 2 ok
        "1,10\n"  # 3 too few columns (rejected by the CSV reader)
        ",11,100,view,2024-01-01T00:01:00\n"  # 4 user_id missing
        "2,12,100,like,2024-01-01T00:02:00\n"  # 5 unknown behaviour
        "1,11,100,a,b,c\n"  # 6 too many columns
        "3,13,100,buy,not-a-time\n"  # 7 bad time
        "3,14,100,cart,1704067200\n"  # 8 ok, Unix seconds
        "4,15,101,pv,2024-01-01T09:00:00+09:00\n",  # 9 ok, alias and offset
    )
    report = ingest_file(home, csv, fmt="csv")
    assert (report.rows_read, report.loaded, report.quarantined) == (8, 3, 5)
    bad = _rows(home, "select line, raw, reason from quarantine_events order by line")
    assert [b[0] for b in bad] == [3, 4, 5, 6, 7]
    reasons = {line: reason for line, _, reason in bad}
    assert "MISSING COLUMNS" in reasons[3]
    assert reasons[4] == "user_id is missing"
    assert reasons[5] == "unknown behavior 'like'"
    assert "TOO MANY COLUMNS" in reasons[6]
    assert reasons[7] == "event_time is missing or unparseable: 'not-a-time'"
    assert bad[1][1] == "11,100,view,2024-01-01T00:01:00"  # a missing field is not rebuilt
    good = _rows(home, "select source_line, behavior, event_time from events order by source_line")
    assert good == [
        (2, "view", datetime(2024, 1, 1, 0, 0)),
        (8, "cart", datetime(2024, 1, 1, 0, 0)),
        (9, "view", datetime(2024, 1, 1, 0, 0)),
    ]


def test_duplicates_within_and_across_files_and_newer_file_appends(home, tmp_path):
    header = "user_id,item_id,category_id,behavior,event_time\n"
    first = _write(
        tmp_path / "a.csv",
        header
        + "1,10,100,view,2024-01-02T00:00:00\n"
        + "1,10,100,view,2024-01-02T00:00:00\n"  # exact repeat inside the file
        + "1,10,100,view,2024-01-01T00:00:00\n",  # older, out of order: accepted
    )
    second = _write(
        tmp_path / "b.csv",
        header + "1,10,100,view,2024-01-01T00:00:00\n" + "2,11,100,buy,2024-01-03T00:00:00\n",
    )
    r1 = ingest_file(home, first, fmt="csv")
    assert (r1.loaded, r1.duplicates) == (2, 1)
    r2 = ingest_file(home, second, fmt="csv")
    assert (r2.loaded, r2.duplicates) == (1, 1)
    assert _rows(home, "select count(*) from events") == [(3,)]
    files = _rows(home, "select loaded, duplicates from ingested_files order by ingested_at")
    assert files == [(2, 1), (1, 1)]


def test_parquet_with_mapping_and_missing_category(home, tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "uid": [1, 2],
            "sku": [10, 11],
            "action": ["addtocart", "transaction"],
            "ts": [datetime(2024, 1, 1), datetime(2024, 1, 2)],
        }
    ).write_parquet(path)
    mapping = parse_mapping(["user_id=uid", "item_id=sku", "behavior=action", "event_time=ts"])
    report = ingest_file(home, path, fmt="parquet", mapping=mapping)
    assert report.loaded == 2
    rows = _rows(home, "select user_id, item_id, category_id, behavior from events order by 1")
    assert rows == [(1, 10, -1, "cart"), (2, 11, -1, "buy")]


def test_retailrocket_category_in_force_at_event_time(home, tmp_path):
    events = _write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221000000,1,view,10,\n"  # before any property snapshot: earliest category (5)
        "1433223000000,1,addtocart,10,\n"  # after the change at ...2000000: category 6
        "1433223000000,2,transaction,11,77\n"  # item without category: -1
        "1433224000000,2,bogus,11,\n",
    )
    props = _write(
        tmp_path / "item_properties.csv",
        "timestamp,itemid,property,value\n"
        "1433221500000,10,categoryid,5\n"
        "1433222000000,10,categoryid,6\n"
        "1433222000000,10,available,1\n",
    )
    report = ingest_file(home, events, fmt="retailrocket", item_properties=props)
    assert (report.loaded, report.quarantined) == (3, 1)
    rows = _rows(home, "select user_id, item_id, category_id, behavior from events order by all")
    assert rows == [(1, 10, 5, "view"), (1, 10, 6, "cart"), (2, 11, -1, "buy")]
    assert _rows(home, "select line, reason from quarantine_events") == [
        (5, "unknown behavior 'bogus'")
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "xml"}, "unknown format 'xml'"),
        ({"fmt": "csv", "mapping": {"user_id": "nope"}}, "has no column 'nope'"),
        ({"fmt": "taobao", "mapping": {"user_id": "a"}}, "--map applies to --format csv"),
    ],
)
def test_bad_requests_fail_clearly_and_touch_nothing(home, tmp_path, kwargs, message):
    csv = _write(tmp_path / "e.csv", "user_id,item_id,behavior,event_time\n1,2,view,1\n")
    with pytest.raises(IngestError, match=message):
        ingest_file(home, csv, **kwargs)
    assert not home.warehouse.exists()


def test_missing_required_column_names_the_fix(home, tmp_path):
    csv = _write(tmp_path / "e.csv", "uid,item_id,behavior,event_time\n1,2,view,1\n")
    with pytest.raises(IngestError, match=r"lacks required column\(s\) user_id.*--map"):
        ingest_file(home, csv, fmt="csv")


def test_failure_during_write_leaves_warehouse_as_it_was(home, tmp_path, monkeypatch):
    header = "user_id,item_id,category_id,behavior,event_time\n"
    ingest_file(home, _write(tmp_path / "a.csv", header + "1,1,1,view,1700000000\n"), fmt="csv")
    calls = {"n": 0}
    real_scalar = ingest_module._scalar

    def failing_scalar(con, sql):
        calls["n"] += 1
        if "quarantine_events" in sql:  # after events were inserted in the transaction
            raise RuntimeError("disk full")
        return real_scalar(con, sql)

    monkeypatch.setattr(ingest_module, "_scalar", failing_scalar)
    second = _write(tmp_path / "b.csv", header + "2,2,2,buy,1700000001\nbad,row\n")
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_file(home, second, fmt="csv")
    assert calls["n"] > 0
    assert _rows(home, "select user_id from events") == [(1,)]
    assert _rows(home, "select count(*) from quarantine_events") == [(0,)]
    assert _rows(home, "select count(*) from ingested_files") == [(1,)]


def test_cli_reports_counts_and_errors_in_one_line(tmp_path):
    runner = CliRunner()
    csv = _write(
        tmp_path / "e.csv",
        "user_id,item_id,category_id,behavior,event_time\n1,2,3,view,1700000000\n",
    )
    home = str(tmp_path / "h")
    ok = runner.invoke(app, ["ingest", str(csv), "--format", "csv", "--home", home])
    assert ok.exit_code == 0, ok.output
    assert "loaded       1" in ok.output
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope.csv"), "--home", home])
    assert missing.exit_code == 2
    assert "no such file" in missing.output
    bad_map = runner.invoke(
        app, ["ingest", str(csv), "--format", "csv", "--map", "userid", "--home", home]
    )
    assert bad_map.exit_code == 2
    assert "--map takes canonical=source" in bad_map.output


def test_time_layouts_parse_to_utc_and_zones_are_honoured(home, tmp_path):
    times = {
        "2024-01-01T10:00:00": datetime(2024, 1, 1, 10),
        "2024-01-01 10:00:00.250": datetime(2024, 1, 1, 10, 0, 0, 250_000),
        "2024-01-01": datetime(2024, 1, 1),
        "2024-01-01T10:00:00Z": datetime(2024, 1, 1, 10),
        "2024-01-01T10:00:00+02:00": datetime(2024, 1, 1, 8),
        "2024-01-01T10:00:00-0530": datetime(2024, 1, 1, 15, 30),
        "2024-01-01 10:00:00 America/New_York": datetime(2024, 1, 1, 15),
        "1704103200": datetime(2024, 1, 1, 10),
    }
    body = "".join(f"{i},1,1,view,{t}\n" for i, t in enumerate(times))
    csv = _write(tmp_path / "t.csv", "user_id,item_id,category_id,behavior,event_time\n" + body)
    assert ingest_file(home, csv, fmt="csv").loaded == len(times)
    got = _rows(home, "select event_time from events order by user_id")
    assert [g[0] for g in got] == list(times.values())


@pytest.mark.slow
def test_line_numbers_hold_across_a_file_read_in_parallel(home, tmp_path):
    """A file large enough for DuckDB to read in parallel chunks (~70 MB): every event keeps
    its physical line, and the quarantine names the right lines, rejects of the CSV reader
    (too few columns) and of the checks (an unknown behaviour) alike."""
    n = 1_500_000
    reader_rejects = [3, 700_001, 1_400_001]  # lines with too few columns
    check_rejects = [500_000, 1_200_000]  # lines with an unknown behaviour
    path = tmp_path / "big.csv"
    # Whole lines as one unquoted text column, so that a line can lack columns.
    duckdb.connect().execute(
        f"""
        copy (
            select 'user_id,item_id,category_id,behavior,event_time' as text
            union all (
                select
                    case when line in {tuple(reader_rejects)} then line::varchar
                    else concat_ws(',', line, line % 1000, line % 7,
                        case when line in {tuple(check_rejects)} then 'like' else 'view' end,
                        1700000000 + line)
                    end
                from range(2, {n + 2}) t(line) order by line
            )
        ) to '{path}' (header false, quote '', escape '')
        """
    )
    report = ingest_file(home, path, fmt="csv")
    assert (report.loaded, report.quarantined) == (n - 5, 5)
    # user_id was written equal to the line number, so a shifted line shows up here
    assert _rows(home, "select count(*) from events where user_id <> source_line") == [(0,)]
    lines = _rows(home, "select line from quarantine_events order by line")
    assert [line for (line,) in lines] == sorted(reader_rejects + check_rejects)
