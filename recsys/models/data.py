"""The learned model's inputs, read from a private recsys home that holds only past events.

``PrivateHome`` loads the events strictly before an as-of time into a fresh warehouse in a
temporary folder, builds the SQL marts and Feast exports there and serves the model:

- graph edges (``edges_user_item``, ``edges_item_item``) as of any earlier time,
- point-in-time query features (``two_tower_v1_query``) and item features
  (``two_tower_v1_candidate``) through Feast, each value computed from events strictly before
  the entity's timestamp,
- the item tables' marts (item statistics, item and category transitions) as of each time.

Feature snapshots are taken every ``snapshot_every`` back from the as-of time (not at 00:00 UTC),
so that the as-of time minus the validation window has fresh features too.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.home import Paths
from recsys.warehouse.build import build
from recsys.warehouse.connect import EVENT_KEY, connect

QUERY_SERVICE = "two_tower_v1_query"
CANDIDATE_SERVICE = "two_tower_v1_candidate"
# The marts ``Edges`` holds, in its field order.
EDGE_MARTS = ("edges_user_item", "edges_item_item", "category_transitions", "item_stats")
EMBEDDING_FILES = {
    "user": "user_embeddings.parquet",
    "item": "item_embeddings.parquet",
    "category": "category_embeddings.parquet",
}


class LearnedModelError(ValueError):
    """The learned model cannot be fitted, loaded or used with these inputs (one line)."""


def load_events(paths: Paths, events: pl.DataFrame) -> int:
    """Insert canonical events into the home's warehouse the way ingest keys them; returns rows."""
    frame = events.select("user_id", "item_id", "category_id", "behavior", "event_time")
    if "session_id" in events.columns:
        frame = frame.with_columns(events["session_id"].cast(pl.String))
    else:
        frame = frame.with_columns(session_id=pl.lit(None, pl.String))
    con = connect(paths)
    try:
        con.register("learned_events", frame.to_arrow())
        con.execute(
            f"""
            insert into events
            select user_id, item_id, category_id, behavior, event_time, session_id,
                   'recsys.models' as source_file, null, now()::timestamp,
                   {EVENT_KEY} as event_key
            from learned_events
            """
        )
        con.unregister("learned_events")
    finally:
        con.close()
    return frame.height


def snapshot_schedule(first: datetime, as_of: datetime, every: timedelta) -> list[datetime]:
    """as_of - k * every for k >= 1, back to the first event (oldest first), then as_of."""
    times = []
    moment = as_of - every
    while moment > first:
        times.append(moment)
        moment -= every
    return sorted(times) + [as_of]


@dataclass(frozen=True)
class Edges:
    """The graph marts as of one time: user-item (per behaviour), item-item and
    category-category edges."""

    as_of: datetime
    user_item: pl.DataFrame  # user_id, item_id, behavior, weight
    item_item: pl.DataFrame  # src_item_id, dst_item_id, weight
    category_category: pl.DataFrame  # the category_transitions mart
    item_stats: pl.DataFrame  # the item_stats mart


class PrivateHome:
    """A temporary recsys home holding only the events before ``as_of`` (see module doc).

    Use as a context manager; the folder is removed on exit.
    """

    def __init__(
        self,
        events: pl.DataFrame,
        as_of: datetime,
        *,
        config: FeatureConfig,
        snapshot_every: timedelta = timedelta(days=1),
    ) -> None:
        self.as_of = as_of
        self.config = config
        self.events = events.filter(pl.col("event_time") < as_of)
        if self.events.is_empty():
            raise LearnedModelError(f"no events before {as_of} to fit on")
        self.snapshots = snapshot_schedule(self.events["event_time"].min(), as_of, snapshot_every)
        self._folder = Path(tempfile.mkdtemp(prefix="recsys-learned-"))
        self.paths = Paths(self._folder)
        self._store = None

    def __enter__(self) -> PrivateHome:
        load_events(self.paths, self.events)
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def report(self) -> dict[str, object]:
        """What the private warehouse holds: event count and the last event time."""
        count, last = self._query("select count(*), max(event_time) from events")[0]
        return {"events": count, "last_event_time": last, "as_of": self.as_of}

    def _query(self, sql: str) -> list[tuple]:
        con = connect(self.paths, read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def edges(self, as_of: datetime) -> Edges:
        """Build the marts as of ``as_of`` (no exports) and read the edge marts."""
        build(self.paths, as_of=as_of, config=self.config, export=False)
        return Edges(as_of, *self._read(*EDGE_MARTS))

    def build_features(self) -> Edges:
        """Build marts and Feast exports as of ``as_of``, apply the feature repo; returns the
        marts of ``Edges`` as of ``as_of``."""
        from recsys.features.repo import apply, feature_store

        build(self.paths, as_of=self.as_of, config=self.config, snapshots=self.snapshots[:-1])
        marts = self._read(*EDGE_MARTS)
        apply(self.paths)
        self._store = feature_store(self.paths)
        return Edges(self.as_of, *marts)

    def _read(self, *tables: str) -> list[pl.DataFrame]:
        con = connect(self.paths, read_only=True)
        try:
            return [con.sql(f"select * from {table}").pl() for table in tables]
        finally:
            con.close()

    @property
    def store(self):  # -> feast.FeatureStore
        """The home's feature store (after ``build_features``)."""
        if self._store is None:
            raise LearnedModelError("build_features() must run before reading features")
        return self._store

    def snapshot_at_or_before(self, times: pl.Series) -> pl.Series:
        """The latest snapshot time <= each time, null before the first snapshot (label times
        map to the features of the snapshot just before them)."""
        grid = np.array(self.snapshots, dtype="datetime64[us]")
        values = times.cast(pl.Datetime("us")).to_numpy()
        idx = np.searchsorted(grid, values, side="right") - 1
        snapshot = pl.Series(times.name, grid[np.maximum(idx, 0)]).cast(pl.Datetime("us"))
        return pl.select(pl.when(pl.Series(idx >= 0)).then(snapshot)).to_series()

    def query_features(self, entities: pl.DataFrame) -> pl.DataFrame:
        """Point-in-time ``two_tower_v1_query`` features of (user_id, event_timestamp) rows."""
        return self._historical(entities, QUERY_SERVICE)

    def item_features(self, entities: pl.DataFrame) -> pl.DataFrame:
        """Point-in-time ``two_tower_v1_candidate`` features of (item_id, event_timestamp) rows."""
        return self._historical(entities, CANDIDATE_SERVICE)

    def _historical(self, entities: pl.DataFrame, service: str) -> pl.DataFrame:
        from recsys.features.read import historical_frame

        return historical_frame(self.paths, entities, service, store=self.store)


def labelled_interactions(
    events: pl.DataFrame, start: datetime | None, end: datetime, config: FeatureConfig
) -> pl.DataFrame:
    """(user_id, item_id, event_time, weight): one row per distinct user-item-hour in [start, end)
    with the strongest behaviour's weight (repeated views of one item in one hour count once)."""
    window = events.filter(pl.col("event_time") < end)
    if start is not None:
        window = window.filter(pl.col("event_time") >= start)
    weight = pl.col("behavior").replace_strict(config.behavior_weights, return_dtype=pl.Float64)
    return (
        window.with_columns(weight=weight, hour=pl.col("event_time").dt.truncate("1h"))
        .group_by("user_id", "item_id", "hour")
        .agg(pl.col("event_time").min(), pl.col("weight").max())
        .select("user_id", "item_id", "event_time", "weight")
        .sort("event_time", "user_id", "item_id")
    )


def write_embeddings(
    directory: Path, *, kind: str, ids: np.ndarray, embeddings: np.ndarray, as_of: datetime
) -> Path:
    """``DIR/{kind}_embeddings.parquet`` with ({kind}_id, event_timestamp, embedding float32[d])
    for the Feast embedding views; written atomically."""
    if kind not in EMBEDDING_FILES:
        raise LearnedModelError(
            f"embedding kind must be one of {', '.join(EMBEDDING_FILES)}, got {kind!r}"
        )
    if len(ids) != len(embeddings):
        raise LearnedModelError(f"{len(ids)} {kind} ids for {len(embeddings)} embeddings")
    directory.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        {
            f"{kind}_id": np.asarray(ids, np.int64),
            "event_timestamp": pl.Series([as_of] * len(ids), dtype=pl.Datetime("us")),
            "embedding": np.asarray(embeddings, np.float32).tolist(),
        },
        schema_overrides={"embedding": pl.List(pl.Float32)},
    )
    target = directory / EMBEDDING_FILES[kind]
    partial = target.with_name(f".{target.name}.partial")
    frame.write_parquet(partial)
    partial.replace(target)
    return target
