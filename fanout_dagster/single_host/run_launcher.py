"""The run launcher: Dagster's DefaultRunLauncher, plus a run worker health check.

The DefaultRunLauncher starts each run in a process of the code server
(gRPC), and cannot tell whether that process is still alive
(`supports_check_run_worker_health` is False). A worker that dies without
reporting (SIGKILL, OOM kill, the host or container going away with the whole
daemon process group) then leaves its run STARTED forever, holding a queue
slot, and its backfill never completes.

While the code server that started a worker is up, it watches the worker
itself (and fails the run when the worker dies under it); this subclass asks
it first. When it is gone (the host or container lost, the daemon's process
group killed), the worker is judged by its pid: the worker reports it as its
first event ("Started process for run (pid: N)"), and the run's gRPC tag names
the code server it was launched on. When that server was on this host, the
worker is a process of this host: alive if the pid exists, is not a zombie
and started before it reported. With `run_monitoring` enabled (dagster.yaml),
Dagster's monitoring daemon asks every `poll_interval_seconds` and marks a run
whose worker is gone as failed, which frees its queue slot; Dagster's run
retries (`run_retries`, the run's `dagster/max_retries` tag) then retry it.

Workers it cannot see (launched on a code server of another host or
container, or a run whose worker never reported its pid) are reported RUNNING,
as without this check: run monitoring fails a run on any other status, and a
run failed while its worker is alive would be retried beside it.

`WarmRunLauncher` (the repo's dagster.yaml) starts workers faster: it forks
them from a process that has imported Dagster and pyspark already
(run_worker.py), in place of the code server's fresh Python process per run.
Its workers are checked the same way, by the pid it records when it forks one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dagster import DagsterEventType
from dagster._core.launcher import (
    CheckRunHealthResult,
    DefaultRunLauncher,
    LaunchRunContext,
    WorkerStatus,
)
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClassData, serialize_value

from fanout_dagster.single_host import run_worker

_STARTED = re.compile(r"^Started process for run \(pid: (\d+)\)")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
# A worker's process starts before it reports; allow for the clocks of /proc
# (jiffies since boot) and of the event log to disagree a little.
_START_SLACK_S = 2.0
# The run tag where WarmRunLauncher records the worker it forked.
WARM_WORKER_TAG = "fanout/warm_worker"


class WorkerCheckingRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher that can check the health of run workers on this host."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data=inst_data)
        self._workers: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        # Run monitoring fails a run on any status but RUNNING and SUCCESS, so
        # a worker this launcher cannot see is reported RUNNING (not checked),
        # as Dagster's DefaultRunLauncher would leave it.
        warm = warm_worker(run)
        if warm is not None:
            if not warm.on_this_host:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING, f"not checked: the run's worker is on host {warm.host}"
                )
            return _pid_health(warm.pid, warm.forked_at)
        if not _launched_on_this_host(run):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "not checked: the run's code server is on another host"
            )
        if _code_server_runs(run):
            # The server that started the worker is up and still runs it (it also
            # fails the run itself when its worker dies under it).
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        worker = self._worker(run.run_id)
        if worker is None:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "not checked: the run's worker has not reported its pid"
            )
        return _pid_health(*worker)

    def _worker(self, run_id: str) -> tuple[int, float] | None:
        """(pid, report time) of the run's worker, from its first engine event."""
        with self._lock:
            if run_id in self._workers:
                return self._workers[run_id]
        found = None
        for entry in self._instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            message = entry.dagster_event.message if entry.dagster_event else None
            match = _STARTED.match(message or entry.user_message or "")
            if match:
                found = (int(match.group(1)), entry.timestamp)  # the latest report wins
        if found is not None:
            with self._lock:
                if len(self._workers) > 10_000:
                    self._workers.clear()
                self._workers[run_id] = found
        return found


class WarmRunLauncher(WorkerCheckingRunLauncher):
    """Run workers forked from a warm process of the daemon (run_worker.py).

    A worker forked there is executing its run about a second sooner than one
    the code server starts as a new Python process, and costs that much less
    CPU: what a run per object pays for every object. It runs the run as
    `dagster api execute_run` does (Dagster's own command for run workers of
    container launchers), with the environment and working directory of the
    launching process.

    Runs of a code location served by another Python (its own virtual
    environment, a container) are launched on its code server, as by the
    DefaultRunLauncher. Terminating a run sends its worker SIGINT, as the code
    server does to its own workers; the run's worker must be on the host of
    the process that terminates it (the webserver, under `dagster dev` and in
    deploy/), otherwise the run is marked canceling and the worker finishes.
    """

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data=inst_data)
        self._forkserver: Any = None

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None or not _same_python(origin.repository_origin.executable_path):
            super().launch_run(context)
            return
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        worker = self._context().Process(
            target=run_worker.execute_run,
            args=(serialize_value(args), dict(os.environ), os.getcwd()),
            name=f"dagster-run-{run.run_id[:8]}",
        )
        forked_at = time.time()
        worker.start()
        self._instance.add_run_tags(
            run.run_id,
            {
                WARM_WORKER_TAG: json.dumps(
                    {"host": socket.gethostname(), "pid": worker.pid, "forked_at": forked_at}
                )
            },
        )
        self._run_ids.add(run.run_id)
        multiprocessing.active_children()  # reaps the finished workers' handles

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        warm = warm_worker(run) if run is not None else None
        if run is None or warm is None:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        if not warm.on_this_host:
            self._instance.report_engine_event(
                f"Cannot interrupt the run's worker: it runs on host {warm.host}.",
                run,
                cls=self.__class__,
            )
            return False
        if _pid_health(warm.pid, warm.forked_at).status != WorkerStatus.RUNNING:
            return False
        # What the code server does to its workers: the worker's Dagster turns the
        # interrupt into a cancelled run (the status is CANCELING).
        os.kill(warm.pid, signal.SIGINT)
        return True

    def _context(self) -> Any:
        with self._lock:
            if self._forkserver is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(list(run_worker.PRELOAD))
                self._forkserver = context
            return self._forkserver


class WarmWorker:
    def __init__(self, host: str, pid: int, forked_at: float) -> None:
        self.host = host
        self.pid = pid
        self.forked_at = forked_at

    @property
    def on_this_host(self) -> bool:
        return self.host in (socket.gethostname(), socket.getfqdn())


def warm_worker(run: DagsterRun) -> WarmWorker | None:
    """The worker WarmRunLauncher forked for this run, if it did."""
    info = run.tags.get(WARM_WORKER_TAG)
    if not info:
        return None
    data = json.loads(info)
    return WarmWorker(str(data["host"]), int(data["pid"]), float(data["forked_at"]))


def _same_python(executable_path: str | None) -> bool:
    """Whether a code location runs on this process's Python (the same virtual
    environment: a venv's python is a symlink, so the paths are compared as given)."""
    if not executable_path:
        return False
    return os.path.abspath(executable_path) == os.path.abspath(sys.executable)


def _pid_health(pid: int, started_by: float) -> CheckRunHealthResult:
    """A worker of this host judged by its pid, which existed by `started_by`."""
    state = process_state(pid)
    if state is None or state.zombie:
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone (killed, or its host or container restarted)",
            run_worker_id=str(pid),
        )
    if state.started_at is not None and state.started_at > started_by + _START_SLACK_S:
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone (the pid now belongs to a process started "
            "after the worker reported)",
            run_worker_id=str(pid),
        )
    return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))


def _launched_on_this_host(run: DagsterRun) -> bool:
    info = run.tags.get(GRPC_INFO_TAG)
    if not info:
        return False
    grpc = json.loads(info)
    if grpc.get("socket"):
        return True  # a unix socket: a server of this host
    host = str(grpc.get("host") or "")
    return host in _LOCAL_HOSTS or host in (socket.gethostname(), socket.getfqdn())


def _code_server_runs(run: DagsterRun) -> bool:
    """Whether the run's code server answers and lists the run as executing.

    False when the server is gone (the case this launcher is for), or when the
    address now answers for another server (restarted): the pid decides then.
    """
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._grpc.types import GetCurrentRunsResult
    from dagster._serdes import deserialize_value

    grpc = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    try:
        client = DagsterGrpcClient(
            port=grpc.get("port"),
            socket=grpc.get("socket"),
            host=grpc.get("host") or "localhost",
            use_ssl=bool(grpc.get("use_ssl", False)),
        )
        current = deserialize_value(client.get_current_runs(), GetCurrentRunsResult)
    except Exception:  # unreachable: gone, or restarting
        return False
    return run.run_id in current.current_runs


class ProcessState:
    def __init__(self, zombie: bool, started_at: float | None) -> None:
        self.zombie = zombie
        self.started_at = started_at  # epoch seconds, where the system tells


def process_state(pid: int) -> ProcessState | None:
    """Whether a pid is a live process of this host (None: no such process)."""
    stat_path = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            stat = stat_path.read_text()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        zombie = fields[0] in ("Z", "X")
        started_at = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return ProcessState(zombie, started_at)
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ProcessState(False, None)


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return time.time() - float(Path("/proc/uptime").read_text().split()[0])
