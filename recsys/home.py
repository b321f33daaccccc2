"""Where a recsys home keeps its files.

Everything the project writes lives under one home folder: ``--home DIR``, else the
``RECSYS_HOME`` environment variable, else ``./data``. Two homes never share a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "RECSYS_HOME"
DEFAULT_HOME = Path("data")


@dataclass(frozen=True)
class Paths:
    """The files of one recsys home."""

    home: Path

    @property
    def warehouse(self) -> Path:
        """The DuckDB warehouse: events, quarantine, marts, recommendations."""
        return self.home / "warehouse.duckdb"

    @property
    def features(self) -> Path:
        """Parquet exports of the marts, with an ``event_timestamp`` column, read by Feast."""
        return self.home / "features"

    @property
    def feast(self) -> Path:
        """Feast's registry and SQLite online store for this home."""
        return self.home / "feast"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def plots(self) -> Path:
        return self.home / "plots"

    @property
    def evaluation(self) -> Path:
        return self.home / "evaluation"

    @property
    def simulations(self) -> Path:
        return self.home / "simulations"

    def ensure(self) -> Paths:
        self.home.mkdir(parents=True, exist_ok=True)
        return self


def resolve_home(home: str | os.PathLike[str] | None = None) -> Paths:
    """Pick the home: the argument, else ``$RECSYS_HOME``, else ``./data``."""
    chosen = home if home is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Paths(Path(chosen).expanduser().resolve())
