"""Model folders: a manifest that lists every file with its sha256, verified before loading.

A trained model is a folder (``models/<version>/``) holding ``manifest.json`` and its files in
open formats (SavedModel, npz, Parquet, JSON). ``write_manifest`` lists every file below the
folder; ``verify`` refuses a folder whose manifest is missing, foreign or of another format
version, or whose files differ from the list (changed, truncated, missing or extra);
``latest_verified`` picks the newest folder that verifies. ``write_json`` / ``read_json`` and
``save_arrays`` / ``load_arrays`` store metadata and plain arrays, never serialised code;
``rehash`` updates the entries of files rewritten in place (``recsys forget``).

No TensorFlow here: the CLI and the service check folders before paying for its import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# The file names of a saved interest model (``recsys.models.interest``); the service
# (``recsys.models.saved``) reads the serving ones.
MANIFEST_FILE = MANIFEST
ITEMS_FILE = "items.parquet"
QUERY_TOWER_DIR = "query_tower"
INDEX_DIR = "index"
ANN_FILE = "ann.npz"
ENCODER_JSON = "encoder.json"
ENCODER_ARRAYS = "encoder.npz"

# Keys ``write_manifest`` sets itself; ``extra`` may not override them.
_RESERVED = ("format_version", "model", "version", "as_of", "created_at", "files")

log = logging.getLogger(__name__)


class ArtifactError(ValueError):
    """A model folder or artefact file that must not be loaded; the message is one line."""


@contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A binary handle whose content replaces ``path`` only once the block succeeds, so readers
    never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2) + "\n"
    with _atomic(path) as handle:
        handle.write(text.encode())


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; ArtifactError if it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path} is not JSON ({_one_line(err)})") from None


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    """Write named arrays to an npz file atomically; arrays of Python objects are refused (they
    could only be stored as serialised code)."""
    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise ArtifactError(f"{path}: array {name} holds Python objects, not plain values")
    with _atomic(path) as handle:
        np.savez(handle, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file written by ``save_arrays``; numpy's default refuses arrays of
    Python objects."""
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ArtifactError(
            f"{path} is not an npz file of plain arrays ({_one_line(err)})"
        ) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _files(directory: Path) -> list[str]:
    """Relative posix paths of every file below ``directory`` except its manifest, sorted."""
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            relative = (Path(root) / name).relative_to(directory).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def write_manifest(
    directory: Path, *, model: str, version: str, as_of: datetime, extra: dict
) -> dict:
    """Write ``directory/manifest.json`` listing every other file below it; return the manifest.

    Keys: format_version, model, version, as_of and created_at (ISO), the ``extra`` metadata
    (feature config, chosen ranker, validation figures, ...) and ``files``: sorted
    ``{"path", "sha256", "bytes"}`` entries. Call it last, once every file is written.
    """
    directory = Path(directory)
    clashes = sorted(set(extra) & set(_RESERVED))
    if clashes:
        raise ValueError(f"manifest extra may not set {', '.join(clashes)}")
    files = [
        {
            "path": path,
            "sha256": _sha256(directory / path),
            "bytes": (directory / path).stat().st_size,
        }
        for path in _files(directory)
    ]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "version": version,
        "as_of": as_of.isoformat(),
        "created_at": datetime.now(UTC).isoformat(),
        **extra,
        "files": files,
    }
    write_json(directory / MANIFEST, manifest)
    return manifest


def rehash(directory: Path, rewritten: Iterable[str]) -> dict:
    """Update the manifest entries (sha256, bytes) of listed files that were rewritten in place,
    and return the manifest. Every other key stays, so the folder keeps its version, as_of and
    created_at (``latest_verified`` ranks it as before). Verify the folder before rewriting its
    files: this re-signs whatever the files now hold."""
    directory = Path(directory)
    manifest = _checked_manifest(directory)
    changed = set(rewritten)
    unlisted = sorted(changed - {entry["path"] for entry in manifest["files"]})
    if unlisted:
        raise ArtifactError(f"{directory}: file {unlisted[0]} is not in the manifest")
    for entry in manifest["files"]:
        if entry["path"] in changed:
            file = directory / entry["path"]
            entry["sha256"], entry["bytes"] = _sha256(file), file.stat().st_size
    write_json(directory / MANIFEST, manifest)
    return manifest


def _timestamp(value: Any) -> datetime:
    """An ISO timestamp as an aware datetime (naive ones are UTC), so any two compare."""
    stamp = datetime.fromisoformat(value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _checked_manifest(directory: Path) -> dict:
    """The folder's manifest after checking its shape (not yet its files)."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}: not a saved model (or a partial one)")
    try:
        manifest = read_json(path)
    except ArtifactError:
        raise ArtifactError(f"{directory}: {MANIFEST} is not JSON: not a saved model") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{directory}: {MANIFEST} is not a JSON object: not a saved model")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise ArtifactError(
            f"{directory}: format version {found!r}, this recsys reads {FORMAT_VERSION}: "
            "retrain with `recsys train`"
        )
    for key in ("model", "version", "as_of", "created_at"):
        if not isinstance(manifest.get(key), str):
            raise ArtifactError(f"{directory}: {MANIFEST} lacks a string {key!r}")
    for key in ("as_of", "created_at"):
        try:
            _timestamp(manifest[key])
        except ValueError:
            raise ArtifactError(f"{directory}: {key} {manifest[key]!r} is not ISO 8601") from None
    files = manifest.get("files")
    if not isinstance(files, list) or not all(_is_entry(entry) for entry in files):
        raise ArtifactError(
            f"{directory}: {MANIFEST} 'files' must list {{path, sha256, bytes}} entries"
        )
    return manifest


def _is_entry(entry: Any) -> bool:
    """A well-formed ``files`` entry whose path stays inside the folder."""
    if not isinstance(entry, dict):
        return False
    path, sha, size = entry.get("path"), entry.get("sha256"), entry.get("bytes")
    # type() not isinstance(): JSON true/false load as bool, a subclass of int.
    if not (isinstance(path, str) and isinstance(sha, str) and type(size) is int):
        return False
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def verify(directory: Path) -> dict:
    """The folder's manifest, once the folder is known complete and unchanged.

    Raises ArtifactError (one line: the folder and its first problem) when the manifest is
    missing, not JSON, not an object or of another format version, or when a listed file is
    missing or differs in size or sha256, or a file below the folder is not listed.
    """
    directory = Path(directory)
    manifest = _checked_manifest(directory)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    # Sizes first: a truncated copy fails without hashing gigabytes.
    for path, entry in sorted(listed.items()):
        file = directory / path
        if not file.is_file():
            raise ArtifactError(f"{directory}: file {path} is missing (partial copy?)")
        if file.stat().st_size != entry["bytes"]:
            raise ArtifactError(
                f"{directory}: file {path} has {file.stat().st_size} bytes, the manifest says "
                f"{entry['bytes']} (tampered or partial)"
            )
    unlisted = [path for path in _files(directory) if path not in listed]
    if unlisted:
        raise ArtifactError(f"{directory}: file {unlisted[0]} is not in the manifest")
    for path, entry in sorted(listed.items()):
        if _sha256(directory / path) != entry["sha256"]:
            raise ArtifactError(
                f"{directory}: file {path} does not match its sha256 (tampered or partial)"
            )
    return manifest


def latest_verified(models_dir: Path, model: str | None = None) -> tuple[Path, dict]:
    """(folder, manifest) of the newest model folder below ``models_dir`` that verifies.

    Newest by (as_of, created_at, folder name), among subfolders with a manifest (of ``model``
    when given). Folders that fail ``verify`` are skipped with a one-line warning, so a planted
    or half-copied folder with a later as_of is never chosen. ArtifactError if none verifies.
    """
    models_dir = Path(models_dir)
    candidates = []
    folders = sorted(models_dir.iterdir()) if models_dir.is_dir() else []
    for folder in folders:
        # Dot folders are saves in progress (written under a temp name, then renamed).
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = _checked_manifest(folder)
        except ArtifactError as err:
            log.warning("skipping %s", err)
            continue
        if model is None or manifest["model"] == model:
            key = (_timestamp(manifest["as_of"]), _timestamp(manifest["created_at"]), folder.name)
            candidates.append((key, folder))
    for _, folder in sorted(candidates, reverse=True):
        try:
            return folder, verify(folder)
        except ArtifactError as err:
            log.warning("skipping %s", err)
    raise ArtifactError(f"no complete, verified model in {models_dir}: run `recsys train` first")
