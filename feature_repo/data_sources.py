"""Where the feature views read from: the Parquet exports of the SQL marts.

The exports live in ``<home>/features``. Under ``feast apply`` (run from this folder) the home is
``$RECSYS_HOME`` when set (``recsys.features.feast_home.repo_home``: the same home the registry
and online store of ``feature_store.yaml`` use), else the default home, ``../data/features``,
kept relative so the repo works in any clone. The ``recsys features ... --home DIR`` commands
load these same modules with ``RECSYS_FEATURES_DIR`` set to ``DIR/features`` (see
``recsys.features.repo.load_definitions``), so there is one set of definitions for every path.

Every export carries ``event_timestamp`` = the snapshot time T its row was computed as of, from
events strictly before T. Feast joins a row stamped T to a label at time >= T, so a label at T
only ever sees events before T.
"""

import os
from pathlib import Path

from feast import FileSource, PushSource

from recsys.features.feast_home import FEATURES_DIR_ENV, repo_home
from recsys.home import HOME_ENV

DEFAULT_FEATURES_DIR = "../data/features"
HERE = Path(__file__).resolve().parent

# The marts' exports must exist before the repo can be applied; embeddings come later
# (the models write them), so their views are materialised only once the files exist.
REQUIRED_EXPORTS = (
    "user_interest",
    "user_interest_shift",
    "user_behavior_funnel",
    "user_recent_sequence",
    "item_stats",
)


class FeatureExportsMissing(FileNotFoundError):
    """The Parquet exports the feature views read have not been built yet."""


def features_dir() -> str:
    """The exports folder: ``$RECSYS_FEATURES_DIR``, else ``$RECSYS_HOME/features``, else the
    default home's."""
    chosen, build = os.environ.get(FEATURES_DIR_ENV), "`make demo` or `recsys build`"
    if not chosen and os.environ.get(HOME_ENV):
        home = repo_home(HERE)
        chosen, build = str(home / "features"), f"`recsys build --home {home}`"
    chosen = chosen or DEFAULT_FEATURES_DIR
    missing = [name for name in REQUIRED_EXPORTS if not _export_path(chosen, name).exists()]
    if missing:
        raise FeatureExportsMissing(
            f"feature exports {', '.join(missing)} not found in {_export_path(chosen, '')}: "
            f"run {build} first"
        )
    return chosen


def _export_path(directory: str, name: str) -> Path:
    # Relative folders are relative to this repo, where `feast apply` runs.
    base = Path(directory) if Path(directory).is_absolute() else HERE / directory
    return base / f"{name}.parquet" if name else base


FEATURES_DIR = features_dir()


def _parquet(name: str, description: str) -> FileSource:
    return FileSource(
        name=f"{name}_source",
        path=f"{FEATURES_DIR}/{name}.parquet",
        timestamp_field="event_timestamp",
        description=description,
    )


user_interest_source = _parquet(
    "user_interest", "Daily snapshots of each user's top-N decayed category interests."
)
user_interest_shift_source = _parquet(
    "user_interest_shift", "Daily snapshots of how far each user's short interests moved."
)
user_behavior_funnel_source = _parquet(
    "user_behavior_funnel", "Daily snapshots of each user's view/cart/fav/buy funnel."
)
user_recent_sequence_source = _parquet(
    "user_recent_sequence", "Daily snapshots of each user's most recent events."
)
item_stats_source = _parquet("item_stats", "Daily snapshots of item popularity and conversion.")
user_embeddings_source = _parquet(
    "user_embeddings", "Learned user embeddings, written by the models after training."
)
item_embeddings_source = _parquet(
    "item_embeddings", "Learned item embeddings, written by the models after training."
)
category_embeddings_source = _parquet(
    "category_embeddings", "Learned category embeddings, written by the models after training."
)

# The online updater (recsys.online.updater) pushes fresh user rows through these, online only.
user_interest_push = PushSource(
    name="user_interest_push",
    batch_source=user_interest_source,
    description="Real-time user interest rows from recsys.online.updater.",
)
user_interest_shift_push = PushSource(
    name="user_interest_shift_push",
    batch_source=user_interest_shift_source,
    description="Real-time interest-shift rows from recsys.online.updater.",
)
user_behavior_funnel_push = PushSource(
    name="user_behavior_funnel_push",
    batch_source=user_behavior_funnel_source,
    description="Real-time funnel rows from recsys.online.updater.",
)
user_recent_sequence_push = PushSource(
    name="user_recent_sequence_push",
    batch_source=user_recent_sequence_source,
    description="Real-time recent-sequence rows from recsys.online.updater.",
)
