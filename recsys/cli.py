"""The ``recsys`` command line: thin wrappers over the package's functions.

Every command takes ``--home DIR`` (else ``$RECSYS_HOME``, else ``./data``). Heavy modules are
imported inside the commands so that ``recsys --help`` and the SQL/Feast commands never pay for
TensorFlow.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from recsys.home import resolve_home

app = typer.Typer(
    help="Feature-store-backed, SQL-native recommender that follows changing interests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Home folder for all outputs (default: $RECSYS_HOME or ./data)."),
]


@app.callback()
def main() -> None:
    """Feature-store-backed, SQL-native recommender that follows changing interests."""


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one line on stderr; the caller raises the exit (code 2)."""
    # Escaped: messages name config tables such as [source.map], which are not markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="Event file to load.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="taobao | retailrocket | csv | parquet")
    ] = "csv",
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="canonical=source column mapping, repeatable."),
    ] = None,
    item_properties: Annotated[
        Path | None,
        typer.Option(help="RetailRocket item_properties file(s) giving each item's category."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Load a behaviour log into the warehouse; bad rows go to quarantine_events."""
    from recsys.warehouse.connect import WarehouseBusyError
    from recsys.warehouse.ingest import IngestError, ingest_file, parse_mapping

    try:
        report = ingest_file(
            resolve_home(home),
            path,
            fmt=format,
            mapping=parse_mapping(mapping or []),
            item_properties=item_properties,
        )
    except (IngestError, WarehouseBusyError) as exc:
        raise fail(str(exc)) from None
    console.print(report.summary())


@app.command()
def simulate(
    users: Annotated[int, typer.Option(help="Number of users.")] = 2_000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 20_000,
    days: Annotated[int, typer.Option(help="Days of activity.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same log.")] = 0,
    association_probability: Annotated[
        float,
        typer.Option(
            help="Chance that a jump (and an exploring view) follows the category association "
            "graph; 0 gives the graph-free simulator's log."
        ),
    ] = 0.8,
    associations_per_category: Annotated[
        int, typer.Option(help="Associated 'next' categories per category in the graph.")
    ] = 3,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: HOME/simulations/sim-uN-iM-dD-sS[-aPxK])."),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Write a simulated event log (events.parquet), its planted migrations
    (migrations.parquet) and category association graph (category_associations.parquet)."""
    from recsys.warehouse.simulate import (
        ASSOCIATIONS_FILE,
        SimulationConfig,
        SimulationConfigError,
        write_simulation,
    )
    from recsys.warehouse.simulate import simulate as run_simulation

    try:
        config = SimulationConfig(
            users=users,
            items=items,
            days=days,
            seed=seed,
            association_probability=association_probability,
            associations_per_category=associations_per_category,
        )
    except SimulationConfigError as exc:
        raise fail(str(exc)) from None
    directory = out if out is not None else resolve_home(home).simulations / config.name
    with console.status(f"Simulating {config.name}..."):
        sim = run_simulation(config)
        events_path, migrations_path = write_simulation(sim, directory)
    console.print(
        f"[green]events[/]      {sim.events.height:>12,} rows  {events_path}\n"
        f"[green]migrations[/]  {sim.migrations.height:>12,} rows  {migrations_path}\n"
        f"[green]associations[/]{sim.associations.height:>12,} rows  "
        f"{migrations_path.parent / ASSOCIATIONS_FILE}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def build(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
            help="Use only events before this UTC time (default: just after the last event).",
        ),
    ] = None,
    no_export: Annotated[
        bool, typer.Option("--no-export", help="Build the marts only, skip the Feast files.")
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Recompute everything from all events (default: continue the last build "
            "from the newly ingested events).",
        ),
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="duckdb (in the home's warehouse) | spark (the same models on Apache Spark "
            "through dbt-spark, always in full, written as Parquet under HOME/spark; needs "
            "Java 17).",
        ),
    ] = "duckdb",
    spark_master: Annotated[
        str | None,
        typer.Option(
            "--spark-master",
            help="Spark master URL for --engine spark (default: $RECSYS_SPARK_MASTER, else "
            "local[2]).",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Build the SQL marts as of a time and export the Feast feature files."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from recsys.warehouse.build import BuildError
    from recsys.warehouse.build import build as build_features
    from recsys.warehouse.connect import WarehouseBusyError

    if engine not in ("duckdb", "spark"):
        raise fail(f"--engine must be duckdb or spark, not {engine!r}")
    if spark_master and engine != "spark":
        raise fail("--spark-master applies to --engine spark only")
    paths = resolve_home(home)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task(f"building marts on {engine}", total=None)

        def step(label: str) -> None:
            progress.update(task, description=f"built {label}")

        try:
            if engine == "spark":
                from recsys.warehouse.spark import build as build_on_spark

                report = build_on_spark(
                    paths, master=spark_master, as_of=as_of, export=not no_export, step=step
                )
            else:
                report = build_features(
                    paths, as_of=as_of, export=not no_export, full=full, step=step
                )
        except (BuildError, WarehouseBusyError) as exc:
            raise fail(str(exc)) from None
    console.print(report.summary())
    if engine == "spark":
        console.print(f"Parquet marts and Feast files in {paths.home / 'spark'}")
    elif not no_export:
        from recsys.evaluation.migration_plots import plot_migrations

        plot = plot_migrations(resolve_home(home))
        if plot:
            console.print(f"interest migrations plotted in {plot}")


features_app = typer.Typer(
    help="The Feast feature store of a home: apply, materialize, read online features.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")

RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Online store in Redis (redis://host:port/db) instead of the home's SQLite file "
        "(default: $RECSYS_REDIS_URL).",
        show_default=False,
    ),
]


def _online_store(redis_url: str | None):
    """The online store of ``--redis-url``, else ``$RECSYS_REDIS_URL``, else SQLite."""
    from recsys.features.errors import FeatureStoreError
    from recsys.features.online_settings import OnlineStoreSettings

    try:
        return OnlineStoreSettings.configured(redis_url)
    except FeatureStoreError as exc:
        raise fail(str(exc)) from None


@features_app.command("apply")
def features_apply(home: HomeOption = None, redis_url: RedisOption = None) -> None:
    """Register the feature repo's definitions for this home (registry in HOME/feast)."""
    from recsys.features.errors import FeatureStoreError
    from recsys.features.repo import apply

    try:
        names = apply(resolve_home(home), online=_online_store(redis_url))
    except FeatureStoreError as exc:
        raise fail(str(exc)) from None
    console.print(f"applied {len(names)} feature objects")


@features_app.command("materialize")
def features_materialize(home: HomeOption = None, redis_url: RedisOption = None) -> None:
    """Load the latest exported features into the online store (the data's own time range)."""
    from recsys.features.errors import FeatureStoreError
    from recsys.features.materialize import materialize

    try:
        report = materialize(resolve_home(home), online=_online_store(redis_url))
    except FeatureStoreError as exc:
        raise fail(str(exc)) from None
    console.print(report.summary())


@features_app.command("release")
def features_release(home: HomeOption = None, redis_url: RedisOption = None) -> None:
    """Give up this home's claim on a Redis database, so another home may use it (the rows
    stay until that home materialises)."""
    from recsys.features.redis_claim import release_redis

    online = _online_store(redis_url)
    if online.kind != "redis":
        raise fail("no Redis database to release: give --redis-url or set RECSYS_REDIS_URL")
    if release_redis(resolve_home(home), online):
        console.print(f"released {online.redis_url}")
    else:
        raise fail(f"this home holds no claim on {online.redis_url}")


@features_app.command("online")
def features_online(
    user: Annotated[str, typer.Option("--user", help="The user_id, as in the source.")],
    service: Annotated[str, typer.Option(help="Feature service to read.")] = "user_profile_v1",
    home: HomeOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Print a user's online features as JSON, ids as in the source."""
    import json

    from recsys.features.errors import FeatureStoreError
    from recsys.features.read import online_features
    from recsys.warehouse.ids import KEY_BASE, Ids
    from recsys.warehouse.writeback import open_for_read

    paths = resolve_home(home)
    try:
        user_id = _user_key(paths, user)
        row = online_features(paths, user_id, service=service, online=_online_store(redis_url))
    except FeatureStoreError as exc:
        raise fail(str(exc)) from None
    keys = [k for v in row.values() for k in (v if isinstance(v, list) else [v])]
    dimensioned = [k for k in keys if isinstance(k, int) and k >= KEY_BASE]
    if dimensioned:  # else every id is its own key: the warehouse need not be open
        with open_for_read(paths) as con:
            row = Ids.load(con, keys=dimensioned).shown_row(row)
    typer.echo(json.dumps(row, indent=2, default=str))


def _user_key(paths, user: str) -> int:
    """The key of a user id as in the source (``recsys.warehouse.ids``); a string id the
    warehouse never saw fails in one line."""
    from recsys.warehouse.ids import find_key, key_of
    from recsys.warehouse.writeback import open_for_read

    key = key_of(user)
    if key is None and paths.warehouse.exists():
        with open_for_read(paths) as con:
            key = find_key(con, "user_id", user)
    if key is None:
        raise fail(f"no user {user!r} in {paths.home}")
    return key


@app.command(
    "feast",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
def feast_cli(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="Feast's command and options, after --.", show_default=False),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run Feast's own CLI on a home, e.g. `recsys feast --home DIR -- feature-views list`
    (also ui, serve, materialize START END, ...); exits with Feast's exit code."""
    from recsys.features.errors import FeatureStoreError
    from recsys.features.feast_cli import run_feast

    try:
        code = run_feast(resolve_home(home), args or [])
    except FeatureStoreError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)


@app.command(
    "dbt",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
def dbt_cli(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="dbt's command and options, after --.", show_default=False),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run dbt's own CLI on a home's warehouse, e.g. `recsys dbt --home DIR -- docs generate`
    (also ls --select +MODEL, test, build, docs serve, ...); exits with dbt's exit code.

    dbt's files go to DIR/dbt/. A plain `dbt build` replaces the marts in place; `recsys build`
    publishes them only after every data test passed."""
    from recsys.warehouse.dbt import DbtError, run_cli

    paths = resolve_home(home)
    if not paths.warehouse.exists():
        raise fail(f"no warehouse at {paths.warehouse}; run `recsys ingest FILE` first")
    try:
        code = run_cli(paths, args or ["--help"])
    except DbtError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)


@app.command()
def evaluate(
    events: Annotated[
        Path | None,
        typer.Option(help="Event file to ingest first (else the warehouse's events)."),
    ] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="Format of --events.")] = "csv",
    tz: Annotated[
        str, typer.Option(help="Time zone of the day boundaries (Taobao: Asia/Shanghai).")
    ] = "UTC",
    test_day: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Test day (default: the last day of data)."),
    ] = None,
    baselines_only: Annotated[
        bool, typer.Option("--baselines-only", help="Skip the learned interest model.")
    ] = False,
    ablations: Annotated[
        bool,
        typer.Option(
            help="Also fit the learned model's ablations (one change each): no GNN, no "
            "sequence encoder, no next-category source, single-query ANN (no multi-interest)."
        ),
    ] = True,
    home: HomeOption = None,
) -> None:
    """Score every model and baseline on a global time split; write metrics.json and plots."""
    from recsys.evaluation.errors import EvaluationError
    from recsys.evaluation.run import EvaluationConfig, learned_models, run_evaluation
    from recsys.ranking.frames import RankingError
    from recsys.warehouse.connect import WarehouseBusyError
    from recsys.warehouse.ingest import IngestError, ingest_file

    paths = resolve_home(home)
    try:
        if events is not None:
            console.print(ingest_file(paths, events, fmt=format).summary())
        config = EvaluationConfig(tz=tz, test_day=test_day.date() if test_day else None)
        models = {} if baselines_only else learned_models(ablations=ablations)
        run_evaluation(paths, config=config, models=models, console=console)
    except (
        IngestError,
        EvaluationError,
        RankingError,
        FileNotFoundError,
        WarehouseBusyError,
    ) as exc:
        raise fail(str(exc)) from None


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (not loopback: API keys required).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    drain_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between moves of posted events into the warehouse (default 5; the "
            "events are online at once)."
        ),
    ] = None,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            help="File of API keys, one scope:KEY per line (scopes read, write, admin); "
            "default: $RECSYS_API_KEYS (read:KEY1,write:KEY2,...)."
        ),
    ] = None,
    home: HomeOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Run the HTTP recommendation service (uvicorn; OpenAPI docs at /docs)."""
    import os

    # A request ranks one user: polars' thread pool costs more than it saves on frames that
    # small (measured: 32 ms -> 20 ms per ranking), and the cores serve concurrent requests.
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    import uvicorn

    from recsys.serving.app import create_app
    from recsys.serving.auth import ApiKeys
    from recsys.serving.settings import ServiceSettings, ServingError

    try:
        settings = ServiceSettings(
            paths=resolve_home(home),
            online=_online_store(redis_url),
            api_keys=ApiKeys.configured(api_keys_file),
            host=host,
            port=port,
            **({} if drain_interval is None else {"drain_interval_s": drain_interval}),
        )
        if settings.api_keys is None:
            err_console.print(
                f"no API keys: every client on this machine may call the service, so it listens "
                f"on {host} only (set RECSYS_API_KEYS or --api-keys-file to open it up)",
                highlight=False,
                soft_wrap=True,
            )
        service = create_app(settings)
        # Started here, not in uvicorn's lifespan: a busy warehouse or a second service on the
        # home is then one line, not a traceback.
        service.state.runtime.start()
    except ServingError as exc:
        raise fail(str(exc)) from None
    uvicorn.run(service, host=host, port=port, loop="uvloop", http="httptools", access_log=False)


@app.command()
def train(home: HomeOption = None, redis_url: RedisOption = None) -> None:
    """Train the interest model on all events of the home; save it under HOME/models/<version>,
    write the embedding feature files and materialise them when the store is applied."""
    from recsys.features.errors import FeatureStoreError
    from recsys.models.data import LearnedModelError
    from recsys.models.training import train_home
    from recsys.warehouse.connect import WarehouseBusyError

    online = _online_store(redis_url)
    try:
        report = train_home(resolve_home(home), console=console, online=online)
    except (LearnedModelError, FileNotFoundError, WarehouseBusyError, FeatureStoreError) as exc:
        raise fail(str(exc)) from None
    console.print(report.summary(), highlight=False)


@app.command()
def score(
    k: Annotated[int, typer.Option(help="Recommendations per user (1..1000).")] = 50,
    exclude_purchased: Annotated[
        bool, typer.Option(help="Never recommend an item the user bought (recent sequence).")
    ] = False,
    retention: Annotated[int, typer.Option(help="Complete runs to keep.")] = 5,
    home: HomeOption = None,
) -> None:
    """Top-k for every known user from the newest model, written back as a run."""
    from recsys.models.artifacts import ArtifactError
    from recsys.models.training import score_home
    from recsys.ranking.score import ScoreError
    from recsys.warehouse.connect import WarehouseBusyError
    from recsys.warehouse.writeback import WritebackError

    try:
        report = score_home(
            resolve_home(home),
            k=k,
            exclude_purchased=exclude_purchased,
            retention=retention,
            console=console,
        )
    except (ScoreError, ArtifactError, WritebackError, WarehouseBusyError) as exc:
        raise fail(str(exc)) from None
    run = report.run
    console.print(
        f"run {run.run_id} ({run.model_version}, ranked by {run.ranker}): {run.n_rows:,} rows "
        f"for {run.n_users:,} users; "
        f"by source {run.counts}; pruned runs {list(report.pruned_run_ids)}"
    )


@app.command()
def pipeline(
    events: Annotated[
        Path | None, typer.Option(help="Event file (default: the built-in simulator).")
    ] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="Format of --events.")] = "csv",
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="canonical=source column mapping of the events file, repeatable; adds to "
            "and overrides the config's \\[source.map].",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Run configuration, e.g. pipelines/taobao.toml.")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Start at this step (earlier ones are kept).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Run only this step (repeatable).")] = None,
    home: HomeOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Raw events to written-back recommendations: ingest, build, features, train, evaluate,
    score."""
    from dataclasses import replace

    from recsys.pipeline import (
        STEPS,
        PipelineConfig,
        PipelineError,
        print_closing_summary,
        run_pipeline,
    )
    from recsys.warehouse.ingest import IngestError, parse_mapping

    paths = resolve_home(home)
    online = _online_store(redis_url)
    try:
        settings = PipelineConfig.from_toml(config) if config else PipelineConfig()
        if events is not None:
            settings = replace(settings, events=events.resolve(), format=format)
        settings = replace(
            settings,
            mapping={**settings.mapping, **parse_mapping(mapping or [])},
            online=online,
        )
        if start is not None and start not in STEPS:
            raise PipelineError(f"--from {start}: steps are {', '.join(STEPS)}")
        chosen = tuple(only) if only else STEPS[STEPS.index(start) :] if start else STEPS
        run_pipeline(paths, settings, only=chosen, console=console)
    except (PipelineError, IngestError) as exc:
        raise fail(str(exc)) from None
    print_closing_summary(paths, console, online)


@app.command()
def forget(
    user: Annotated[str, typer.Option("--user", help="The user_id to erase, as in the source.")],
    home: HomeOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Erase a user from every store of the home (warehouse, Parquet files, online store and
    state, inbox, models) and tombstone them, so that no ingest brings them back; prints the
    rows removed per store as JSON."""
    import json

    from recsys.features.errors import FeatureStoreError
    from recsys.forget import forget_user
    from recsys.warehouse.connect import WarehouseBusyError
    from recsys.warehouse.ids import as_given

    try:
        report = forget_user(resolve_home(home), as_given(user), online=_online_store(redis_url))
    except (FeatureStoreError, WarehouseBusyError) as exc:
        raise fail(str(exc)) from None
    typer.echo(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    app()
