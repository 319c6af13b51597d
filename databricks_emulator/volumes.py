"""Unity Catalog volumes and the Files API (``/api/2.0/fs/files``, ``/api/2.0/fs/directories``).

A volume ``catalog.schema.volume`` is the folder ``<root>/volumes/<catalog>/<schema>/<volume>``,
so ``/Volumes/<catalog>/<schema>/<volume>/x`` is ``<root>/volumes/<catalog>/<schema>/<volume>/x``
(the same folder is bind-mounted on ``/Volumes`` inside task processes, see :mod:`.task_setup`).
Volumes exist only when declared (``--volume main.raw.landing``, the config file's
``"volumes"`` list, ``POST /emulator/volumes`` or ``emu.create_volume``).

Answers follow the real service (as observed on workspaces; see the README for sources):

* upload: ``PUT /fs/files/<path>?overwrite=`` with the raw bytes; ``overwrite`` defaults to true;
  parent directories are created; an existing file with ``overwrite=false`` is
  ``409 ALREADY_EXISTS`` "The file being created already exists."; success is ``204``.
* download: ``GET`` answers the bytes with ``Content-Type: application/octet-stream``,
  ``Content-Length`` and ``Last-Modified`` (RFC 7231 date); ``Range: bytes=a-b`` answers ``206``.
  ``HEAD`` answers the same headers and no body.
* a missing file is ``404 NOT_FOUND`` "The file being accessed is not found."; a missing
  directory ``404 NOT_FOUND`` "The directory being accessed is not found."
* directories: ``PUT`` creates it and its parents (idempotent; a file in the way is ``409``),
  ``GET`` lists ``{"contents": [...], "next_page_token": ...}`` at most ``page_size`` (max 1000)
  entries a page, ``HEAD`` checks it, ``DELETE`` removes an empty one; a non-empty one is
  ``400 INVALID_PARAMETER_VALUE`` with the ErrorInfo reason ``FILES_API_DIRECTORY_IS_NOT_EMPTY``.
* a path in an undeclared volume is ``404 NOT_FOUND`` "Volume '<c>.<s>.<v>' does not exist.";
  a path outside ``/Volumes/<catalog>/<schema>/<volume>`` is ``400 INVALID_PARAMETER_VALUE``.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import re
import tempfile
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .errors import ApiError, invalid_parameter

VOLUMES_PREFIX = "/Volumes"
MAX_PAGE_SIZE = 1000
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

FILE_NOT_FOUND = "The file being accessed is not found."
DIRECTORY_NOT_FOUND = "The directory being accessed is not found."
FILE_EXISTS = "The file being created already exists."


def parse_volume_name(name: str) -> tuple[str, str, str]:
    """``catalog.schema.volume`` -> its three parts (ValueError if malformed)."""
    parts = name.split(".") if isinstance(name, str) else []
    if len(parts) != 3 or not all(_NAME.match(p) for p in parts):
        raise ValueError(f"A volume is named catalog.schema.volume (got {name!r})")
    return parts[0], parts[1], parts[2]


@dataclass
class RawRequest:
    """What a raw (non-JSON) route sees: the Files API sends and answers bytes."""

    method: str
    path: str  # the part of the URL after the route prefix, still percent-encoded
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class VolumeStore:
    """The declared volumes and their folders (thread-safe)."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._volumes: set[tuple[str, str, str]] = set()

    def create(self, name: str) -> Path:
        key = parse_volume_name(name)
        folder = self.root.joinpath(*key)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._volumes.add(key)
        return folder

    def names(self) -> list[str]:
        with self._lock:
            return sorted(".".join(k) for k in self._volumes)

    def catalogs(self) -> list[str]:
        with self._lock:
            return sorted({k[0] for k in self._volumes})

    def resolve(self, path: str) -> tuple[str, Path, Path]:
        """A ``/Volumes/...`` path -> (canonical path, local file, local volume root).

        Raises the Files API's errors for paths outside volumes and for undeclared volumes.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid_parameter(f"Invalid path: {path!r}. The path must be absolute.")
        canonical = posixpath.normpath(path)
        if canonical.startswith("//"):
            canonical = "/" + canonical.lstrip("/")
        parts = canonical.split("/")[1:]
        if len(parts) < 4 or parts[0] != VOLUMES_PREFIX[1:]:
            raise invalid_parameter(
                f"Invalid path: {path}. The Files API supports paths of Unity Catalog volumes "
                "(/Volumes/<catalog>/<schema>/<volume>/<path>) only."
            )
        key = (parts[1], parts[2], parts[3])
        with self._lock:
            known = key in self._volumes
        if not known:
            raise ApiError(404, "NOT_FOUND", f"Volume '{'.'.join(key)}' does not exist.")
        volume_root = self.root.joinpath(*key)
        return canonical, self.root.joinpath(*parts[1:]), volume_root


def _http_date(mtime: float) -> str:
    return formatdate(mtime, usegmt=True)


def _file_headers(local: Path) -> dict[str, str]:
    st = local.stat()
    return {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(st.st_size),
        "Last-Modified": _http_date(st.st_mtime),
    }


def _bool_param(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None or value == "":
        return default
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise invalid_parameter(f"Invalid value for parameter {name}: {value}")


class FilesApi:
    """``/api/2.0/fs/files`` and ``/api/2.0/fs/directories`` on the declared volumes."""

    def __init__(self, volumes: VolumeStore, uploads_dir: Path):
        self.volumes = volumes
        self._uploads = Path(uploads_dir)
        self._uploads.mkdir(parents=True, exist_ok=True)

    def _resolve(self, request: RawRequest) -> tuple[str, Path, Path]:
        return self.volumes.resolve(unquote(request.path) or "/")

    # -- files ---------------------------------------------------------------------------------

    def files(self, request: RawRequest) -> RawResponse:
        path, local, volume_root = self._resolve(request)
        if request.method == "PUT":
            return self._upload(request, path, local, volume_root)
        if request.method in ("GET", "HEAD"):
            if not local.is_file():
                raise ApiError(404, "NOT_FOUND", FILE_NOT_FOUND)
            if request.method == "HEAD":
                return RawResponse(200, _file_headers(local))
            return self._download(request, local)
        if request.method == "DELETE":
            if not local.is_file():
                raise ApiError(404, "NOT_FOUND", FILE_NOT_FOUND)
            local.unlink()
            return RawResponse(204)
        if request.method == "POST":
            # initiate-upload / complete-upload of the experimental multipart client: the
            # emulator has no cloud storage to presign for, so it is not offered.
            raise ApiError(
                501, "NOT_IMPLEMENTED", "Multipart uploads are not supported by the emulator."
            )
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"Method {request.method} is not allowed.")

    def _upload(
        self, request: RawRequest, path: str, local: Path, volume_root: Path
    ) -> RawResponse:
        overwrite = _bool_param(request.query, "overwrite", True)
        if local == volume_root or local.is_dir():
            raise ApiError(409, "ALREADY_EXISTS", f"A directory already exists at {path}.")
        for parent in local.parents:
            if parent == volume_root:
                break
            if parent.is_file():
                raise ApiError(409, "ALREADY_EXISTS", f"A file already exists at {parent}.")
        if local.exists() and not overwrite:
            raise ApiError(409, "ALREADY_EXISTS", FILE_EXISTS)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self._uploads, prefix="files-api-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(request.body)
        if not overwrite:
            # Atomic "create if absent": a concurrent writer that won the race keeps its file.
            try:
                os.link(temp, local)
            except FileExistsError:
                raise ApiError(409, "ALREADY_EXISTS", FILE_EXISTS) from None
            finally:
                os.unlink(temp)
        else:
            os.replace(temp, local)  # readers see the old file or the whole new one
        return RawResponse(204)

    def _download(self, request: RawRequest, local: Path) -> RawResponse:
        data = local.read_bytes()
        headers = _file_headers(local)
        range_header = request.headers.get("range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            size = len(data)
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = int(match.group(2)) if match.group(2) else size - 1
                else:  # suffix range: the last n bytes
                    start, end = max(0, size - int(match.group(2))), size - 1
                end = min(end, size - 1)
                if start >= size or start > end:
                    return RawResponse(416, {"Content-Range": f"bytes */{size}"})
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                headers["Content-Length"] = str(end - start + 1)
                return RawResponse(206, headers, data[start : end + 1])
        return RawResponse(200, headers, data)

    # -- directories ---------------------------------------------------------------------------

    def directories(self, request: RawRequest) -> RawResponse:
        path, local, volume_root = self._resolve(request)
        if request.method == "PUT":
            for candidate in (local, *local.parents):
                if candidate == volume_root:
                    break
                if candidate.is_file():
                    raise ApiError(
                        409, "ALREADY_EXISTS", f"A file already exists at {path} or a parent."
                    )
            local.mkdir(parents=True, exist_ok=True)
            return RawResponse(204)
        if not local.is_dir():
            raise ApiError(
                404, "NOT_FOUND", DIRECTORY_NOT_FOUND, reason="FILES_API_DIRECTORY_IS_NOT_FOUND"
            )
        if request.method == "HEAD":
            return RawResponse(200)
        if request.method == "GET":
            return self._list(request, path, local)
        if request.method == "DELETE":
            if local == volume_root:
                raise invalid_parameter(f"Cannot delete the root directory of volume {path}.")
            if any(local.iterdir()):
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"Cannot delete directory {path}: the directory is not empty.",
                    reason="FILES_API_DIRECTORY_IS_NOT_EMPTY",
                )
            local.rmdir()
            return RawResponse(204)
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"Method {request.method} is not allowed.")

    def _list(self, request: RawRequest, path: str, local: Path) -> RawResponse:
        try:
            page_size = int(request.query.get("page_size") or MAX_PAGE_SIZE)
        except ValueError:
            raise invalid_parameter("page_size must be an integer") from None
        if page_size < 1:
            raise invalid_parameter("page_size must be positive")
        page_size = min(page_size, MAX_PAGE_SIZE)  # documented: larger values are coerced
        token = request.query.get("page_token") or ""
        after = ""
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
                after = str(state["after"])
                if state.get("path") != path:
                    raise ValueError("page token of another listing")
            except (ValueError, KeyError, TypeError):
                raise invalid_parameter(f"Invalid page_token: {token}") from None
        names = sorted(p.name for p in local.iterdir() if p.name > after)
        page, more = names[:page_size], len(names) > page_size
        contents: list[dict[str, Any]] = []
        for name in page:
            child = local / name
            try:
                st = child.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            entry_path = posixpath.join(path, name)
            if child.is_dir():
                contents.append({"path": entry_path + "/", "is_directory": True, "name": name})
            else:
                contents.append(
                    {
                        "path": entry_path,
                        "is_directory": False,
                        "file_size": st.st_size,
                        "last_modified": int(st.st_mtime * 1000),
                        "name": name,
                    }
                )
        body: dict[str, Any] = {}
        if contents:
            body["contents"] = contents
        if more:
            body["next_page_token"] = base64.urlsafe_b64encode(
                json.dumps({"path": path, "after": page[-1]}).encode()
            ).decode()
        payload = json.dumps(body).encode()
        return RawResponse(
            200, {"Content-Type": "application/json", "Content-Length": str(len(payload))}, payload
        )
