"""``recsys train``: fit the interest model on a home's whole warehouse and publish it.

Outputs: ``HOME/models/interest_v1-<UTC timestamp>/`` (see ``InterestModel.save``), the GNN
embeddings as ``HOME/features/{user,item}_embeddings.parquet`` (stamped with the as-of time, read
by the Feast embedding views) and, when the home's feature store is applied, their
materialisation into the online store.

With ``TF_CONFIG`` naming several workers (``recsys.models.device``), run ``recsys train`` on
each with its own copy of the home: the two-tower trains under ``MultiWorkerMirroredStrategy``,
and only the chief publishes; the others save into a temporary folder (saving takes part in
the cluster's collectives) and remove it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from recsys.features.online_settings import SQLITE, OnlineStoreSettings
from recsys.home import Paths
from recsys.models.data import LearnedModelError, write_embeddings
from recsys.models.device import cluster_workers, distribution_strategy, is_chief
from recsys.models.interest import MODEL_NAME, InterestConfig, InterestModel, load_latest
from recsys.ranking.policy import EXCLUDE_PURCHASED
from recsys.ranking.score import score_users
from recsys.warehouse.connect import load_events
from recsys.warehouse.writeback import RunReport


@dataclass(frozen=True)
class TrainReport:
    version: str
    model_dir: Path
    as_of: datetime
    events: int
    embedding_files: tuple[Path, ...]
    materialized: bool
    seconds: float
    published: bool = True  # False on the workers of a cluster other than the chief

    def summary(self) -> str:
        if not self.published:
            return (
                f"trained {self.version} on {self.events:,} events as of {self.as_of} in "
                f"{self.seconds:.0f}s as a worker; the chief publishes it"
            )
        files = ", ".join(str(p) for p in self.embedding_files)
        online = "materialised" if self.materialized else "not materialised (store not applied)"
        return (
            f"trained {self.version} on {self.events:,} events as of {self.as_of} in "
            f"{self.seconds:.0f}s\nmodel: {self.model_dir}\nembeddings: {files} ({online})"
        )


def model_version(now: datetime | None = None) -> str:
    """``interest_v1-<UTC timestamp>``, sortable by training time."""
    return f"{MODEL_NAME}-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


def train_home(
    paths: Paths,
    *,
    config: InterestConfig | None = None,
    console: Console | None = None,
    online: OnlineStoreSettings = SQLITE,
) -> TrainReport:
    """Fit on every event of the home (as of just after the last one) and publish (module doc)
    into the ``online`` store."""
    from recsys.features.materialize import materialize

    if cluster_workers() > 1:
        distribution_strategy()  # joins the cluster: must come before the first TF op
    events = load_events(paths)
    if events.is_empty():
        raise LearnedModelError(f"the warehouse at {paths.warehouse} has no events to train on")
    as_of = events["event_time"].max() + timedelta(microseconds=1)
    model = InterestModel(config).fit(events, as_of)
    version = model_version()
    if not is_chief():
        with tempfile.TemporaryDirectory(prefix="recsys-worker-") as scratch:
            model.save(Path(scratch) / version)
        return TrainReport(
            version=version,
            model_dir=paths.models / version,
            as_of=as_of,
            events=events.height,
            embedding_files=(),
            materialized=False,
            seconds=model.fit_seconds_,
            published=False,
        )
    model_dir = model.save(paths.models / version)
    graph = model.retriever_.graph[as_of]
    written = tuple(
        write_embeddings(
            paths.features,
            kind=kind,
            ids=getattr(graph, f"{kind}_ids"),
            embeddings=getattr(graph, kind),
            as_of=as_of,
        )
        for kind in ("user", "item", "category")
    )
    applied = (paths.feast / "registry.db").exists()
    if applied:
        if console:
            console.log("materialising the embedding views")
        materialize(paths, online=online)
    return TrainReport(
        version=version,
        model_dir=model_dir,
        as_of=as_of,
        events=events.height,
        embedding_files=written,
        materialized=applied,
        seconds=model.fit_seconds_,
    )


def score_home(
    paths: Paths,
    *,
    k: int = 50,
    exclude_purchased: bool = EXCLUDE_PURCHASED,
    retention: int = 5,
    console: Console | None = None,
) -> RunReport:
    """``recsys score``: every user of the home ranked by the newest verified model."""
    model, directory = load_latest(paths.models)
    return score_users(
        paths,
        model,
        model_version=directory.name,
        k=k,
        exclude_purchased=exclude_purchased,
        retention=retention,
        console=console,
    )
