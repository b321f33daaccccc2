"""Which home ``feature_repo/`` serves: ``$RECSYS_HOME``, else ``../data``.

``feature_repo/feature_store.yaml`` names ``recsys.features.feast_compat.HomeRegistryStore`` and
``HomeSqliteOnlineStore`` (they override Feast internals, so they live with the other private
Feast calls) instead of Feast's file registry and SQLite online store. Feast 0.67 reads that
file through ``os.path.expandvars``, which has no default for an unset variable, and ``cd
feature_repo && feast apply`` must keep using the project's ``./data`` when ``RECSYS_HOME`` is
not set; so the paths in the file are relative to the home, and those classes resolve it with
``repo_home``. Otherwise they are Feast's own classes: same files, same tables.
"""

from __future__ import annotations

import os
from pathlib import Path

from recsys.home import DEFAULT_HOME, HOME_ENV

# Set by recsys while it imports the definitions for one home's exports folder; it overrides
# the home for ``feature_repo/data_sources.py``.
FEATURES_DIR_ENV = "RECSYS_FEATURES_DIR"


def repo_home(repo_dir: Path) -> Path:
    """The home a feature repo folder serves: ``$RECSYS_HOME`` (a relative one is taken from
    the project root, the repo folder's parent, where ``recsys`` commands run), else the
    project's ``data`` folder."""
    project = Path(repo_dir).resolve().parent
    chosen = os.environ.get(HOME_ENV)
    return (project / Path(chosen).expanduser() if chosen else project / DEFAULT_HOME).resolve()
