"""DBFS path handling shared by the server (REST API) and the task side (dbutils, bootstrap).

DBFS paths are written three ways on Databricks:

* ``dbfs:/x/y`` (also ``dbfs:///x/y``, which dagster-databricks produces) -- the URI form;
* ``/x/y`` -- the REST API and ``dbutils.fs`` treat a bare absolute path as DBFS;
* ``/dbfs/x/y`` -- the FUSE mount that plain Python file APIs see on a cluster.

All of them map to ``<dbfs_root>/x/y`` on the local disk. We never create a real ``/dbfs``.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

FUSE_PREFIX = "/dbfs"
SCHEME = "dbfs:"


def normalize_dbfs_path(path: str) -> str:
    """Return the canonical absolute DBFS path (``/x/y``) for any accepted spelling.

    Raises ValueError for empty or relative paths. ``..`` cannot escape the root because
    normpath of an absolute path clamps at ``/``.
    """
    if not isinstance(path, str) or not path:
        raise ValueError("Path must be a non-empty string")
    if path.startswith(SCHEME):
        path = path[len(SCHEME) :]
    if not path.startswith("/"):
        raise ValueError(f"Path must be absolute: {path}")
    # posixpath.normpath keeps a leading '//' (POSIX allows it to be special), so strip first.
    return "/" + posixpath.normpath("/" + path.lstrip("/")).lstrip("/")


class DbfsRoot:
    """Maps DBFS paths onto a local directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    def local(self, path: str) -> Path:
        """Local file for a DBFS path in any accepted spelling (ValueError if invalid)."""
        canonical = normalize_dbfs_path(path)
        return self.root.joinpath(canonical.lstrip("/")) if canonical != "/" else self.root

    def to_dbfs(self, local: Path | str) -> str:
        """Canonical DBFS path (``/x/y``) of a local file under the root."""
        rel = Path(local).resolve().relative_to(self.root)
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    def rewrite_task_path(self, value: str) -> str:
        """Rewrite a path a task receives (python_file, parameters) to the local DBFS folder.

        ``/dbfs/...`` (the FUSE form) and ``dbfs:/...`` are rewritten; anything else (other
        parameters, local paths) is returned unchanged.
        """
        if value == FUSE_PREFIX or value.startswith(FUSE_PREFIX + "/"):
            return str(self.local(value[len(FUSE_PREFIX) :] or "/"))
        if value.startswith(SCHEME):
            return str(self.local(value))
        return value
