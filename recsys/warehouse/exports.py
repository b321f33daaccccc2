"""The Feast export folder of a home: written whole, published in one step, checked when read.

``<home>/features`` is a symbolic link to one folder of ``<home>/features.versions``. A build
writes its exports into a new folder there and seals it: ``manifest.json`` (the build's as_of
and every file's row count and sha256), and hard links to the files that others wrote into
the current ``features/`` (the models' embeddings). Publishing replaces the link by one
``rename``, so a reader of ``features/`` sees the previous build or the new one, never a mix,
and a build killed at any point leaves the previous one in place. The two newest previous
versions stay for readers still on them (Feast's registry names a version's folder); older
ones, and folders that killed builds left unsealed, are removed by the next publication. Only a
build, which holds the warehouse's write lock, writes here, so two publications never overlap.

A home from before versions (``features`` a plain folder) is moved into ``features.versions``
by its next build; were that build killed between the two renames, the link is missing until
the next build restores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from recsys.home import Paths

VERSIONS = "features.versions"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
KEEP_PREVIOUS = 2
_UNVERSIONED = "-unversioned"


class ExportsError(Exception):
    """The exports are not what their manifest says: a mix of builds, or damaged (one line)."""


@dataclass(frozen=True)
class ExportFile:
    rows: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What one build exported: its as_of and, per file name, the rows and the sha256."""

    as_of: datetime
    files: dict[str, ExportFile]


def versions_dir(paths: Paths) -> Path:
    return paths.home / VERSIONS


def start(paths: Paths) -> Path:
    """A new, empty, unpublished folder for a build's exports."""
    folder = versions_dir(paths) / _stamp()
    folder.mkdir(parents=True)
    return folder


def seal(paths: Paths, folder: Path, *, as_of: datetime, rows: dict[str, int]) -> Manifest:
    """Finish a build's folder: its manifest (written after its files are flushed to disk),
    and the files others wrote into the current exports; returns the manifest."""
    manifest = Manifest(
        as_of=as_of,
        files={
            name: ExportFile(rows=n, sha256=_sha256(folder / name, sync=True))
            for name, n in rows.items()
        },
    )
    text = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "as_of": as_of.isoformat(),
            "files": {name: vars(entry) for name, entry in manifest.files.items()},
        },
        indent=2,
    )
    partial = folder / f".{MANIFEST}.partial"
    with partial.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / MANIFEST)
    _carry_others_files(paths.features, folder)
    _sync_dir(folder)
    return manifest


def publish(paths: Paths, folder: Path) -> None:
    """Make a sealed folder the home's ``features`` (see the module docstring)."""
    if paths.features.is_dir() and not paths.features.is_symlink():
        os.rename(paths.features, versions_dir(paths) / f"{_stamp()}{_UNVERSIONED}")
    _point(paths, folder)
    _prune(paths, folder)


def verify(folder: Path) -> Manifest | None:
    """The folder's manifest after checking every file it lists (None: no manifest).

    Raises ``ExportsError`` when a listed file is missing or differs from the manifest."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ExportsError(
                f"{path} has format version {data.get('format_version')!r}, expected "
                f"{FORMAT_VERSION}: run `recsys build`"
            )
        manifest = Manifest(
            as_of=datetime.fromisoformat(data["as_of"]),
            files={name: ExportFile(**entry) for name, entry in data["files"].items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportsError(f"{path} is unreadable ({exc}): run `recsys build`") from None
    for name, entry in manifest.files.items():
        if not (folder / name).is_file():
            raise ExportsError(
                f"{folder / name} is missing from the build as of {manifest.as_of}: "
                "run `recsys build`"
            )
        if _sha256(folder / name) != entry.sha256:
            raise ExportsError(
                f"{folder / name} is not the file of the build as of {manifest.as_of} "
                "(its sha256 differs): the exports mix builds; run `recsys build`"
            )
    return manifest


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _sha256(path: Path, *, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _carry_others_files(current: Path, folder: Path) -> None:
    """Hard-link into the new folder the files of the current one that the build did not
    write (the models' embeddings), so that publishing does not drop them."""
    if not current.is_dir():
        return
    for path in current.iterdir():
        target = folder / path.name
        if path.is_file() and not path.name.startswith(".") and not target.exists():
            try:
                os.link(path, target)
            except OSError:  # a file system without hard links
                shutil.copy2(path, target)


def _point(paths: Paths, folder: Path) -> None:
    """Replace the ``features`` link by one pointing at ``folder``, in one rename."""
    link = paths.home / f".features.{os.getpid()}.link"
    link.unlink(missing_ok=True)
    # Relative, so that a copied or moved home keeps working.
    os.symlink(folder.relative_to(paths.home), link)
    os.replace(link, paths.features)
    _sync_dir(paths.home)


def _prune(paths: Paths, published: Path) -> None:
    """Remove unsealed folders and all but the ``KEEP_PREVIOUS`` newest previous versions."""
    folders = sorted(p for p in versions_dir(paths).iterdir() if p.is_dir() and p != published)
    previous = [p for p in folders if (p / MANIFEST).exists() or p.name.endswith(_UNVERSIONED)]
    unsealed = [p for p in folders if p not in previous]
    for folder in unsealed + previous[: max(len(previous) - KEEP_PREVIOUS, 0)]:
        shutil.rmtree(folder, ignore_errors=True)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
