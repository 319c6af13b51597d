"""The DBFS REST API (``/api/2.0/dbfs/*``) backed by a local folder.

Semantics follow the real service where clients depend on them:

* ``read`` answers ``{"bytes_read": n, "data": "<base64>"}``; ``data`` is ``""`` (not absent) at or
  past the end of a file -- dagster-databricks' ``read_file`` loops ``while bytes_read ==
  block_size`` and asserts ``data`` is not None, and reads empty event files while a step starts.
* missing paths are ``404 RESOURCE_DOES_NOT_EXIST``; the step launcher polls for its events file
  and treats exactly that error code as "not written yet".
* blocks (``add-block``, ``put`` contents) and reads are limited to 1 MB, with the real
  ``MAX_BLOCK_SIZE_EXCEEDED`` / ``MAX_READ_SIZE_EXCEEDED`` codes.
* streaming uploads (create / add-block / close) become visible atomically on ``close``, so a
  reader never sees half a file.
* ``delete`` of a missing path succeeds (it is idempotent on the real service too).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ApiError, already_exists, does_not_exist, invalid_parameter
from .paths import DbfsRoot

MAX_BLOCK_BYTES = 1024 * 1024
MAX_READ_BYTES = 1024 * 1024
DEFAULT_READ_BYTES = 512 * 1024
HANDLE_IDLE_TIMEOUT_SECONDS = 600.0


def dbfs_root_disabled(path: str) -> ApiError:
    """What the DBFS API answers on a workspace whose DBFS root is disabled (the message is
    Databricks'; it is an access denial, 403 PERMISSION_DENIED)."""
    shown = path[len("dbfs:") :] if path.startswith("dbfs:") else path
    return ApiError(
        403,
        "PERMISSION_DENIED",
        f"Public DBFS root is disabled. Access is denied on path: {shown}",
    )


def _no_such_path(path: str) -> ApiError:
    return does_not_exist(f"No file or directory exists on path {path}.")


@dataclass
class _OpenStream:
    path: str
    target: Path
    temp: Path
    overwrite: bool
    last_used: float = field(default_factory=time.monotonic)


class DbfsService:
    """Implements the DBFS operations on ``<root>`` (thread-safe)."""

    def __init__(self, dbfs_root: Path, uploads_dir: Path, enabled: bool = True):
        # enabled=False: a workspace whose "DBFS root and mounts" access is disabled.
        self.enabled = enabled
        self.paths = DbfsRoot(dbfs_root)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        # In-flight uploads live outside the DBFS root so that listings never show them.
        self._uploads = Path(uploads_dir)
        self._uploads.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._streams: dict[int, _OpenStream] = {}
        # Real handles are large opaque ints; start somewhere random so stale handles from a
        # previous emulator process are not accidentally valid.
        self._handle_ids = itertools.count(random.randint(1_000, 9_000_000))

    # -- helpers -----------------------------------------------------------------------------

    def _resolve(self, path: Any) -> tuple[str, Path]:
        if not isinstance(path, str):
            raise invalid_parameter("Missing required field: path")
        if not self.enabled:
            raise dbfs_root_disabled(path)
        try:
            local = self.paths.local(path)
        except ValueError as exc:
            raise invalid_parameter(str(exc)) from None
        return self.paths.to_dbfs(local), local

    def _info(self, local: Path) -> dict[str, Any]:
        st = local.stat()
        is_dir = local.is_dir()
        return {
            "path": self.paths.to_dbfs(local),
            "is_dir": is_dir,
            "file_size": 0 if is_dir else st.st_size,
            "modification_time": int(st.st_mtime * 1000),
        }

    def _check_parent_is_not_a_file(self, local: Path, path: str) -> None:
        # ``local`` is always under the root (see DbfsRoot.local), so the walk ends there.
        for parent in local.parents:
            if parent == self.paths.root:
                break
            if parent.is_file():
                raise already_exists(
                    f"Cannot create {path}: a file exists at the prefix {self.paths.to_dbfs(parent)}."
                )

    def _expire_idle_streams(self) -> None:
        now = time.monotonic()
        for handle, stream in list(self._streams.items()):
            if now - stream.last_used > HANDLE_IDLE_TIMEOUT_SECONDS:
                stream.temp.unlink(missing_ok=True)
                del self._streams[handle]

    @staticmethod
    def _decode_block(data: Any) -> bytes:
        if not isinstance(data, str):
            raise invalid_parameter("Missing required field: data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise invalid_parameter("The data is not valid base64.") from None
        if len(raw) > MAX_BLOCK_BYTES:
            raise ApiError(
                400,
                "MAX_BLOCK_SIZE_EXCEEDED",
                f"The block of data ({len(raw)} bytes) exceeds the maximum of {MAX_BLOCK_BYTES} bytes.",
            )
        return raw

    def _publish(self, temp: Path, local: Path, path: str, overwrite: bool) -> None:
        if local.is_dir():
            temp.unlink(missing_ok=True)
            raise already_exists(f"A directory already exists at the input path {path}.")
        if local.exists() and not overwrite:
            temp.unlink(missing_ok=True)
            raise already_exists(f"A file or directory already exists at the input path {path}.")
        self._check_parent_is_not_a_file(local, path)
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, local)  # atomic: readers see the old file or the whole new one

    # -- streaming upload --------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        path, local = self._resolve(body.get("path"))
        overwrite = bool(body.get("overwrite", False))
        if local.is_dir() or (local.exists() and not overwrite):
            raise already_exists(f"A file or directory already exists at the input path {path}.")
        self._check_parent_is_not_a_file(local, path)
        with self._lock:
            self._expire_idle_streams()
            handle = next(self._handle_ids)
            temp = self._uploads / f"upload-{handle}"
            temp.write_bytes(b"")
            self._streams[handle] = _OpenStream(
                path=path, target=local, temp=temp, overwrite=overwrite
            )
        return {"handle": handle}

    def _stream(self, body: dict[str, Any]) -> tuple[int, _OpenStream]:
        if not self.enabled:
            raise dbfs_root_disabled("/")
        handle = body.get("handle")
        if not isinstance(handle, int) or isinstance(handle, bool):
            raise invalid_parameter("Missing required field: handle")
        with self._lock:
            self._expire_idle_streams()
            stream = self._streams.get(handle)
            if stream is None:
                raise does_not_exist(f"The handle {handle} does not exist.")
            stream.last_used = time.monotonic()
            return handle, stream

    def add_block(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = self._decode_block(body.get("data"))
        _, stream = self._stream(body)
        with stream.temp.open("ab") as fh:
            fh.write(raw)
        return {}

    def close(self, body: dict[str, Any]) -> dict[str, Any]:
        handle, stream = self._stream(body)
        with self._lock:
            self._streams.pop(handle, None)
        self._publish(stream.temp, stream.target, stream.path, stream.overwrite)
        return {}

    # -- single-shot operations --------------------------------------------------------------

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        path, local = self._resolve(body.get("path"))
        raw = self._decode_block(body.get("contents", ""))
        overwrite = bool(body.get("overwrite", False))
        if local.is_dir() or (local.exists() and not overwrite):
            raise already_exists(f"A file or directory already exists at the input path {path}.")
        with self._lock:
            temp = self._uploads / f"put-{next(self._handle_ids)}"
        temp.write_bytes(raw)
        self._publish(temp, local, path, overwrite)
        return {}

    def read(self, query: dict[str, str]) -> dict[str, Any]:
        path, local = self._resolve(query.get("path"))
        try:
            offset = int(query.get("offset", 0))
            length = int(query.get("length", DEFAULT_READ_BYTES))
        except ValueError:
            raise invalid_parameter("offset and length must be integers") from None
        if offset < 0 or length < 0:
            raise invalid_parameter("offset and length must be non-negative")
        if length > MAX_READ_BYTES:
            raise ApiError(
                400,
                "MAX_READ_SIZE_EXCEEDED",
                f"Cannot read more than {MAX_READ_BYTES} bytes at a time (requested {length}).",
            )
        if not local.exists():
            raise _no_such_path(path)
        if local.is_dir():
            raise invalid_parameter(f"The path {path} is a directory.")
        with local.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read(length)
        return {"bytes_read": len(chunk), "data": base64.b64encode(chunk).decode("ascii")}

    def get_status(self, query: dict[str, str]) -> dict[str, Any]:
        path, local = self._resolve(query.get("path"))
        if not local.exists():
            raise _no_such_path(path)
        return self._info(local)

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        path, local = self._resolve(query.get("path"))
        if not local.exists():
            raise _no_such_path(path)
        if local.is_file():
            return {"files": [self._info(local)]}
        files = [self._info(child) for child in sorted(local.iterdir())]
        # The real service omits "files" for an empty directory.
        return {"files": files} if files else {}

    def mkdirs(self, body: dict[str, Any]) -> dict[str, Any]:
        path, local = self._resolve(body.get("path"))
        if local.is_file():
            raise already_exists(f"A file exists at the input path {path}.")
        self._check_parent_is_not_a_file(local, path)
        local.mkdir(parents=True, exist_ok=True)
        return {}

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        path, local = self._resolve(body.get("path"))
        recursive = bool(body.get("recursive", False))
        if local == self.paths.root:
            raise invalid_parameter("Cannot delete the DBFS root.")
        if not local.exists():
            return {}
        if local.is_dir():
            if any(local.iterdir()):
                if not recursive:
                    raise ApiError(
                        400,
                        "IO_ERROR",
                        f"Directory {path} is not empty. Use recursive delete or remove contents first.",
                    )
                shutil.rmtree(local)
            else:
                local.rmdir()
        else:
            local.unlink()
        return {}

    def move(self, body: dict[str, Any]) -> dict[str, Any]:
        src_path, src = self._resolve(body.get("source_path"))
        dst_path, dst = self._resolve(body.get("destination_path"))
        if not src.exists():
            raise _no_such_path(src_path)
        if dst.exists():
            raise already_exists(
                f"A file or directory already exists at the input path {dst_path}."
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return {}
