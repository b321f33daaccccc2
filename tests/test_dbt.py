"""dbt's own commands on a home (``recsys dbt --home DIR -- ARGS``): lineage, docs, tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from feature_helpers import simulated_home

from recsys.home import Paths
from recsys.warehouse.dbt import PROJECT_DIR

pytestmark = pytest.mark.slow
RECSYS = [str(Path(sys.executable).parent / "recsys")]


def recsys_dbt(paths: Paths, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RECSYS, "dbt", "--home", str(paths.home), "--", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("dbt") / "home")
    simulated_home(paths)
    return paths


def test_lineage_of_an_export_lists_what_it_reads(built):
    done = recsys_dbt(
        built, "ls", "--select", "+feast_user_interest", "--resource-type", "model",
        "--output", "name",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    listed = set(done.stdout.split())
    assert {"feast_user_interest", "user_category_interest", "stg_events", "stg_params"} <= listed
    assert "edges_item_item" not in listed


def test_docs_generate_catalogues_the_home_and_writes_nothing_into_the_repository(built):
    before = sorted(p.name for p in PROJECT_DIR.iterdir())
    done = recsys_dbt(built, "docs", "generate")
    assert done.returncode == 0, done.stdout + done.stderr
    target = built.home / "dbt" / "target"
    catalog = json.loads((target / "catalog.json").read_text())
    mart = catalog["nodes"]["model.recsys.user_category_interest"]
    assert mart["metadata"]["schema"] == "main" and mart["metadata"]["type"] == "BASE TABLE"
    assert "share_short" in mart["columns"]
    assert (target / "index.html").is_file()
    assert sorted(p.name for p in PROJECT_DIR.iterdir()) == before


def test_data_tests_run_on_the_published_marts(built):
    assert recsys_dbt(built, "test").returncode == 0
    con = duckdb.connect(str(built.warehouse))
    con.execute("update user_category_interest set share_short = share_short * 1.01")
    con.close()
    done = recsys_dbt(built, "test", "--select", "shares_sum_to_one")
    assert done.returncode == 1
    assert "shares_sum_to_one" in done.stdout


def test_a_home_without_a_warehouse_is_refused(tmp_path):
    done = recsys_dbt(Paths(tmp_path / "empty"), "ls")
    assert done.returncode != 0
    assert "run `recsys ingest FILE` first" in done.stdout + done.stderr
