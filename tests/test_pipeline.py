"""The pipeline runner: step order, re-running from a step, failures that name the step."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from recsys.home import resolve_home
from recsys.pipeline import (
    STEPS,
    PipelineConfig,
    PipelineError,
    SimulatorSource,
    run_pipeline,
)

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def _recording_steps(log: list[str], fail_at: str | None = None):
    def make(name):
        def step(paths, config, console):
            if name == fail_at:
                raise RuntimeError("disk full")
            (paths.home / f"{name}.done").write_text(name)
            log.append(name)
            return f"{name} ok"

        return step

    return {name: make(name) for name in STEPS}


def test_steps_run_in_pipeline_order(tmp_path):
    paths = resolve_home(tmp_path).ensure()
    log: list[str] = []
    results = run_pipeline(
        paths, PipelineConfig(), steps=_recording_steps(log), console=Console(quiet=True)
    )
    assert log == list(STEPS)
    assert [r.name for r in results] == list(STEPS)
    assert results[0].summary == "ingest ok"


def test_failure_names_the_step_and_keeps_earlier_results(tmp_path):
    paths = resolve_home(tmp_path).ensure()
    log: list[str] = []
    with pytest.raises(PipelineError, match=r"step 'train' failed: RuntimeError: disk full"):
        run_pipeline(
            paths,
            PipelineConfig(),
            steps=_recording_steps(log, fail_at="train"),
            console=Console(quiet=True),
        )
    assert log == ["ingest", "build", "features"]
    assert sorted(p.stem for p in paths.home.glob("*.done")) == ["build", "features", "ingest"]


def test_only_runs_the_chosen_steps_in_order(tmp_path):
    paths = resolve_home(tmp_path).ensure()
    log: list[str] = []
    run_pipeline(
        paths,
        PipelineConfig(),
        steps=_recording_steps(log),
        only=("score", "train"),
        console=Console(quiet=True),
    )
    assert log == ["train", "score"]
    with pytest.raises(PipelineError, match="unknown step"):
        run_pipeline(paths, PipelineConfig(), steps=_recording_steps(log), only=("deploy",))


def test_configs_in_pipelines_folder_parse():
    demo = PipelineConfig.from_toml(PIPELINES / "demo.toml")
    assert demo.events is None
    assert demo.simulator == SimulatorSource(users=3000, items=20000, days=21, seed=7)
    taobao = PipelineConfig.from_toml(PIPELINES / "taobao.toml")
    assert taobao.format == "taobao" and taobao.tz == "Asia/Shanghai"
    assert (
        taobao.events == (PIPELINES / "../../shared/data/taobao_user_behavior_sample.csv").resolve()
    )


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[simulator]\nusers = 10\nshoe_size = 42\n")
    with pytest.raises(PipelineError, match=r"unknown key 'shoe_size' in \[simulator\]"):
        PipelineConfig.from_toml(path)
    path.write_text("[simulator\n")
    with pytest.raises(PipelineError, match="cannot read pipeline config"):
        PipelineConfig.from_toml(path)


# --- column maps (`--map`, `[source.map]`) and strict configs --------------------------------

RENAMED_CSV = """visitorid,sku,cat,action,ts
1,10,100,view,2017-11-25T10:00:00Z
1,11,100,cart,2017-11-25T10:05:00Z
2,10,100,buy,2017-11-26T10:00:00Z
"""
RENAMED_MAP = {
    "user_id": "visitorid",
    "item_id": "sku",
    "category_id": "cat",
    "behavior": "action",
    "event_time": "ts",
}


def _pipeline(*args: str):
    """``recsys pipeline ARGS`` in this process (the ingest step alone is under a second)."""
    from typer.testing import CliRunner

    from recsys.cli import app

    return CliRunner().invoke(app, ["pipeline", *args])


def _events(home: Path) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(
            "select user_id, item_id, category_id, behavior from events order by event_time"
        ).fetchall()


EXPECTED_EVENTS = [(1, 10, 100, "view"), (1, 11, 100, "cart"), (2, 10, 100, "buy")]


def test_map_option_renames_the_columns_of_the_events_file(tmp_path):
    (tmp_path / "log.csv").write_text(RENAMED_CSV)
    maps = [arg for c, s in RENAMED_MAP.items() for arg in ("--map", f"{c}={s}")]
    home = tmp_path / "home"
    args = ["--events", str(tmp_path / "log.csv"), "--only", "ingest", "--home", str(home)]
    result = _pipeline(*args, *maps)
    assert result.exit_code == 0, result.output
    assert "3 events loaded, 0 quarantined" in result.output
    assert _events(home) == EXPECTED_EVENTS


def test_source_map_table_renames_and_the_map_option_overrides_it(tmp_path):
    (tmp_path / "log.csv").write_text(RENAMED_CSV)
    pairs = "\n".join(f'{c} = "{s}"' for c, s in RENAMED_MAP.items())
    config = tmp_path / "mine.toml"
    config.write_text(f'[source]\nevents = "log.csv"\nformat = "csv"\n\n[source.map]\n{pairs}\n')
    assert PipelineConfig.from_toml(config).mapping == RENAMED_MAP
    home = tmp_path / "home"
    result = _pipeline("--config", str(config), "--only", "ingest", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert _events(home) == EXPECTED_EVENTS

    # A wrong column in the file is fixed on the command line: --map wins, the rest stays.
    config.write_text(config.read_text().replace('"visitorid"', '"visitor"'))
    home = tmp_path / "home2"
    wrong = _pipeline("--config", str(config), "--only", "ingest", "--home", str(home))
    assert wrong.exit_code == 2
    assert "has no column 'visitor'" in wrong.output
    fix = ["--map", "user_id=visitorid", "--only", "ingest", "--home", str(home)]
    fixed = _pipeline("--config", str(config), *fix)
    assert fixed.exit_code == 0, fixed.output
    assert _events(home) == EXPECTED_EVENTS


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("user_id", "--map takes canonical=source, got 'user_id'"),
        ("user_id=", "--map takes canonical=source, got 'user_id='"),
        ("shoe_size=uid", "--map: unknown canonical column 'shoe_size'; expected one of user_id"),
    ],
)
def test_bad_map_option_is_a_one_line_error(tmp_path, argument, message):
    (tmp_path / "log.csv").write_text(RENAMED_CSV)
    result = _pipeline(
        "--events", str(tmp_path / "log.csv"), "--map", argument, "--home", str(tmp_path / "h")
    )
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "h" / "warehouse.duckdb").exists()


def test_map_without_an_events_file_is_refused(tmp_path):
    result = _pipeline("--map", "user_id=uid", "--home", str(tmp_path / "h"))
    assert result.exit_code == 2
    assert "a column map (--map or [source.map]) needs an events file" in result.output
    assert not (tmp_path / "h").exists()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "users = 3\n",
            "unknown key 'users' in the top level; allowed keys: source, simulator, evaluation",
        ),
        (
            '[source]\nevnets = "log.csv"\n',
            "unknown key 'evnets' in [source]; allowed keys: events, format, map",
        ),
        (
            '[source.map]\nuser = "uid"\n',
            "[source.map]: unknown canonical column 'user'; expected one of user_id, item_id",
        ),
        ("[simulator]\nuser = 3\n", "unknown key 'user' in [simulator]; allowed keys: users, "),
        (
            '[evaluation]\ntimezone = "UTC"\n',
            "unknown key 'timezone' in [evaluation]; allowed keys: tz, test_day, ablations",
        ),
        ('[evaluation]\nablations = "yes"\n', "ablations in [evaluation] must be true or false"),
        ("[evaluation]\ntest_day = 2017-12-03T00:00:00\n", "test_day in [evaluation] must be a"),
        ("[simulator]\nusers = true\n", "users in [simulator] must be an integer, got True"),
        ('[source]\nmap = "user_id=uid"\n', "map in [source] must be a table"),
        ("[source.map]\nuser_id = 7\n", "[source.map]: user_id must name a source column, got 7"),
    ],
)
def test_every_table_rejects_unknown_keys_and_wrong_types(tmp_path, toml, message):
    path = tmp_path / "typo.toml"
    path.write_text(toml)
    with pytest.raises(PipelineError) as caught:
        PipelineConfig.from_toml(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    result = _pipeline("--config", str(path), "--home", str(tmp_path / "h"))
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert message in result.output
