"""The warm Spark Connect server: the benchmark's "all-purpose cluster".

The orchestrator starts one local Spark Connect server (the product's own,
`fanout_dagster.local_spark.connect_server.running_server`, on free ports, with a
warehouse in the work dir) before the main section and stops it after it. Its
start-up is outside every measurement, as a cluster that is already up; the
CPU it spends during a measurement is read from /proc (utime + stime of its
whole process group) and added to the measurements that use it.

No measurement imports this module: workers reach the server by its port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
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
        from fanout_dagster.local_spark.connect_server import ServerConfig

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
        from fanout_dagster.local_spark.connect_server import running_server

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

    def spark_jobs(self) -> dict:
        """The Spark jobs the server ran for the bronze loads (its UI's REST API: the last
        `spark.ui.retainedJobs`, 500, local_spark/retention.py): jobs per object load and
        their seconds, by the `fanout-run-<id>` and `fanout-object-<key>` tags the loading
        loop puts on them."""
        base = f"http://127.0.0.1:{self.config.ui_port}/api/v1/applications"
        try:
            with urllib.request.urlopen(base, timeout=10) as response:
                app = json.load(response)[0]["id"]
            with urllib.request.urlopen(f"{base}/{app}/jobs", timeout=60) as response:
                jobs = json.load(response)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        per_object: dict[str, list[float]] = {}
        durations = []
        for job in jobs:
            seconds = _job_seconds(job)
            if seconds is not None:
                durations.append(seconds)
            # One load = one object in one run (the same keys recur across measurements).
            tags = job.get("jobTags") or []
            runs = {t.split("fanout-run-", 1)[1] for t in tags if "fanout-run-" in t}
            objects = {t.split("fanout-object-", 1)[1] for t in tags if "fanout-object-" in t}
            for load in {(r, o) for r in runs for o in objects}:
                per_object.setdefault(f"{load[0]}/{load[1]}", []).append(seconds or 0.0)
        if not per_object:
            return {"jobs_seen": len(jobs)}
        return {
            "jobs_seen": len(jobs),
            "loads_seen": len(per_object),
            "jobs_per_object": round(statistics.fmean(len(v) for v in per_object.values()), 2),
            "job_s_per_object": round(statistics.fmean(sum(v) for v in per_object.values()), 3),
            "median_job_s": round(statistics.median(durations), 3) if durations else None,
        }


def _job_seconds(job: dict) -> float | None:
    """A job's duration from its UI times ("2026-11-29T15:23:10.123GMT")."""

    def parse(text: str | None) -> float | None:
        if not text:
            return None
        return dt.datetime.strptime(
            text.replace("GMT", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z"
        ).timestamp()

    start, end = parse(job.get("submissionTime")), parse(job.get("completionTime"))
    return None if start is None or end is None else end - start
