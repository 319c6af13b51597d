"""Watched sources (`source.watch: true`): list an object's files cheaply and
fingerprint them, so the sensor can tell a new or changed file within one tick,
as Databricks' file arrival triggers do.

A listing is what the object's run would read (ingest.py's rules): the files
its `path` matches under the data root, a matched folder standing for every
file below it, names starting with '_' or '.' left out. Its fingerprint is a
hash of every file's relative path, size and modification time: a new, changed
or removed file changes it. The run then reads only what changed (append mode
reads only new or changed files).

Where the files are listed from, decided by the data root:
- a folder of this host (a local path, or `file:` URI): the file system, with
  ingest.py's own listing (no Spark);
- `/Volumes/<catalog>/<schema>/<volume>/...` that this host does not mount (the
  databricks target): Databricks' Files API, through databricks-sdk with its
  usual credentials (DATABRICKS_HOST / DATABRICKS_TOKEN or a profile);
- anything else (`dbfs:/`, `abfss://`, `s3://`, a path this host does not
  have): not watchable; each watched object gets a config error at the tick.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fanout_dagster.core.objects import SourceSpec

VOLUMES_PREFIX = "/Volumes/"
_MAGIC = re.compile(r"[*?[]")
# Listings at once when several objects are watched (file system or HTTP: I/O bound).
_LISTING_THREADS = 8


class WatchError(Exception):
    """The object's files cannot be listed from the Dagster host."""


@dataclass(frozen=True, order=True)
class ListedFile:
    relative: str  # relative to the data root
    size: int
    modified_ms: int


def fingerprint(files: Iterable[ListedFile]) -> str:
    lines = "\n".join(f"{f.relative}\t{f.size}\t{f.modified_ms}" for f in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()[:24]


def _is_uri(root: str) -> bool:
    if root.startswith("file:"):
        return False
    return "://" in root or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", root))


class SourceWatcher:
    """Lists watched sources under one data root."""

    def __init__(self, data_root: str, workspace_client: Callable[[], Any] | None = None) -> None:
        self.data_root = data_root
        self._workspace_client_factory = workspace_client or _default_workspace_client
        self._client: Any = None
        self._client_lock = threading.Lock()
        local = data_root.removeprefix("file://").removeprefix("file:")
        self.problem: str | None = None
        if _is_uri(data_root):
            self.kind = "none"
            self.problem = (
                f"the data root {data_root} is a URI: its files are listed by Spark on the "
                "cluster, and the sensor cannot see them; watch needs a data root that is a "
                "folder of the Dagster host or a /Volumes/... path (Files API), or set "
                "watch: false and refresh it with a schedule"
            )
        elif Path(local).is_dir():
            self.kind = "local"
        elif data_root.startswith(VOLUMES_PREFIX):
            self.kind = "volume"
        else:
            self.kind = "none"
            self.problem = (
                f"the data root {data_root} is not a folder of the Dagster host, so its "
                "files cannot be listed"
            )

    def list_files(self, source: SourceSpec) -> list[ListedFile]:
        if self.problem:
            raise WatchError(self.problem)
        if self.kind == "local":
            return self._list_local(source)
        return self._list_volume(source)

    def fingerprints(
        self, sources: Sequence[tuple[str, SourceSpec]]
    ) -> dict[str, str | WatchError]:
        """Fingerprint per key (or the WatchError saying why it cannot be listed)."""

        def one(item: tuple[str, SourceSpec]) -> tuple[str, str | WatchError]:
            key, source = item
            try:
                return key, fingerprint(self.list_files(source))
            except WatchError as exc:
                return key, exc

        if len(sources) <= 1 or self.problem:
            return dict(one(item) for item in sources)
        with ThreadPoolExecutor(_LISTING_THREADS, thread_name_prefix="watch") as pool:
            return dict(pool.map(one, sources))

    # -- the file system

    def _list_local(self, source: SourceSpec) -> list[ListedFile]:
        # ingest.py's listing, so the sensor sees the files the run will read. It
        # imports pyspark, which the code location has loaded already (the asset).
        from fanout_dagster.core.ingest import SourceError, _list_local

        try:
            files = _list_local(self.data_root, source)
        except (SourceError, OSError) as exc:
            raise WatchError(f"cannot list {source.path!r}: {exc}") from exc
        return [ListedFile(f.relative, f.size, f.modified_ms) for f in files]

    # -- Unity Catalog volumes, through the Files API

    def _workspace(self) -> Any:
        with self._client_lock:
            return self._connect()

    def _connect(self) -> Any:
        if self.problem:
            raise WatchError(self.problem)
        if self._client is None:
            from databricks.sdk.errors import NotFound

            try:
                client = self._workspace_client_factory()
                # The root itself must exist: a missing one is a misconfiguration,
                # not a source without files yet.
                client.files.get_directory_metadata(self.data_root.rstrip("/"))
            except NotFound as exc:
                self.problem = (
                    f"the data root {self.data_root} does not exist in the workspace "
                    f"(Files API: {exc})"
                )
                raise WatchError(self.problem) from exc
            except Exception as exc:  # no credentials, bad host...
                self.problem = (
                    f"cannot list the data root {self.data_root} with the Files API: {exc}"
                )
                raise WatchError(self.problem) from exc
            self._client = client
        return self._client

    def _list_volume(self, source: SourceSpec) -> list[ListedFile]:
        root = self.data_root.rstrip("/")
        parts = [p for p in PurePosixPath(source.path).parts if p not in ("", ".")]
        found: dict[str, ListedFile] = {}
        # (folder path relative to the root, remaining pattern parts)
        pending: list[tuple[str, list[str]]] = [("", parts)]
        while pending:
            folder, rest = pending.pop()
            part, rest = rest[0], rest[1:]
            if not _MAGIC.search(part):
                name = _join(folder, part)
                if not rest:
                    entry = self._stat(root, name)
                    if entry is None:
                        continue
                    if entry.is_directory:
                        self._walk(root, name, found)
                    elif not part.startswith(("_", ".")):
                        found[name] = _listed(name, entry)
                else:
                    pending.append((name, rest))
                continue
            for entry in self._entries(root, folder):
                name = entry.name or ""
                # Python's glob: a wildcard does not match a leading '.'.
                if name.startswith(".") and not part.startswith("."):
                    continue
                if not fnmatch.fnmatchcase(name, part):
                    continue
                relative = _join(folder, name)
                if rest:
                    if entry.is_directory:
                        pending.append((relative, rest))
                elif entry.is_directory:
                    self._walk(root, relative, found)
                elif not name.startswith(("_", ".")):
                    found[relative] = _listed(relative, entry)
        return sorted(found.values())

    def _walk(self, root: str, folder: str, found: dict[str, ListedFile]) -> None:
        """Every file below a matched folder (hidden names and folders left out)."""
        for entry in self._entries(root, folder):
            name = entry.name or ""
            if name.startswith(("_", ".")):
                continue
            relative = _join(folder, name)
            if entry.is_directory:
                self._walk(root, relative, found)
            else:
                found[relative] = _listed(relative, entry)

    def _entries(self, root: str, folder: str) -> list[Any]:
        from databricks.sdk.errors import NotFound

        path = f"{root}/{folder}/" if folder else f"{root}/"
        try:
            return list(self._workspace().files.list_directory_contents(path))
        except NotFound:
            return []
        except WatchError:
            raise
        except Exception as exc:
            raise WatchError(f"cannot list {path} with the Files API: {exc}") from exc

    def _stat(self, root: str, relative: str) -> Any:
        """The directory entry of one path, or None if it does not exist."""
        parent, _, name = relative.rpartition("/")
        for entry in self._entries(root, parent):
            if entry.name == name:
                return entry
        return None


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _listed(relative: str, entry: Any) -> ListedFile:
    return ListedFile(relative, int(entry.file_size or 0), int(entry.last_modified or 0))


def _default_workspace_client() -> Any:
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient()
