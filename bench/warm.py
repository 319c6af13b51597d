"""The warm Spark Connect server: the benchmark's "all-purpose cluster".

The orchestrator starts one local Spark Connect server (the product's own,
`fanout_dagster.spark_connect_server.running_server`, on free ports, with a
warehouse in the work dir) before the main section and stops it after it. Its
start-up is outside every measurement, as a cluster that is already up; the
CPU it spends during a measurement is read from /proc (utime + stime of its
whole process group) and added to the measurements that use it.

No measurement imports this module: workers reach the server by its port.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from bench import proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def jvm_pid(pgrp: int) -> int | None:
    """The java process of a Spark process group (spark-submit execs into it)."""
    for stat in proc.proc_stats().values():
        if stat.pgrp != pgrp or stat.state == "Z":
            continue
        try:
            if Path(f"/proc/{stat.pid}/comm").read_text().strip() == "java":
                return stat.pid
        except OSError:
            continue
    return None


def heap_after_gc_mb(pid: int) -> float | None:
    """Java heap in use right after a full GC (jcmd, from the JDK); None without jcmd."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return None
    try:
        subprocess.run([jcmd, str(pid), "GC.run"], capture_output=True, timeout=120, check=True)
        out = subprocess.run(
            [jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    used = re.search(r"used (\d+)K", out)
    return int(used.group(1)) / 1024 if used else None


class WarmServer:
    """`with WarmServer(...) as server:` - the server is up (and answering) inside."""

    def __init__(self, state_dir: Path, *, master: str, log_copy: Path | None = None):
        from fanout_dagster.spark_connect_server import ServerConfig

        self.config = ServerConfig(
            port=free_port(),
            ui_port=free_port(),
            master=master,
            warehouse=str(state_dir / "warehouse"),
            state_dir=state_dir,
        )
        self.log_copy = log_copy
        self.pid = 0  # leader of the server's process group
        self.startup_s = 0.0
        self._stack = contextlib.ExitStack()

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def warehouse(self) -> str:
        return self.config.warehouse

    def __enter__(self) -> WarmServer:
        from fanout_dagster.spark_connect_server import running_server

        started = time.time()
        process = self._stack.enter_context(running_server(self.config))
        self.pid = process.pid
        self.startup_s = time.time() - started
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._stack.close()
        finally:
            if self.log_copy is not None and self.config.log_path.exists():
                shutil.copy(self.config.log_path, self.log_copy)

    def cpu_s(self) -> float:
        return proc.group_cpu_s(self.pid)

    def rss_mb(self) -> float:
        stats = proc.proc_stats()
        return proc.rss_mb(s.pid for s in stats.values() if s.pgrp == self.pid and s.state != "Z")

    def heap_after_gc_mb(self) -> float | None:
        pid = jvm_pid(self.pid)
        return heap_after_gc_mb(pid) if pid else None
