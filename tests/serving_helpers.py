"""Shared by the service tests: a small ready home (simulated events ingested, built,
materialised), API keys of each scope, and a stand-in for ``recsys.forget``."""

from __future__ import annotations

import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from feature_helpers import load_events

from recsys.features.materialize import materialize
from recsys.home import Paths, resolve_home
from recsys.serving.auth import ApiKeys
from recsys.warehouse.build import build
from recsys.warehouse.simulate import SimulationConfig, simulate

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
KEYS = ApiKeys.parse(f"read:{READ_KEY},write:{WRITE_KEY},admin:{ADMIN_KEY}", source="test")


def ready_home(root: Path) -> tuple[Paths, pd.DataFrame]:
    """A home with 30 users, 360 items in 12 categories over 4 days; returns its events."""
    paths = resolve_home(root)
    sim = simulate(SimulationConfig(users=30, items=360, days=4, seed=7, categories=12))
    events = sim.events.to_pandas()
    load_events(paths, events)
    build(paths)
    materialize(paths)
    return paths, events


def copy_home(paths: Paths, root: Path) -> Paths:
    """A copy of the home's folder (tests that post events or write must not share one)."""
    copy = resolve_home(root)
    shutil.copytree(paths.home, copy.home)
    return copy


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class ForgetReport:
    user_id: int

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "events_deleted": 7}


def stub_forget(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """``recsys.forget`` (another module's job) replaced by a recorder."""
    calls: list[tuple] = []

    def forget_user(paths, user_id, *, online):
        calls.append((paths, user_id, online))
        return ForgetReport(user_id)

    module = types.ModuleType("recsys.forget")
    module.forget_user = forget_user
    monkeypatch.setitem(sys.modules, "recsys.forget", module)
    return calls
