"""Ingest on hostile values: every bad value is quarantined on its own row with an exact reason;
nothing aborts the file, and no id is ever rounded (text that is no integer is a string id)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from recsys.cli import app
from recsys.home import resolve_home
from recsys.warehouse.ingest import IngestError, ingest_file

HEADER = "user_id,item_id,category_id,behavior,event_time\n"


def _rows(paths, sql: str) -> list[tuple]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _quarantine(paths) -> dict[int, str]:
    return dict(_rows(paths, "select line, reason from quarantine_events order by line"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home")


def test_non_finite_and_out_of_range_times_are_quarantined_row_by_row(home, tmp_path):
    csv = _write(
        tmp_path / "times.csv",
        HEADER
        + "1,10,100,view,1700000000\n"  # 2 ok
        + "2,11,100,view,inf\n"  # 3
        + "3,12,100,view,nan\n"  # 4
        + "4,13,100,view,1e20\n"  # 5
        + "5,14,100,view,-1e20\n"  # 6
        + "6,15,100,view,-inf\n"  # 7
        + "7,16,100,view,9223372036854775807\n"  # 8
        + "8,17,100,view,1700000001\n",  # 9 ok
    )
    report = ingest_file(home, csv, fmt="csv")
    assert (report.rows_read, report.loaded, report.quarantined) == (8, 2, 6)
    assert _quarantine(home) == {
        3: "event_time is not a finite number: 'inf'",
        4: "event_time is not a finite number: 'nan'",
        5: "event_time out of range: '1e20'",
        6: "event_time out of range: '-1e20'",
        7: "event_time is not a finite number: '-inf'",
        8: "event_time out of range: '9223372036854775807'",
    }
    assert _rows(home, "select source_line from events order by 1") == [(2,), (9,)]


def test_numeric_parquet_times_are_quarantined_row_by_row(home, tmp_path):
    path = tmp_path / "times.parquet"
    pl.DataFrame(
        {
            "user_id": [1, 2, 3, 4],
            "item_id": [10, 11, 12, 13],
            "behavior": ["view"] * 4,
            "event_time": [1.7e9, float("inf"), float("nan"), 1e20],
        }
    ).write_parquet(path)
    report = ingest_file(home, path, fmt="parquet")
    assert (report.loaded, report.quarantined) == (1, 3)
    reasons = _quarantine(home)
    assert reasons[2] == "event_time is not a finite number: 'inf'"
    assert reasons[3] == "event_time is not a finite number: 'nan'"
    assert reasons[4] == "event_time out of range: '1e+20'"


def test_retailrocket_timestamps_overflowing_int64_are_quarantined(home, tmp_path):
    events = _write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221000000,1,view,10,\n"
        "9223372036854775807,2,view,10,\n"  # x 1000 overflows INT64
        "99999999999999999999,3,view,10,\n"  # does not fit INT64 at all
        "1433223000000,4,view,10,\n",
    )
    props = _write(
        tmp_path / "item_properties.csv",
        "timestamp,itemid,property,value\n"
        "1433221500000,10,categoryid,5\n"
        "9223372036854775807,10,categoryid,6\n"  # unusable snapshot: skipped
        "1433222000000,10,categoryid,7.5\n",  # a string category id, like any other
    )
    report = ingest_file(home, events, fmt="retailrocket", item_properties=props)
    assert (report.loaded, report.quarantined) == (2, 2)
    assert _quarantine(home) == {
        3: "event_time out of range: '9223372036854775807'",
        4: "event_time out of range: '99999999999999999999'",
    }
    assert _rows(home, "select user_id, category_id from source_ids.events order by 1") == [
        ("1", "5"),
        ("4", "7.5"),
    ]


def test_taobao_timestamps_out_of_range_are_quarantined(home, tmp_path):
    log = _write(
        tmp_path / "UserBehavior.csv",
        "1,10,100,pv,1511544070\n2,11,100,pv,9223372036854775807\n3,12,100,buy,abc\n",
    )
    report = ingest_file(home, log, fmt="taobao")
    assert (report.loaded, report.quarantined) == (1, 2)
    assert _quarantine(home) == {
        2: "event_time out of range: '9223372036854775807'",
        3: "event_time is missing or unparseable: 'abc'",
    }


def test_ids_are_exact_integers_or_string_ids_never_rounded(home, tmp_path):
    csv = _write(
        tmp_path / "ids.csv",
        HEADER
        + "1.7,10,100,view,1700000000\n"  # 2: text that is no integer is a string id
        + "1e3,10,100,view,1700000000\n"  # 3
        + "0x10,10,100,view,1700000000\n"  # 4
        + "1_000,10,100,view,1700000000\n"  # 5
        + "99999999999999999999,10,100,view,1700000000\n"  # 6: beyond keys of its own
        + ",10,100,view,1700000000\n"  # 7: missing
        + "5,10.5,100,view,1700000000\n"  # 8
        + "5,10,-0.1,view,1700000000\n"  # 9
        + " 12 ,11.0,+100,view,1700000000\n"  # 10: spaces, a float-written integer, a sign
        + "007,11,100,view,1700000000\n"  # 11: leading zeros belong to a code
        + "5,11,"
        + "x" * 257
        + ",view,1700000000\n"  # 12: too long
        + "5,   ,100,view,1700000000\n"  # 13: blank
        + "5, SKU-1,100,view,1700000000\n",  # 14: a string id is kept exactly as written
    )
    report = ingest_file(home, csv, fmt="csv")
    assert (report.loaded, report.quarantined) == (10, 3)
    assert _quarantine(home) == {
        7: "user_id is missing",
        12: "category_id is longer than 256 characters",
        13: "item_id is missing",
    }
    shown = _rows(
        home,
        "select s.user_id, s.item_id, s.category_id, e.user_id < 2^52, e.item_id < 2^52 "
        "from source_ids.events s join events e using (source_line) order by source_line",
    )
    assert shown == [
        ("1.7", "10", "100", False, True),
        ("1e3", "10", "100", False, True),
        ("0x10", "10", "100", False, True),
        ("1_000", "10", "100", False, True),
        ("99999999999999999999", "10", "100", False, True),
        ("5", "10.5", "100", True, False),
        ("5", "10", "-0.1", True, True),
        ("12", "11", "100", True, True),
        ("007", "11", "100", False, True),
        ("5", " SKU-1", "100", True, False),
    ]


def test_parquet_float_ids_are_exact_or_quarantined(home, tmp_path):
    path = tmp_path / "ids.parquet"
    pl.DataFrame(
        {
            "user_id": [1.7, 2.0, float("nan"), 1e30],
            "item_id": [10, 10, 10, 10],
            "behavior": ["view"] * 4,
            "event_time": [datetime(2024, 1, 1)] * 4,
        }
    ).write_parquet(path)
    report = ingest_file(home, path, fmt="parquet")
    assert (report.loaded, report.quarantined) == (1, 3)
    assert _quarantine(home) == {
        1: "user_id is a float, not an exact integer id: '1.7'",
        3: "user_id is a float, not an exact integer id: 'nan'",
        4: "user_id is a float, not an exact integer id: '1e+30'",
    }
    assert _rows(home, "select user_id from events") == [(2,)]


def test_neighbouring_malformed_lines_keep_their_own_reasons(home, tmp_path):
    csv = _write(
        tmp_path / "ragged.csv",
        HEADER
        + "1,10\n"  # 2: 2 columns
        + "1,10,100\n"  # 3: 3 columns
        + "1,10,100,view\n"  # 4: 4 columns
        + "1,10,100,view,1700000000,x,y\n"  # 5: 7 columns
        + "1,10,100,view,1700000000\n",  # 6 ok
    )
    report = ingest_file(home, csv, fmt="csv")
    assert (report.loaded, report.quarantined) == (1, 4)
    missing = "MISSING COLUMNS: Expected Number of Columns: 5 Found: {}"
    assert _quarantine(home) == {
        2: missing.format(2),
        3: missing.format(3),
        4: missing.format(4),
        5: "TOO MANY COLUMNS: Expected Number of Columns: 5 Found: 7",
    }


def test_a_huge_header_field_is_a_one_line_error(home, tmp_path):
    csv = _write(tmp_path / "wide.csv", HEADER.strip() + ",x" + "y" * 200_000 + "\n1,2,3,view,1,\n")
    with pytest.raises(IngestError, match="cannot read its header line") as caught:
        ingest_file(home, csv, fmt="csv")
    assert "\n" not in str(caught.value)
    result = CliRunner().invoke(
        app, ["ingest", str(csv), "--format", "csv", "--home", str(home.home)]
    )
    assert result.exit_code == 2
    assert "cannot read its header line" in result.output
    assert "Traceback" not in result.output and not home.warehouse.exists()
