"""Materialisation: load the latest export row of every entity into a home's online store, and
seed the online updater's state from the same build.

The exports are first checked to be one build's (``recsys.warehouse.exports``: the files of its
manifest, unchanged; without a manifest, every build export ending at the same as_of), so that
a mix of builds is refused with one line instead of being loaded."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import feast
from feast import FeatureStore
from feast.feature_view import FeatureView

from recsys.config import FeatureConfig
from recsys.features import online_store
from recsys.features.errors import FeatureStoreError, MaterializationError
from recsys.features.feast_compat import quiet
from recsys.features.repo import SQLITE, OnlineStoreSettings, apply, feature_store
from recsys.home import Paths
from recsys.online.seed import SeedError, SeedReport, Snapshot, read_snapshot, write_snapshot
from recsys.online.updater import FeastPushWriter
from recsys.warehouse import exports
from recsys.warehouse.build import EXPORTS
from recsys.warehouse.connect import WarehouseBusyError


@dataclass(frozen=True)
class MaterializationReport:
    """What one ``materialize`` call wrote: rows (entities) per view and the time taken, and
    the online updater's state seeded from the same build (None: the home has no warehouse)."""

    start: datetime
    end: datetime
    rows: dict[str, int]
    seconds: float
    seed: SeedReport | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def summary(self) -> str:
        views = ", ".join(f"{name}={n}" for name, n in self.rows.items())
        seeded = f"; {self.seed.summary()}" if self.seed else ""
        return (
            f"materialised {self.total_rows} rows ({views}) for {self.start:%Y-%m-%d %H:%M:%S}"
            f"..{self.end:%Y-%m-%d %H:%M:%S} in {self.seconds:.1f}s{seeded}"
        )


def export_time_range(paths: Paths) -> tuple[datetime, datetime]:
    """Min and max ``event_timestamp`` over the exports (naive UTC)."""
    return _time_range(paths.features, _export_stamps(paths.features))


def _export_stamps(folder: Path) -> dict[str, tuple[datetime, datetime]]:
    """File name -> min and max ``event_timestamp`` of every export in ``folder`` with rows."""
    files = [str(p) for p in sorted(folder.glob("*.parquet"))]
    if not files:
        raise FeatureStoreError(
            f"no feature exports in {folder}: run `make demo` or `recsys build` first"
        )
    rows = (
        duckdb.connect()
        .execute(
            "select parse_filename(filename), min(event_timestamp), max(event_timestamp) "
            "from read_parquet(?, union_by_name = true, filename = true) group by all",
            [files],
        )
        .fetchall()
    )
    return {name: (low, high) for name, low, high in rows}


def _time_range(
    folder: Path, stamps: dict[str, tuple[datetime, datetime]]
) -> tuple[datetime, datetime]:
    if not stamps:
        raise MaterializationError(f"the exports in {folder} hold no rows")
    return min(low for low, _ in stamps.values()), max(high for _, high in stamps.values())


def _build_as_of(folder: Path, stamps: dict[str, tuple[datetime, datetime]]) -> datetime | None:
    """The as_of of the one build whose exports ``folder`` holds (None: no user exports);
    ``MaterializationError`` when they are not one build's."""
    try:
        manifest = exports.verify(folder)
    except exports.ExportsError as exc:
        raise MaterializationError(str(exc)) from None
    if manifest is not None:
        return manifest.as_of
    # Without a manifest (exports copied in, or built before manifests), a build's files at
    # least all end at its as_of: every entity has a row there.
    ends = {name: stamps[name][1] for name in EXPORTS if name in stamps}
    if len(set(ends.values())) > 1:
        listed = ", ".join(f"{name} as of {end}" for name, end in sorted(ends.items()))
        raise MaterializationError(
            f"the exports in {folder} mix builds ({listed}): run `recsys build`"
        )
    return ends.get("user_interest.parquet")


def _entities_in_range(view: FeatureView, path: Path, start: datetime, end: datetime) -> int:
    keys = ", ".join(c.name for c in view.entity_columns)
    (count,) = (
        duckdb.connect()
        .execute(
            f"select count(*) from (select distinct {keys} from read_parquet(?) "
            "where event_timestamp between ? and ?)",
            [str(path), start, end],
        )
        .fetchone()
    )
    return int(count)


def _source_path(view: FeatureView) -> Path:
    return Path(view.batch_source.path)


def materialize(
    paths: Paths, *, online: OnlineStoreSettings = SQLITE, fast: bool = True
) -> MaterializationReport:
    """Load the latest export row of every entity into the online store.

    The window is the data's own time range (min..max ``event_timestamp`` of the exports), not
    the wall clock: historical logs (Taobao is from 2017) would otherwise load nothing. Raises
    ``MaterializationError`` when the window holds no rows or the online store stays empty.

    ``fast`` (default) reads each view's latest rows with one DuckDB query and writes them all
    in one transaction / pipeline (``recsys.features.online_store``), the same rows Feast
    writes, then records the interval in the registry as ``FeatureStore.materialize`` does.
    ``fast=False`` (or a store setting the direct writer does not reproduce) runs
    ``FeatureStore.materialize``.

    The exports read are those of the folder the registry's sources name (one build's
    version, fixed by ``apply``), checked first to be one build's.

    Then the online updater's state (``recsys.online.seed``) is replaced by the marts of the
    same build, so that events applied later continue each user's history instead of
    overwriting it, and the events the updater applied since the previous seed are replayed
    onto it: the users with events the build does not count get their rows pushed again, in
    place of the build's older rows just loaded. The marts are read first:
    ``MaterializationError`` before anything is written when they are of another build than
    the exports. A home without a warehouse (exports copied in) has no state to seed.
    """
    apply(paths, online=online)
    store = feature_store(paths, online)
    views = [
        view for view in store.list_feature_views() if view.online and _source_path(view).exists()
    ]
    (folder,) = {_source_path(view).parent for view in views}
    stamps = _export_stamps(folder)
    start, end = _time_range(folder, stamps)
    config = FeatureConfig()
    snapshot = _updater_snapshot(paths, config, _build_as_of(folder, stamps))
    writer = online_store.online_writer(store) if fast and _bulk_loadable(views) else None
    began = time.perf_counter()
    if writer is None:
        rows = _feast_materialize(store, views, start, end, paths)
    else:
        try:
            rows = _bulk_materialize(store, writer, views, start, end, paths)
        finally:
            writer.close()
    seconds = time.perf_counter() - began
    _check_materialized(store, views, rows)
    seed = _seed(paths, store, snapshot, config) if snapshot else None
    return MaterializationReport(start=start, end=end, rows=rows, seconds=seconds, seed=seed)


def _updater_snapshot(
    paths: Paths, config: FeatureConfig, as_of: datetime | None
) -> Snapshot | None:
    """The online updater's state from the marts of the build (as of ``as_of``) whose user
    exports are loaded."""
    if not paths.warehouse.exists() or as_of is None:
        return None
    try:
        return read_snapshot(paths, config, expect_as_of=as_of)
    except (SeedError, WarehouseBusyError) as exc:
        raise MaterializationError(f"cannot seed the online updater's state: {exc}") from None


def _seed(
    paths: Paths, store: FeatureStore, snapshot: Snapshot, config: FeatureConfig
) -> SeedReport:
    """Seed the state; replayed users' rows go out through the push sources."""
    push = FeastPushWriter(store)
    try:
        return write_snapshot(paths, snapshot, config, push=push)
    finally:
        push.close()


def _no_rows(start: datetime, end: datetime, paths: Paths) -> MaterializationError:
    return MaterializationError(
        f"0 rows to materialise between {start} and {end} in {paths.features}"
    )


def _feast_materialize(
    store: FeatureStore, views: list[FeatureView], start: datetime, end: datetime, paths: Paths
) -> dict[str, int]:
    rows = {view.name: _entities_in_range(view, _source_path(view), start, end) for view in views}
    if not any(rows.values()):
        raise _no_rows(start, end, paths)
    with quiet():
        store.materialize(
            start_date=start.replace(tzinfo=UTC),
            end_date=end.replace(tzinfo=UTC),
            feature_views=[view.name for view in views if rows[view.name]],
        )
    return rows


def _bulk_loadable(views: Sequence[FeatureView]) -> bool:
    """Views whose rows the bulk path reads exactly as Feast's offline pull does."""
    return all(
        isinstance(view.batch_source, feast.FileSource)
        and not view.batch_source.field_mapping
        and not view.batch_source.created_timestamp_column
        and len(view.entity_columns) == 1
        for view in views
    )


def _bulk_materialize(
    store: FeatureStore,
    writer: online_store.OnlineWriter,
    views: list[FeatureView],
    start: datetime,
    end: datetime,
    paths: Paths,
) -> dict[str, int]:
    """Write every view's latest rows in one go; record the interval as Feast does."""
    con = duckdb.connect()
    batches = [_latest_rows(con, view, start, end) for view in views]
    rows = {batch.view.name: len(batch) for batch in batches}
    if not any(rows.values()):
        raise _no_rows(start, end, paths)
    writer.write([batch for batch in batches if len(batch)])
    for view in views:
        if rows[view.name]:
            store.registry.apply_materialization(
                view,
                store.project,
                start.replace(tzinfo=UTC),
                end.replace(tzinfo=UTC),
                commit=False,
            )
    store.registry.commit()
    return rows


def _latest_rows(
    con: duckdb.DuckDBPyConnection, view: FeatureView, start: datetime, end: datetime
) -> online_store.ViewRows:
    """The view's latest export row per entity stamped within [start, end], encoded.

    Feast's offline pull keeps rows with start <= timestamp <= end, then the newest per key.
    """
    key, _ = online_store.join_key(view)
    stamp = view.batch_source.timestamp_field
    columns = ", ".join(f'"{name}"' for name in [key, stamp, *(f.name for f in view.features)])
    try:
        table = con.sql(
            f'select {columns} from read_parquet($path) where "{stamp}" between $start and $end '
            f'and "{key}" is not null qualify row_number() over '
            f'(partition by "{key}" order by "{stamp}" desc) = 1',
            params={"path": str(_source_path(view)), "start": start, "end": end},
        ).to_arrow_table()
    except duckdb.Error as exc:
        message = str(exc).splitlines()[0]
        raise MaterializationError(f"cannot read {view.name}'s rows: {message}") from None
    return online_store.encode_table(view, table, stamp)


def _check_materialized(store: FeatureStore, views: Sequence[FeatureView], rows: dict) -> None:
    """Read one entity of every materialised view back; fail loudly if it is not there."""
    con = duckdb.connect()
    for view in views:
        if not rows[view.name]:
            continue
        (key,) = [c.name for c in view.entity_columns]
        (sample,) = con.execute(
            f'select arg_max("{key}", event_timestamp) from read_parquet(?)',
            [str(_source_path(view))],
        ).fetchone()
        feature = view.features[0].name
        got = store.get_online_features(
            features=[f"{view.name}:{feature}"], entity_rows=[{key: sample}]
        ).to_dict()
        if got[feature][0] is None:
            raise MaterializationError(
                f"materialisation reported success but {view.name} has no online row for "
                f"{ {key: sample} }"
            )
