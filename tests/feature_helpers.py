"""Helpers shared by the feature-store and online-updater tests: small warehouses and builds."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from recsys.build import build
from recsys.config import Paths
from recsys.ingest import ingest_file
from recsys.simulate import SimulationConfig, simulate


def load_events(paths: Paths, events: pd.DataFrame) -> None:
    """Ingest canonical events (user_id, item_id, category_id, behavior, event_time)."""
    frame = events.copy()
    if "session_id" not in frame:
        frame["session_id"] = pd.Series([None] * len(frame), dtype="string")
    paths.ensure()
    source = paths.home / "test_events.parquet"
    frame.to_parquet(source, index=False)
    ingest_file(paths, source, fmt="parquet")


def simulated_home(
    paths: Paths, *, users: int = 40, items: int = 200, days: int = 4, start: datetime | None = None
) -> pd.DataFrame:
    """Fill a home's warehouse with a small simulation and build it; returns the events."""
    extra = {"start": start} if start else {}
    sim = simulate(SimulationConfig(users=users, items=items, days=days, seed=7, **extra))
    events = sim.events.to_pandas()
    load_events(paths, events)
    build(paths)
    return events
