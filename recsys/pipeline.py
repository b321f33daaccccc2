"""``recsys pipeline``: raw events to written-back recommendations, one step after another.

Steps, in order: ingest -> build -> features -> train -> evaluate -> score. Each step is
idempotent (re-running it rewrites its own outputs atomically and leaves the others alone), can
be run alone through its own command (``recsys ingest``, ``recsys build``, ...), and a failure
names the step while earlier results stay intact.

Run configurations are TOML files in ``pipelines/`` (``pipelines/demo.toml`` is the built-in
default: the simulator, so no download is needed).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.config import FeatureConfig
from recsys.home import Paths

STEPS = ("ingest", "build", "features", "train", "evaluate", "score")
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"


class PipelineError(Exception):
    """A step failed; the message names it. Outputs of earlier steps are intact."""


@dataclass(frozen=True)
class SimulatorSource:
    """The built-in dataset: a simulated log with planted interest migrations."""

    users: int = 3_000
    items: int = 20_000
    days: int = 21
    seed: int = 7
    association_probability: float = 0.8  # see SimulationConfig: the category association graph
    associations_per_category: int = 3


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run. Without ``events`` the simulator provides the data."""

    events: Path | None = None
    format: str = "parquet"
    simulator: SimulatorSource = field(default_factory=SimulatorSource)
    tz: str = "UTC"
    test_day: date | None = None
    ablations: bool = False
    features: FeatureConfig = field(default_factory=FeatureConfig)

    @classmethod
    def from_toml(cls, path: Path) -> PipelineConfig:
        """Read ``[source]``, ``[simulator]`` and ``[evaluation]`` tables of a TOML file."""
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PipelineError(f"cannot read pipeline config {path}: {exc}") from exc
        source = raw.get("source", {})
        evaluation = raw.get("evaluation", {})
        events = source.get("events")
        return cls(
            events=(path.parent / events).resolve() if events else None,
            format=source.get("format", "parquet"),
            simulator=_dataclass_from(SimulatorSource, raw.get("simulator", {}), path),
            tz=evaluation.get("tz", "UTC"),
            test_day=evaluation.get("test_day"),
            ablations=evaluation.get("ablations", False),
        )


def _dataclass_from(cls: type, values: dict[str, Any], path: Path):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class StepResult:
    name: str
    seconds: float
    summary: str


Step = Callable[[Paths, PipelineConfig, Console], str]


def run_pipeline(
    paths: Paths,
    config: PipelineConfig,
    *,
    steps: dict[str, Step] | None = None,
    only: tuple[str, ...] = STEPS,
    console: Console | None = None,
) -> list[StepResult]:
    """Run ``only`` of ``steps`` in pipeline order; stop at the first failure."""
    console = console or Console()
    steps = steps or DEFAULT_STEPS
    unknown = set(only) - set(STEPS)
    if unknown:
        raise PipelineError(f"unknown step(s) {sorted(unknown)}; steps are {', '.join(STEPS)}")
    results = []
    for number, name in enumerate((s for s in STEPS if s in only), start=1):
        console.rule(f"[bold]step {number}: {name}")
        started = time.perf_counter()
        try:
            summary = steps[name](paths, config, console)
        except Exception as exc:
            raise PipelineError(
                f"step '{name}' failed: {type(exc).__name__}: {exc}. Earlier steps' results "
                f"are intact; fix the cause and re-run `recsys pipeline --from {name}`."
            ) from exc
        results.append(StepResult(name, time.perf_counter() - started, summary))
        console.print(f"[green]✓[/] {name} ({results[-1].seconds:.1f}s): {summary}")
    return results


def ingest_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    """Ingest ``config.events``, or simulate the built-in dataset and ingest that."""
    from recsys.warehouse.ingest import ingest_file

    events, fmt = config.events, config.format
    if events is None:
        from recsys.warehouse.simulate import SimulationConfig, simulate, write_simulation

        sim_config = SimulationConfig(**vars(config.simulator))
        directory = paths.simulations / sim_config.name
        events = directory / "events.parquet"
        if not events.exists():
            with console.status(f"simulating {sim_config.name}"):
                write_simulation(simulate(sim_config), directory)
        fmt = "parquet"
    report = ingest_file(paths, events, fmt=fmt)
    console.print(report.summary())
    return f"{report.loaded:,} events loaded, {report.quarantined:,} quarantined"


def build_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    from recsys.evaluation.migration_plots import plot_migrations
    from recsys.warehouse.build import build

    with console.status("building marts and feature exports") as status:
        report = build(
            paths, config=config.features, step=lambda label: status.update(f"built {label}")
        )
    console.print(report.summary())
    plot = plot_migrations(paths)
    return f"marts as of {report.as_of}" + (f"; migrations plotted in {plot}" if plot else "")


def features_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    """``feast apply`` and materialisation (``materialize`` applies the repo first)."""
    from recsys.features.materialize import materialize

    with console.status("feast apply + materialising online features"):
        report = materialize(paths)
    console.print(report.summary())
    return f"{report.total_rows:,} online rows"


def train_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    from recsys.models.training import train_home

    report = train_home(paths, console=console)
    console.print(report.summary())
    return f"model {report.version}"


def evaluate_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    """The evaluation with the learned model; ablations only when the config asks (each is
    one more fit, and the demo keeps to its time budget)."""
    from recsys.evaluation.run import EvaluationConfig, learned_models, run_evaluation

    run = run_evaluation(
        paths,
        config=EvaluationConfig(tz=config.tz, test_day=config.test_day, features=config.features),
        models=learned_models(ablations=config.ablations),
        console=console,
    )
    return f"run {run.run_id}, metrics in {run.run_dir}"


def score_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    from recsys.models.training import score_home

    report = score_home(paths, console=console)
    run = report.run
    return (
        f"run {run.run_id}: {run.n_rows:,} recommendations for {run.n_users:,} users, "
        f"ranked by {run.ranker}"
    )


DEFAULT_STEPS: dict[str, Step] = {
    "ingest": ingest_step,
    "build": build_step,
    "features": features_step,
    "train": train_step,
    "evaluate": evaluate_step,
    "score": score_step,
}


def print_closing_summary(paths: Paths, console: Console) -> None:
    """Where the results are, the latest evaluation, a query to paste, how to serve."""
    from recsys.evaluation.report import METRICS_FILE, metrics_table, read_metrics_json
    from recsys.evaluation.run import HEADLINE

    console.rule("[bold]done")
    console.print(f"warehouse: [bold]{paths.warehouse}[/]")
    runs = sorted(paths.evaluation.glob(f"*/{METRICS_FILE}"))
    if runs:
        console.print(metrics_table(read_metrics_json(runs[-1]), columns=HEADLINE))
        console.print(f"plots: {runs[-1].parent}/*.png")
    query = (
        "select user_id, rank, item_id, category_id, source, reason\n"
        "from latest_recommendations\n"
        "where user_id = (select min(user_id) from latest_recommendations)\n"
        "order by rank limit 10"
    )
    console.print("query it (read-only, from any process):")
    console.print(
        f"  .venv/bin/python -c \"import duckdb; duckdb.connect('{paths.warehouse}', "
        f"read_only=True).sql('''{' '.join(query.split())}''').show()\"",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"serve it:\n  .venv/bin/recsys serve --home {paths.home}", highlight=False)
