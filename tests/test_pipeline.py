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
    with pytest.raises(PipelineError, match=r"unknown keys \['shoe_size'\]"):
        PipelineConfig.from_toml(path)
    path.write_text("[simulator\n")
    with pytest.raises(PipelineError, match="cannot read pipeline config"):
        PipelineConfig.from_toml(path)
