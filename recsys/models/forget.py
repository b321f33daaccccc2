"""Erase one user from the saved models of a home (``recsys forget``).

A model folder holds user rows in ``ann.npz`` (``gnn_user_ids`` and the aligned rows of
``gnn_user``: the GNN user embeddings as of the model's as_of, ``InterestModel.save``) and in any
Parquet file with a ``user_id`` column. Those files are rewritten without the user (atomically),
and the manifest's entries of the rewritten files are updated (``artifacts.rehash``), so the
folder still verifies and stays the one ``latest_verified`` picks.

A folder that did not verify beforehand is scrubbed too, but not re-signed: forgetting never
blesses a file that was changed by someone else. The query tower hashes user ids into buckets
shared with other users: it holds no row of the user's own, and its weights keep the user's share
of the training until the next ``recsys train``.

No TensorFlow here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from recsys.models.artifacts import (
    ANN_FILE,
    MANIFEST,
    ArtifactError,
    load_arrays,
    rehash,
    save_arrays,
    verify,
)
from recsys.warehouse.forget import drop_user_rows

# The user rows of ANN_FILE: ids and the embeddings aligned with them.
ANN_USER_IDS = "gnn_user_ids"
ANN_USERS = "gnn_user"

log = logging.getLogger(__name__)


def forget_user(models_dir: Path, user_id: int) -> dict[str, int]:
    """Remove the user's rows from every model folder below ``models_dir`` (module doc); returns
    the rows removed per file (``<folder>/<file>``), every file with user rows included."""
    removed: dict[str, int] = {}
    folders = sorted(Path(models_dir).iterdir()) if Path(models_dir).is_dir() else []
    for folder in folders:
        # Dot folders are saves in progress (``InterestModel.save`` renames them when done).
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            verify(folder)
            signed = True
        except ArtifactError as err:
            log.warning("forgetting without re-signing: %s", err)
            signed = False
        counts = {}
        if (folder / ANN_FILE).is_file():
            counts[ANN_FILE] = _forget_in_ann(folder / ANN_FILE, user_id)
        for path in sorted(folder.rglob("*.parquet")):
            dropped = drop_user_rows(path, user_id)
            if dropped is not None:
                counts[path.relative_to(folder).as_posix()] = dropped
        rewritten = [name for name, count in counts.items() if count]
        if signed and rewritten:
            rehash(folder, rewritten)
        removed.update({f"{folder.name}/{name}": count for name, count in counts.items()})
    return removed


def _forget_in_ann(path: Path, user_id: int) -> int:
    """Rewrite the ANN file without the user's embedding row; returns the rows removed."""
    arrays = load_arrays(path)
    if ANN_USER_IDS not in arrays:
        return 0
    keep = arrays[ANN_USER_IDS] != user_id
    removed = int((~keep).sum())
    if removed:
        # masking keeps the ids ascending, as ``SavedRetrieval`` looks them up
        arrays[ANN_USER_IDS] = arrays[ANN_USER_IDS][keep]
        arrays[ANN_USERS] = arrays[ANN_USERS][keep]
        save_arrays(path, **arrays)
    return removed
