"""``recsys feast``: Feast's own command line on any home.

``recsys features apply`` writes ``<home>/feast/feature_store.yaml`` with absolute paths
(``recsys.features.repo.write_feast_yaml``). Feast's CLI then runs with that file
(``--feature-store-yaml``) from the definitions folder ``feature_repo/`` (``--chdir``: ``feast
apply`` registers the modules of the folder it runs in, and the home's ``feast/`` folder holds
none, so applying there would delete every registered object), with ``RECSYS_HOME`` set so the
definitions read the home's exports. This module does not import Feast: the child process does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys.features.errors import FeatureStoreError
from recsys.features.feast_home import FEATURES_DIR_ENV
from recsys.home import HOME_ENV, Paths

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
FEAST_YAML = "feature_store.yaml"


def feast_yaml_path(paths: Paths) -> Path:
    """The home's ``feature_store.yaml`` (written by ``recsys features apply``)."""
    return paths.feast / FEAST_YAML


def feast_command(paths: Paths, args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``feast ARGS`` on the home."""
    config = feast_yaml_path(paths)
    if not config.is_file():
        raise FeatureStoreError(
            f"{paths.home} has no Feast config ({config}): run "
            f"`recsys features apply --home {paths.home}` first"
        )
    script = Path(sys.executable).parent / "feast"
    feast = [str(script)] if script.is_file() else [sys.executable, "-m", "feast.cli.cli"]
    # RECSYS_FEATURES_DIR (set by recsys while it imports the definitions) would override the
    # home for the definitions; only RECSYS_HOME names it here.
    env = {name: value for name, value in os.environ.items() if name != FEATURES_DIR_ENV}
    env[HOME_ENV] = str(paths.home.resolve())
    command = [*feast, "--chdir", str(REPO_DIR), "--feature-store-yaml", str(config), *args]
    return command, env


def run_feast(paths: Paths, args: Sequence[str]) -> int:
    """Run ``feast ARGS`` on the home and return its exit code."""
    command, env = feast_command(paths, args)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached Feast too (same process group): `feast ui` and `serve` stop on it,
        # and their exit code is the answer.
        return process.wait()
