"""``recsys pipeline``: raw events to written-back recommendations, one step after another.

Steps, in order: ingest -> build -> features -> train -> evaluate -> score. Each step is
idempotent (re-running it rewrites its own outputs atomically and leaves the others alone), can
be run alone through its own command (``recsys ingest``, ``recsys build``, ...), and a failure
names the step while earlier results stay intact.

Run configurations are TOML files in ``pipelines/`` (``pipelines/demo.toml`` is the built-in
default: the simulator, so no download is needed). Their tables and keys:

- ``[source]``: ``events`` (a file, relative to the config), ``format`` (as ``recsys ingest
  --format``); ``[source.map]``: ``canonical = "source column"`` pairs, as ``--map``;
- ``[simulator]``: the fields of ``SimulatorSource`` (used when there is no events file);
- ``[evaluation]``: ``tz``, ``test_day`` (a date), ``ablations`` (true/false).

Any other key, or a value of the wrong type, is an error naming it: a typo is never ignored.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from recsys.config import FeatureConfig
from recsys.features.online_settings import SQLITE, OnlineStoreSettings
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
    mapping: dict[str, str] = field(default_factory=dict)  # canonical -> column of ``events``
    simulator: SimulatorSource = field(default_factory=SimulatorSource)
    tz: str = "UTC"
    test_day: date | None = None
    ablations: bool = False
    features: FeatureConfig = field(default_factory=FeatureConfig)
    online: OnlineStoreSettings = SQLITE

    @classmethod
    def from_toml(cls, path: Path) -> PipelineConfig:
        """Read the ``[source]`` (with ``[source.map]``), ``[simulator]`` and ``[evaluation]``
        tables of a TOML file (module docstring); unknown keys and wrong types are errors."""
        from recsys.warehouse.ingest import IngestError, check_mapping

        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise PipelineError(f"cannot read pipeline config {path}: {exc}") from exc
        tables = _checked(raw, "the top level", TABLES, path)
        source = _checked(tables.get("source", {}), "[source]", SOURCE_KEYS, path)
        evaluation = _checked(tables.get("evaluation", {}), "[evaluation]", EVALUATION_KEYS, path)
        simulator = _checked(tables.get("simulator", {}), "[simulator]", SIMULATOR_KEYS, path)
        try:
            mapping = check_mapping(source.get("map", {}), where=f"{path} [source.map]")
        except IngestError as exc:
            raise PipelineError(str(exc)) from None
        events = source.get("events")
        return cls(
            events=(path.parent / events).resolve() if events else None,
            format=source.get("format", "parquet"),
            mapping=mapping,
            simulator=SimulatorSource(**simulator),
            tz=evaluation.get("tz", "UTC"),
            test_day=evaluation.get("test_day"),
            ablations=evaluation.get("ablations", False),
        )


# What a pipeline config may hold, per table: key -> type of its value.
TABLES: dict[str, type] = {"source": dict, "simulator": dict, "evaluation": dict}
SOURCE_KEYS: dict[str, type] = {"events": str, "format": str, "map": dict}
EVALUATION_KEYS: dict[str, type] = {"tz": str, "test_day": date, "ablations": bool}
SIMULATOR_KEYS: dict[str, type] = {f.name: type(f.default) for f in fields(SimulatorSource)}
TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    date: "a date (YYYY-MM-DD)",
    dict: "a table",
}


def _checked(
    table: dict[str, Any], where: str, allowed: dict[str, type], path: Path
) -> dict[str, Any]:
    """``table`` if each key is in ``allowed`` with a value of its type, else a one-line
    ``PipelineError`` naming the key, the table (``where``) and the allowed keys."""
    for key, value in table.items():
        if key not in allowed:
            raise PipelineError(
                f"{path}: unknown key {key!r} in {where}; allowed keys: {', '.join(allowed)}"
            )
        if not _has_type(value, allowed[key]):
            raise PipelineError(
                f"{path}: {key} in {where} must be {TYPE_NAMES[allowed[key]]}, got {value!r}"
            )
    return table


def _has_type(value: Any, expected: type) -> bool:
    # TOML's true is a Python int, 1 a valid float, and a date-time a Python date: each is
    # told apart here.
    if expected in (int, float) and isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, int | float)
    if expected is date:
        return isinstance(value, date) and not isinstance(value, datetime)
    return isinstance(value, expected)


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
    if config.mapping and config.events is None:
        raise PipelineError(
            "a column map (--map or [source.map]) needs an events file (--events or [source] "
            "events); the simulator's log already has the canonical columns"
        )
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
    """Ingest ``config.events`` (renamed by ``config.mapping``), or simulate the built-in
    dataset and ingest that."""
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
    report = ingest_file(paths, events, fmt=fmt, mapping=config.mapping)
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
        report = materialize(paths, online=config.online)
    console.print(report.summary())
    return f"{report.total_rows:,} online rows"


def train_step(paths: Paths, config: PipelineConfig, console: Console) -> str:
    from recsys.models.training import train_home

    report = train_home(paths, console=console, online=config.online)
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


def print_closing_summary(
    paths: Paths, console: Console, online: OnlineStoreSettings = SQLITE
) -> None:
    """Where the results are, the latest evaluation, a query to paste, how to serve (from the
    ``online`` store the run wrote)."""
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
    redis = f" --redis-url {online.redis_url}" if online.kind == "redis" else ""
    console.print(
        f"serve it:\n  .venv/bin/recsys serve --home {paths.home}{redis}", highlight=False
    )
