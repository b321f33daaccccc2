"""Where a recsys home keeps its files, and the knobs of the feature layer.

Everything the project writes lives under one home folder: ``--home DIR``, else the
``RECSYS_HOME`` environment variable, else ``./data``. Two homes never share a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the behavioural features, shared by the SQL marts and the online updater.

    The online updater and the SQL marts must agree to 1e-6, so both read these values from here
    (the warehouse gets them as the ``recsys_params`` and ``behavior_weights`` tables).
    """

    short_half_life_hours: float = 24.0
    long_half_life_hours: float = 14 * 24.0
    behavior_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "fav": 2.0, "cart": 3.0, "buy": 4.0}
    )
    session_gap_minutes: float = 30.0
    recent_sequence_length: int = 50
    top_categories: int = 20
    # A category counts as "new to the user" when the user's first event in it falls inside
    # this window before the as-of time.
    novelty_window_hours: float = 24.0
