"""The ``recsys`` command line: thin wrappers over the package's functions.

Every command takes ``--home DIR`` (else ``$RECSYS_HOME``, else ``./data``). Heavy modules are
imported inside the commands so that ``recsys --help`` and the SQL/Feast commands never pay for
TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from recsys.config import resolve_home

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


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
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
    from recsys.ingest import IngestError, ingest_file, parse_mapping

    try:
        report = ingest_file(
            resolve_home(home),
            path,
            fmt=format,
            mapping=parse_mapping(mapping or []),
            item_properties=item_properties,
        )
    except IngestError as exc:
        raise fail(str(exc)) from None
    console.print(report.summary())


if __name__ == "__main__":
    app()
