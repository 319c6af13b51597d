"""The run launcher: Dagster's DefaultRunLauncher, plus a run worker health check.

The DefaultRunLauncher starts each run in a process of the code server
(gRPC), and cannot tell whether that process is still alive
(`supports_check_run_worker_health` is False). A worker that dies without
reporting (SIGKILL, OOM kill, the host or container going away with the whole
daemon process group) then leaves its run STARTED forever, holding a queue
slot and its objects' locks, and its backfill never completes.

With `run_monitoring` enabled (dagster.yaml), Dagster's monitoring daemon asks
the launcher about every STARTED run every `poll_interval_seconds` and marks a
run whose worker is not RUNNING as failed, which frees its slot; Dagster's run
retries (`run_retries`, the run's `dagster/max_retries` tag) then retry it. A
run failed while its worker lives would be retried beside it, so the check
says FAILED only for a worker it knows to be gone:

- A worker is known by its record (worker_identity.py): pid and process start
  ticks, host, boot and pid namespace, read by the worker's own process. A
  checker on the same boot and pid namespace compares them with /proc, as they
  are: nothing races with the fork, no clock is compared with another.
- A worker out of the checker's sight (another host or container, or a boot
  since) is judged by its heartbeat: lost once its record has not changed for
  `heartbeat_timeout_seconds` on the checker's own clock. This is how runs of a
  recreated container (new host name, new pid namespace) are failed while a
  worker alive on another host, which keeps beating, never is.
- Before it answers FAILED, the check stops what the run left running on the
  local Spark Connect server (connect_sessions.py): a dead worker's write would
  otherwise still commit there after its objects were freed for the next run.
  Until that is confirmed, the run stays as it is (it is checked again next poll).

`WarmRunLauncher` (the repo's dagster.yaml) forks workers from a process that
has imported Dagster and pyspark already (run_worker.py); each worker records
itself and beats. `WorkerCheckingRunLauncher` leaves workers to the code
server, which watches its own children while it is up (and fails the run
itself when one dies under it); its workers do not beat, so the check records
a worker's identity itself the first time it sees the run listed by its code
server, and judges it by /proc once that server is gone. Workers of a code
server on another host are not checked (reported RUNNING, as Dagster would).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from dagster import DagsterEventType, Field
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
from fanout_dagster.single_host.worker_identity import (
    WorkerRecord,
    delete_record,
    is_gone,
    process_state,
    read_record,
    record_of,
    sweep_records,
    this_machine,
    write_record,
)

_STARTED = re.compile(r"^Started process for run \(pid: (\d+)\)")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
# The run tag WarmRunLauncher sets on the runs it launches (the host they run on).
WARM_WORKER_TAG = "fanout/warm_worker"
# A warm worker rewrites its record this often; a checker that cannot see the
# worker's process takes it for lost after this long without a new beat.
HEARTBEAT_INTERVAL_S = 10.0
HEARTBEAT_TIMEOUT_S = 120.0
# How often the check deletes the worker records of finished runs.
SWEEP_INTERVAL_S = 600.0

logger = logging.getLogger(__name__)


class WorkerCheckingRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher that can check the health of run workers (see the module docstring)."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        heartbeat_interval_seconds: float = HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_seconds: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        super().__init__(inst_data=inst_data)
        if not 0 < 3 * heartbeat_interval_seconds <= heartbeat_timeout_seconds:
            raise ValueError(
                "run_launcher: heartbeat_timeout_seconds must be at least 3 times "
                f"heartbeat_interval_seconds (got {heartbeat_timeout_seconds} and "
                f"{heartbeat_interval_seconds})"
            )
        self.heartbeat_interval_s = float(heartbeat_interval_seconds)
        self.heartbeat_timeout_s = float(heartbeat_timeout_seconds)
        self._machine = this_machine()
        self._clock: Callable[[], float] = time.monotonic
        # run id -> (beat, when this process first saw that beat)
        self._beats: dict[str, tuple[int, float]] = {}
        self._swept_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "heartbeat_interval_seconds": Field(
                float,
                is_required=False,
                default_value=HEARTBEAT_INTERVAL_S,
                description="How often a warm run worker writes its heartbeat.",
            ),
            "heartbeat_timeout_seconds": Field(
                float,
                is_required=False,
                default_value=HEARTBEAT_TIMEOUT_S,
                description="How long a worker that this process cannot see (another host or "
                "container) may go without a heartbeat before its run is failed.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Any:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        # Run monitoring fails a run on any status but RUNNING and SUCCESS, so
        # a worker this launcher cannot judge is reported RUNNING (not checked),
        # as Dagster's DefaultRunLauncher would leave it.
        self._sweep_now_and_then()
        health = self._worker_health(run)
        if health.status != WorkerStatus.FAILED:
            return health
        stopped = stop_spark_work(run.run_id)
        if stopped.startswith("not stopped"):
            # Failing the run now would free its objects while a write of the
            # dead worker may still commit: wait for the next poll.
            logger.warning("Run %s: %s; %s", run.run_id, health.msg, stopped)
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"{health.msg}; {stopped}")
        delete_record(self._instance, run.run_id)
        with self._lock:
            self._beats.pop(run.run_id, None)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"{health.msg}; {stopped}", run_worker_id=health.run_worker_id
        )

    def _sweep_now_and_then(self) -> None:
        now = self._clock()
        with self._lock:
            if self._swept_at is not None and now - self._swept_at < SWEEP_INTERVAL_S:
                return
            self._swept_at = now
        sweep_records(self._instance)

    def _worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        record = read_record(self._instance, run.run_id)
        launch = warm_launch(run)
        if launch is None:
            return self._code_server_worker_health(run, record)
        if record is not None:
            return self._judge(run.run_id, record)
        if launch.pid is not None and launch.host in _this_host_names():
            # Launched before workers recorded themselves: the pid alone.
            return _existence_health(launch.pid)
        return CheckRunHealthResult(
            WorkerStatus.RUNNING, "not checked: the run's worker has not recorded itself"
        )

    def _code_server_worker_health(
        self, run: DagsterRun, record: WorkerRecord | None
    ) -> CheckRunHealthResult:
        if not _launched_on_this_host(run):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, "not checked: the run's code server is on another host"
            )
        if record is None:
            pid = self._reported_pid(run.run_id)
            # Read before asking the server: listed after this, the process read was its worker.
            seen = record_of(pid) if pid is not None else None
            if _code_server_runs(run):
                if seen is not None:
                    write_record(self._instance, run.run_id, seen)
                return CheckRunHealthResult(WorkerStatus.RUNNING)
            if pid is None:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING, "not checked: the run's worker has not reported its pid"
                )
            # Its server went before the worker's identity was recorded (within
            # one poll of the start): the pid alone. A pid taken by another
            # process since keeps the run until that process ends.
            return _existence_health(pid)
        if _code_server_runs(run):
            # The server that started the worker still runs it (and fails the
            # run itself when its worker dies under it).
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return self._judge(run.run_id, record)

    def _judge(self, run_id: str, record: WorkerRecord) -> CheckRunHealthResult:
        if self._machine.sees(record.machine):
            gone = is_gone(record)
            status = WorkerStatus.FAILED if gone else WorkerStatus.RUNNING
            return CheckRunHealthResult(status, gone, run_worker_id=str(record.pid))
        return self._judge_by_heartbeat(run_id, record)

    def _judge_by_heartbeat(self, run_id: str, record: WorkerRecord) -> CheckRunHealthResult:
        where = f"on host {record.host}"
        if record.beat_interval_s is None:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"not checked: the run's worker is {where}, out of sight"
            )
        limit = max(self.heartbeat_timeout_s, 3 * record.beat_interval_s)
        now = self._clock()
        with self._lock:
            seen = self._beats.get(run_id)
            if seen is None or seen[0] != record.beat:
                if len(self._beats) > 10_000:
                    self._beats.clear()
                self._beats[run_id] = (record.beat, now)
                return CheckRunHealthResult(WorkerStatus.RUNNING, f"heard from {where}")
        silent = now - seen[1]
        if silent < limit:
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"heard from {where} {silent:.0f} s ago"
            )
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {record.pid} {where} is gone: no heartbeat for {silent:.0f} s "
            "(its host or container was lost)",
            run_worker_id=str(record.pid),
        )

    def _reported_pid(self, run_id: str) -> int | None:
        """The pid the run's worker reported in its first engine event (the latest report)."""
        found = None
        for entry in self._instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
            message = entry.dagster_event.message if entry.dagster_event else None
            match = _STARTED.match(message or entry.user_message or "")
            if match:
                found = int(match.group(1))
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

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        heartbeat_interval_seconds: float = HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_seconds: float = HEARTBEAT_TIMEOUT_S,
    ) -> None:
        super().__init__(inst_data, heartbeat_interval_seconds, heartbeat_timeout_seconds)
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
        # Tagged before the fork: nothing else writes the run's tags meanwhile.
        # The worker records its pid itself (worker_identity.py).
        self._instance.add_run_tags(
            run.run_id, {WARM_WORKER_TAG: json.dumps({"host": socket.gethostname()})}
        )
        worker = self._context().Process(
            target=run_worker.execute_run,
            args=(serialize_value(args), dict(os.environ), os.getcwd(), self.heartbeat_interval_s),
            name=f"dagster-run-{run.run_id[:8]}",
        )
        try:
            worker.start()
        except OSError as error:
            if "AF_UNIX path too long" not in str(error):
                raise
            # The forkserver's socket lives in the temp folder, and a Unix socket's
            # path is limited to 107 bytes.
            raise OSError(
                f"cannot start the run worker's forkserver: its socket in the temp folder "
                f"{tempfile.gettempdir()!r} would have too long a path; set TMPDIR to a "
                "shorter folder (e.g. /tmp)"
            ) from error
        self._run_ids.add(run.run_id)
        multiprocessing.active_children()  # reaps the finished workers' handles

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        launch = warm_launch(run) if run is not None else None
        if run is None or launch is None:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        # Canceling first, then the record: a worker that records itself after
        # this finds the run canceling and cancels it (run_worker.py).
        self._instance.report_run_canceling(run)
        record = read_record(self._instance, run_id)
        if record is None:
            if launch.pid is None:
                return True  # still starting: it cancels the run itself
            record = record_of(launch.pid) if launch.host in _this_host_names() else None
            if record is None:
                return False
        if not self._machine.sees(record.machine):
            self._instance.report_engine_event(
                f"Cannot interrupt the run's worker: it runs on host {record.host}.",
                run,
                cls=self.__class__,
            )
            return False
        if is_gone(record):
            return False
        # What the code server does to its workers: the worker's Dagster turns the
        # interrupt into a cancelled run (the status is CANCELING).
        os.kill(record.pid, signal.SIGINT)
        return True

    def _context(self) -> Any:
        with self._lock:
            if self._forkserver is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(list(run_worker.PRELOAD))
                self._forkserver = context
            return self._forkserver


class WarmLaunch:
    """What WarmRunLauncher tagged a run with: the host its worker runs on (and,
    for runs launched before workers recorded themselves, the worker's pid)."""

    def __init__(self, host: str, pid: int | None) -> None:
        self.host = host
        self.pid = pid


def warm_launch(run: DagsterRun) -> WarmLaunch | None:
    """How WarmRunLauncher launched this run, if it did."""
    info = run.tags.get(WARM_WORKER_TAG)
    if not info:
        return None
    data = json.loads(info)
    return WarmLaunch(str(data["host"]), int(data["pid"]) if "pid" in data else None)


def stop_spark_work(run_id: str) -> str:
    """Stop what the run left running on the local Spark Connect server (its session,
    named after the run: connect_sessions.py); one line saying what was done, starting
    with "not stopped" when it could not be confirmed."""
    from fanout_dagster.settings import Settings

    settings = Settings()
    if settings.target != "local" or settings.spark != "connect":
        return "it used no Spark Connect server"
    from fanout_dagster.core.connect_sessions import (
        NotStopped,
        run_session_id,
        server_listening,
        stop_session,
    )
    from fanout_dagster.local_spark.connect_server import SparkServerError, client_token

    url = settings.spark_connect_url
    if not server_listening(url):
        return f"the Spark Connect server at {url} is not running: nothing of the run runs there"
    try:
        token = client_token(settings.spark_connect_port, settings)
        running = stop_session(url, run_session_id(run_id), token=token)
    except (NotStopped, SparkServerError) as error:
        return f"not stopped yet: its Spark session on {url} did not answer ({error})"
    if running:
        return f"its {running} Spark operation(s) still running on {url} were stopped"
    return f"it had no Spark operation running on {url}"


def _this_host_names() -> tuple[str, str]:
    return socket.gethostname(), socket.getfqdn()


def _same_python(executable_path: str | None) -> bool:
    """Whether a code location runs on this process's Python (the same virtual
    environment: a venv's python is a symlink, so the paths are compared as given)."""
    if not executable_path:
        return False
    return os.path.abspath(executable_path) == os.path.abspath(sys.executable)


def _existence_health(pid: int) -> CheckRunHealthResult:
    """A worker of this host known by its pid alone: gone when no process has it."""
    state = process_state(pid)
    if state is None or state.zombie:
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone (killed, or its host or container restarted)",
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
    return host in _LOCAL_HOSTS or host in _this_host_names()


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
