"""The ``dbutils`` object a task sees (task side; runs inside the task process).

Only the parts pipelines use on job clusters: ``dbutils.fs`` (ls, cp, mv, rm, mkdirs, put, head)
and ``dbutils.secrets`` (get, getBytes, list, listScopes). ``dbutils.fs`` works directly on the
emulator's DBFS folder (no HTTP round trip), with the same path rules as on a cluster: a bare
absolute path or ``dbfs:/...`` is DBFS, ``file:/...`` is the local disk.
"""

from __future__ import annotations

import base64
import builtins
import shutil
from collections import namedtuple
from pathlib import Path

from .paths import DbfsRoot, normalize_dbfs_path


class FileInfo(namedtuple("FileInfo", ["path", "name", "size", "modificationTime"])):
    """One entry of ``dbutils.fs.ls`` (directories end with '/', as on Databricks)."""


class SecretScope(namedtuple("SecretScope", ["name"])):
    def getName(self) -> str:  # noqa: N802 - Databricks' spelling
        return self.name


class SecretMetadata(namedtuple("SecretMetadata", ["key"])):
    pass


class SecretNotFoundError(Exception):
    pass


class DbfsDisabledError(Exception):
    """dbutils.fs on DBFS when the workspace's DBFS root is disabled."""


class FsUtils:
    def __init__(self, dbfs: DbfsRoot, volumes_root: Path | None = None, dbfs_enabled: bool = True):
        self._dbfs = dbfs
        self._volumes = volumes_root.resolve() if volumes_root else None
        self._dbfs_enabled = dbfs_enabled

    def _local(self, path: str) -> Path:
        if path.startswith("file:"):
            return Path(path[len("file:") :]).resolve()
        try:
            canonical = normalize_dbfs_path(path)
        except ValueError as exc:
            raise ValueError(f"Invalid DBFS path {path!r}: {exc}") from None
        if self._volumes is not None and canonical.startswith("/Volumes/"):
            # dbfs:/Volumes/... and /Volumes/... are Unity Catalog volumes.
            return self._volumes.joinpath(canonical[len("/Volumes/") :])
        if not self._dbfs_enabled:
            raise DbfsDisabledError(
                "[DBFS_DISABLED] Public DBFS root is disabled. Access is denied on path: "
                f"{canonical} SQLSTATE: 56038"
            )
        return self._dbfs.local(canonical)

    def _uri(self, local: Path) -> str:
        if self._volumes is not None and local.resolve().is_relative_to(self._volumes):
            return "dbfs:/Volumes/" + local.resolve().relative_to(self._volumes).as_posix()
        try:
            return "dbfs:" + self._dbfs.to_dbfs(local)
        except ValueError:
            return "file:" + str(local)

    def _info(self, local: Path) -> FileInfo:
        st = local.stat()
        if local.is_dir():
            return FileInfo(
                self._uri(local).rstrip("/") + "/", local.name + "/", 0, int(st.st_mtime * 1000)
            )
        return FileInfo(self._uri(local), local.name, st.st_size, int(st.st_mtime * 1000))

    def ls(self, dir: str) -> list[FileInfo]:  # noqa: A002 - Databricks' parameter name
        local = self._local(dir)
        if not local.exists():
            raise FileNotFoundError(f"File {dir} does not exist.")
        if local.is_file():
            return [self._info(local)]
        return [self._info(child) for child in sorted(local.iterdir())]

    def mkdirs(self, dir: str) -> bool:  # noqa: A002
        self._local(dir).mkdir(parents=True, exist_ok=True)
        return True

    def put(self, file: str, contents: str, overwrite: bool = False) -> bool:
        local = self._local(file)
        if local.exists() and not overwrite:
            raise FileExistsError(f"File {file} already exists; pass overwrite=True to replace it.")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(contents.encode("utf-8"))
        return True

    def head(self, file: str, maxBytes: int = 65536) -> str:  # noqa: N803
        local = self._local(file)
        if not local.is_file():
            raise FileNotFoundError(f"File {file} does not exist.")
        with local.open("rb") as fh:
            return fh.read(maxBytes).decode("utf-8", errors="replace")

    def rm(self, dir: str, recurse: bool = False) -> bool:  # noqa: A002
        local = self._local(dir)
        if not local.exists():
            return False
        if local.is_dir():
            if any(local.iterdir()) and not recurse:
                raise OSError(f"Directory {dir} is not empty; pass recurse=True to delete it.")
            shutil.rmtree(local)
        else:
            local.unlink()
        return True

    def _target(self, src: Path, to: str) -> Path:
        dst = self._local(to)
        # Like Hadoop's FileUtil: copying onto an existing directory copies into it.
        return dst / src.name if dst.is_dir() else dst

    def cp(self, from_: str, to: str, recurse: bool = False) -> bool:
        src = self._local(from_)
        if not src.exists():
            raise FileNotFoundError(f"File {from_} does not exist.")
        dst = self._target(src, to)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            if not recurse:
                raise OSError(f"{from_} is a directory; pass recurse=True to copy it.")
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
        return True

    def mv(self, from_: str, to: str, recurse: bool = False) -> bool:
        src = self._local(from_)
        if not src.exists():
            raise FileNotFoundError(f"File {from_} does not exist.")
        if src.is_dir() and not recurse:
            raise OSError(f"{from_} is a directory; pass recurse=True to move it.")
        dst = self._target(src, to)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        return True

    def __repr__(self) -> str:
        return "<dbutils.fs (emulated: ls, cp, mv, rm, mkdirs, put, head)>"


class SecretsUtils:
    def __init__(self, secrets: dict[str, dict[str, str]]):
        # {scope: {key: base64 value}}; decoded on access only
        self._secrets = secrets

    def getBytes(self, scope: str, key: str) -> bytes:  # noqa: N802
        encoded = self._secrets.get(scope, {}).get(key)
        if encoded is None:
            raise SecretNotFoundError(f"Secret does not exist with scope: {scope} and key: {key}")
        return base64.b64decode(encoded)

    def get(self, scope: str, key: str) -> str:
        return self.getBytes(scope, key).decode("utf-8")

    def list(self, scope: str) -> list[SecretMetadata]:
        if scope not in self._secrets:
            raise SecretNotFoundError(f"Scope {scope} does not exist")
        return [SecretMetadata(k) for k in sorted(self._secrets[scope])]

    def listScopes(self) -> builtins.list[SecretScope]:  # noqa: N802
        return [SecretScope(s) for s in sorted(self._secrets)]

    def __repr__(self) -> str:
        return "<dbutils.secrets (emulated: get, getBytes, list, listScopes)>"


class DBUtils:
    def __init__(
        self,
        dbfs: DbfsRoot,
        secrets: dict[str, dict[str, str]],
        volumes_root: Path | None = None,
        dbfs_enabled: bool = True,
    ):
        self.fs = FsUtils(dbfs, volumes_root, dbfs_enabled)
        self.secrets = SecretsUtils(secrets)

    def __repr__(self) -> str:
        return "<dbutils (Databricks emulator)>"
