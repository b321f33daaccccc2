"""Feast's own CLI on any home: the home's ``feature_store.yaml``, ``recsys feast``,
``feature_repo/`` under ``$RECSYS_HOME``, and one online-store setting (``--redis-url``, else
``$RECSYS_REDIS_URL``) for every command that touches the online store.

A Feast process takes about 10 s to start on 2 cores: three tests run one or two, the rest run
in this process.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from feast import FeatureStore, FeatureView
from feature_helpers import simulated_home
from rich.console import Console
from typer.testing import CliRunner

from recsys.cli import app
from recsys.features import feast_cli
from recsys.features.errors import FeatureStoreError
from recsys.features.online_settings import REDIS_URL_ENV, SQLITE, OnlineStoreSettings
from recsys.features.repo import load_definitions, write_feast_yaml
from recsys.home import HOME_ENV, Paths, resolve_home

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://cache.example:6391/7"


def _views(paths: Paths) -> set[str]:
    """The feature views the repo defines: what Feast's own listings must show."""
    return {o.name for o in load_definitions(paths.features) if isinstance(o, FeatureView)}


def _listed(stdout: str) -> set[str]:
    """The names in the first column of a ``feast feature-views list`` table."""
    return {line.split()[0] for line in stdout.splitlines()[1:] if line.strip()}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """A small home, built (exports written), not applied."""
    paths = resolve_home(tmp_path_factory.mktemp("feast_cli") / "built")
    simulated_home(paths)
    return paths


@pytest.fixture(scope="module")
def applied(built: Paths) -> Paths:
    """A copy of ``built`` after `recsys features apply` (SQLite online store)."""
    paths = resolve_home(built.home.parent / "applied")
    shutil.copytree(built.home, paths.home, symlinks=True)
    result = _invoke("features", "apply", "--home", str(paths.home))
    assert result.exit_code == 0, result.output
    return paths


def _feast_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (HOME_ENV, feast_cli.FEATURES_DIR_ENV)}
    return env | extra


# --- the home's feature_store.yaml --------------------------------------------------------------


def test_features_apply_writes_the_homes_config_with_absolute_paths(applied, tmp_path):
    config_path = applied.feast / "feature_store.yaml"
    config = yaml.safe_load(config_path.read_text())
    feast_dir = applied.feast.resolve()
    assert config["registry"] == str(feast_dir / "registry.db")
    assert config["online_store"] == {"type": "sqlite", "path": str(feast_dir / "online_store.db")}
    assert config["offline_store"] == {"type": "duckdb"}
    assert f"recsys feast --home {applied.home.resolve()} -- ARGS" in config_path.read_text()

    # Feast reads it from any folder: the registry, and the sources it names, are absolute.
    store = FeatureStore(repo_path=str(tmp_path), fs_yaml_file=config_path)
    assert {view.name for view in store.list_feature_views()} == _views(applied)
    sources = [s.path for s in store.list_data_sources() if hasattr(s, "path")]
    assert sources
    for source in sources:
        assert Path(source).is_absolute()
        assert Path(source).parent == applied.features.resolve()


def test_the_config_names_the_redis_store_of_the_setting(tmp_path):
    paths = resolve_home(tmp_path / "home")
    paths.feast.mkdir(parents=True)
    write_feast_yaml(paths, OnlineStoreSettings.redis(REDIS_URL))
    config = yaml.safe_load((paths.feast / "feature_store.yaml").read_text())
    assert config["online_store"] == {
        "type": "redis",
        "connection_string": "cache.example:6391,db=7",
        "skip_dedup": True,
    }


# --- recsys feast -------------------------------------------------------------------------------


def test_recsys_feast_lists_the_homes_feature_views_from_any_folder(applied, tmp_path):
    command = [sys.executable, "-m", "recsys.cli", "feast", "--home", str(applied.home)]
    done = subprocess.run(
        [*command, "--", "feature-views", "list"],
        cwd=tmp_path,
        env=_feast_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _listed(done.stdout) == _views(applied)


def test_recsys_feast_runs_feast_on_the_home_and_returns_its_exit_code(applied, monkeypatch):
    command, env = feast_cli.feast_command(applied, ["ui", "--port", "8888"])
    config = str(applied.feast / "feature_store.yaml")
    assert command[-7:] == [
        "--chdir",
        str(feast_cli.REPO_DIR),
        "--feature-store-yaml",
        config,
        "ui",
        "--port",
        "8888",
    ]
    assert Path(command[0]).parent == Path(sys.executable).parent
    assert env[HOME_ENV] == str(applied.home.resolve())
    assert feast_cli.FEATURES_DIR_ENV not in env

    # Everything after the options reaches Feast, options included; its exit code comes back.
    seen: list[list[str]] = []

    def failing_feast(paths, args):
        seen.append(list(args))
        return [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ)

    monkeypatch.setattr(feast_cli, "feast_command", failing_feast)
    result = _invoke("feast", "--home", str(applied.home), "--", "materialize", "--views", "x")
    assert result.exit_code == 3
    result = _invoke("feast", "--home", str(applied.home), "serve", "--port", "6567")
    assert result.exit_code == 3
    assert seen == [["materialize", "--views", "x"], ["serve", "--port", "6567"]]


def test_recsys_feast_on_a_home_not_applied_is_a_one_line_error(built):
    result = _invoke("feast", "--home", str(built.home), "--", "feature-views", "list")
    assert result.exit_code == 2
    assert f"run `recsys features apply --home {built.home}` first" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- feature_repo/ and $RECSYS_HOME -------------------------------------------------------------


def test_feature_repo_serves_the_home_of_recsys_home(built, tmp_path, monkeypatch):
    """`feast apply` and `feast feature-views list` from feature_repo/ use $RECSYS_HOME (a
    relative one from the project root); without it, the project's ./data (the repo is copied,
    so that default is tmp_path/data, never the checkout's)."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    other = resolve_home(tmp_path / "homes" / "other")
    shutil.copytree(built.features, other.features)
    feast = Path(sys.executable).parent / "feast"

    def run(*args: str, home: str) -> subprocess.CompletedProcess:
        env = _feast_env(**{HOME_ENV: home})
        done = subprocess.run(
            [str(feast), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run("apply", home="homes/other")
    assert (other.feast / "registry.db").is_file()
    with sqlite3.connect(other.feast / "online_store.db") as con:
        tables = {
            name for (name,) in con.execute("select name from sqlite_master where type = 'table'")
        }
    assert {f"recsys_{view}" for view in _views(other)} <= tables
    assert not (tmp_path / "data").exists()

    listed = run("feature-views", "list", home=str(other.home))
    assert _listed(listed.stdout) == _views(other)

    # The same config in this process: the sources it registered are the home's exports.
    monkeypatch.setenv(HOME_ENV, str(other.home))
    store = FeatureStore(repo_path=str(repo))
    sources = {Path(s.path).parent for s in store.list_data_sources() if hasattr(s, "path")}
    assert sources == {other.features.resolve()}
    monkeypatch.delenv(HOME_ENV)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "data" / "feast")):
        FeatureStore(repo_path=str(repo)).list_feature_views()


# --- one online-store setting -------------------------------------------------------------------


def test_the_online_store_setting_comes_from_the_environment(monkeypatch, tmp_path):
    assert OnlineStoreSettings.configured() == SQLITE
    release = _invoke("features", "release", "--home", str(tmp_path))
    assert release.exit_code == 2
    assert "no Redis database to release: give --redis-url or set RECSYS_REDIS_URL" in (
        release.output
    )
    monkeypatch.setenv(REDIS_URL_ENV, REDIS_URL)
    assert OnlineStoreSettings.configured() == OnlineStoreSettings.redis(REDIS_URL)
    other = "redis://127.0.0.1:6390/3"
    assert OnlineStoreSettings.configured(other).redis_url == other  # --redis-url wins
    monkeypatch.setenv(REDIS_URL_ENV, "127.0.0.1:6379")
    with pytest.raises(FeatureStoreError, match="redis://host:port/db, got '127.0.0.1:6379'"):
        OnlineStoreSettings.configured()
    result = _invoke("features", "online", "--user", "1")
    assert result.exit_code == 2
    assert "a Redis URL looks like redis://host:port/db" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["features", "apply"],
        ["features", "materialize"],
        ["features", "online"],
        ["features", "release"],
        ["train"],
        ["pipeline"],
        ["serve"],
        ["forget"],
    ],
)
def test_every_command_on_the_online_store_takes_the_setting(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--redis-url" in result.output
    assert f"${REDIS_URL_ENV}" in result.output


def test_pipeline_and_train_write_to_the_store_of_the_environment(tmp_path, monkeypatch):
    from recsys import pipeline

    monkeypatch.setenv(REDIS_URL_ENV, REDIS_URL)
    redis = OnlineStoreSettings.redis(REDIS_URL)
    used: dict[str, OnlineStoreSettings] = {}

    def fake_run_pipeline(paths, config, **kwargs):
        used["pipeline"] = config.online

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run_pipeline)
    assert _invoke("pipeline", "--home", str(tmp_path)).exit_code == 0

    # The steps hand the setting to materialisation and training (TensorFlow stays unloaded:
    # the training module is replaced).
    report = types.SimpleNamespace(summary=lambda: "ok", total_rows=1, version="v")

    def fake_materialize(paths, *, online):
        used["features step"] = online
        return report

    def fake_train_home(paths, *, console, online):
        used["train"] = online
        return report

    monkeypatch.setattr("recsys.features.materialize.materialize", fake_materialize)
    training = types.ModuleType("recsys.models.training")
    training.train_home = fake_train_home
    monkeypatch.setitem(sys.modules, "recsys.models.training", training)
    paths, quiet = resolve_home(tmp_path), Console(quiet=True)
    pipeline.features_step(paths, pipeline.PipelineConfig(online=redis), quiet)
    pipeline.train_step(paths, pipeline.PipelineConfig(online=redis), quiet)
    assert _invoke("train", "--home", str(tmp_path)).exit_code == 0
    assert used == {"pipeline": redis, "features step": redis, "train": redis}

    # The closing summary's serve command reads the store the run wrote.
    console = Console(record=True, width=200)
    pipeline.print_closing_summary(paths, console, redis)
    assert f"recsys serve --home {paths.home} --redis-url {REDIS_URL}" in console.export_text()


@pytest.mark.redis
def test_features_commands_use_the_redis_of_the_environment(
    built, tmp_path, monkeypatch, redis_store
):
    paths = resolve_home(tmp_path / "home")
    shutil.copytree(built.home, paths.home, symlinks=True)
    settings = redis_store(paths, 5)
    monkeypatch.setenv(REDIS_URL_ENV, settings.redis_url)
    for command in (["apply"], ["materialize"]):
        result = _invoke("features", *command, "--home", str(paths.home))
        assert result.exit_code == 0, result.output
    config = yaml.safe_load((paths.feast / "feature_store.yaml").read_text())
    assert config["online_store"] == settings.to_feast(paths)
    assert not (paths.feast / "online_store.db").exists()
    user = _first_user(built)
    result = _invoke("features", "online", "--user", str(user), "--home", str(paths.home))
    assert result.exit_code == 0, result.output
    assert f'"user_id": {user}' in result.output


def _first_user(paths: Paths) -> int:
    import duckdb

    with duckdb.connect(str(paths.warehouse), read_only=True) as con:
        return con.execute("select min(user_id) from user_interest_shift").fetchone()[0]
