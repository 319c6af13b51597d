"""What a task process sees of the file system: ``/Volumes`` and ``/dbfs`` as FUSE mounts.

On a cluster, ``/Volumes/<catalog>/<schema>/<volume>/...`` and ``/dbfs/...`` are FUSE mounts
that plain Python (``open``, ``os.stat``, ``glob``) and Spark's local paths both see. Here each
task process runs in a mount namespace of its own (``unshare --mount --propagation private``,
which needs root or user namespaces) where:

* the emulator's volumes folder is bind-mounted on ``/Volumes``;
* its DBFS folder is bind-mounted on ``/dbfs`` -- or, on a workspace without a DBFS root, an
  empty read-only tmpfs is, so ``/dbfs/...`` has nothing to read and refuses writes.

Nothing leaks to the host: the mounts exist only inside the namespace. The empty mount points
``/Volumes`` and ``/dbfs`` are created once on the host if missing (never written to).

Without mount namespaces (a non-root developer machine) tasks run unwrapped: the server logs one
line saying ``/Volumes`` and ``/dbfs`` paths are not visible to tasks (``/dbfs/`` and
``/Volumes/`` paths given as ``python_file`` or parameters are still rewritten to the folders).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

log = logging.getLogger(__name__)

VOLUMES_MOUNT = "/Volumes"
DBFS_MOUNT = "/dbfs"

_probe_lock = threading.Lock()
_probe_result: str | None = None  # "" when available, else why not


def _probe() -> str:
    """Whether mount namespaces work here ("" if so, else the reason); checked once."""
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _check()
        return _probe_result


def _check() -> str:
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is not installed"
    for mount_point in (VOLUMES_MOUNT, DBFS_MOUNT):
        if not os.path.isdir(mount_point):
            try:
                os.mkdir(mount_point, 0o755)  # an empty mount point, nothing is put there
            except OSError as exc:
                return f"cannot create the mount point {mount_point}: {exc.strerror}"
    try:
        proc = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if proc.returncode != 0:
        return f"unshare --mount failed: {proc.stderr.decode(errors='replace').strip()}"
    return ""


class TaskMounts:
    """Wraps a task's command line so that it runs with ``/Volumes`` and ``/dbfs`` mounted."""

    def __init__(self, volumes_root: Path, dbfs_root: Path, dbfs_enabled: bool = True):
        self.volumes_root = Path(volumes_root)
        self.dbfs_root = Path(dbfs_root)
        self.dbfs_enabled = dbfs_enabled
        self._warned = False

    @property
    def available(self) -> bool:
        reason = _probe()
        if reason and not self._warned:
            self._warned = True
            log.warning(
                "Databricks emulator: volume paths (/Volumes/...) and /dbfs/ are not visible to "
                "task processes (no mount namespace: %s); run as root for FUSE-like paths.",
                reason,
            )
        return not reason

    def wrap(self, argv: list[str]) -> list[str]:
        if not self.available:
            return argv
        dbfs = (
            f"mount --bind {shlex.quote(str(self.dbfs_root))} {DBFS_MOUNT}"
            if self.dbfs_enabled
            else f"mount -t tmpfs -o ro,size=4k,mode=0555 dbfs-disabled {DBFS_MOUNT}"
        )
        script = (
            f"mount --bind {shlex.quote(str(self.volumes_root))} {VOLUMES_MOUNT} && "
            f'{dbfs} && exec "$@"'
        )
        unshare = shutil.which("unshare") or "unshare"
        return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]
