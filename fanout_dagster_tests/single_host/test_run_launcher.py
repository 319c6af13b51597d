"""The run launcher's worker health check, on a real instance with real processes:
the worker's pid comes from the event its run reports, as in a run launched by
the DefaultRunLauncher, and its identity (pid and process start ticks) from its
record once the check has seen it; e2e/test_faults.py kills real run workers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from fanout_dagster.single_host.run_launcher import WorkerCheckingRunLauncher
from fanout_dagster.single_host.worker_identity import (
    process_state,
    read_record,
    record_of,
    write_record,
)
from fanout_dagster_tests.e2e.dagster_processes import wait_for
from fanout_dagster_tests.helpers import free_port

LAUNCHER = {
    "module": "fanout_dagster.single_host.run_launcher",
    "class": "WorkerCheckingRunLauncher",
}


@pytest.fixture(autouse=True)
def no_spark_server(monkeypatch):
    """These runs use no Spark: the check's Spark stop finds no server on this port."""
    monkeypatch.setenv("FANOUT_SPARK_CONNECT_PORT", str(free_port()))


@pytest.fixture
def launcher_instance():
    with instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        yield instance


def started_run(instance: DagsterInstance, pid: int, grpc: dict, reported_at: float | None = None):
    """A run as a code server starts it: its gRPC tag, and the worker's pid event
    (stored at `reported_at` by the event log's clock, now by default)."""
    from dagster import job, op

    @op
    def noop() -> None:
        pass

    @job
    def a_job() -> None:
        noop()

    dagster_run = instance.create_run_for_job(a_job, tags={GRPC_INFO_TAG: json.dumps(grpc)})
    event = DagsterEvent(
        event_type_value=DagsterEventType.ENGINE_EVENT.value,
        job_name=dagster_run.job_name,
        message=f"Started process for run (pid: {pid}).",
        event_specific_data=EngineEventData.in_process(pid),
    )
    instance.report_dagster_event(event, run_id=dagster_run.run_id, timestamp=reported_at)
    return dagster_run


def test_a_live_worker_is_running_and_a_killed_one_is_failed(launcher_instance):
    launcher = launcher_instance.run_launcher
    assert isinstance(launcher, WorkerCheckingRunLauncher)
    assert launcher.supports_check_run_worker_health
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A code server that is gone (the case the check is for): its socket is gone.
        run = started_run(launcher_instance, worker.pid, {"socket": "/nonexistent/grpc.sock"})
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        os.kill(worker.pid, signal.SIGKILL)
        # Not reaped yet: a zombie is a dead worker too.
        deadline = time.time() + 10
        while (state := process_state(worker.pid)) is not None and not state.zombie:
            assert time.time() < deadline
            time.sleep(0.05)
        result = launcher.check_run_worker_health(run)
        assert result.status == WorkerStatus.FAILED
        assert f"run worker process {worker.pid} is gone" in (result.msg or "")
        worker.wait()
        assert launcher.check_run_worker_health(run).status == WorkerStatus.FAILED
    finally:
        worker.kill()
        worker.wait()


def test_a_pid_now_used_by_another_process_is_not_the_worker(launcher_instance):
    """The worker's identity is its pid and its process's start ticks, recorded
    while its code server ran it: the same pid with other start ticks is another
    process (the pid was reused after the worker died). Ticks are compared with
    ticks; no clock is involved."""
    launcher = launcher_instance.run_launcher
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = started_run(launcher_instance, other.pid, {"socket": "/nonexistent/grpc.sock"})
        live = record_of(other.pid)
        assert live is not None
        write_record(launcher_instance, run.run_id, live)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        # As recorded for the worker that had this pid before: it started earlier.
        assert live.start_ticks is not None
        write_record(launcher_instance, run.run_id, replace(live, start_ticks=live.start_ticks - 1))
        result = launcher.check_run_worker_health(run)
        assert result.status == WorkerStatus.FAILED
        assert "the pid now belongs to another process" in (result.msg or ""), result.msg
        assert read_record(launcher_instance, run.run_id) is None
    finally:
        other.kill()
        other.wait()


def test_a_code_server_worker_is_not_judged_by_when_it_reported(launcher_instance):
    """Until issue 19 the check compared the process's start (from /proc, on the
    boot clock) with the event log's time of its report plus a 2 s slack: once
    the wall clock was stepped forward after the report (NTP on a fresh VM), a
    live worker looked like a younger process that took its pid, and was failed.
    Here the report reads an hour early, as after such a step."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = started_run(
            launcher_instance,
            worker.pid,
            {"socket": "/nonexistent/grpc.sock"},
            reported_at=time.time() - 3600,
        )
        launcher = WorkerCheckingRunLauncher()
        launcher.register_instance(launcher_instance)
        result = launcher.check_run_worker_health(run)
        assert result.status == WorkerStatus.RUNNING, result.msg
    finally:
        worker.kill()
        worker.wait()


def test_the_records_of_finished_runs_are_swept(launcher_instance):
    """A record outlives its run when its worker was killed and someone else failed
    the run, and a checker's record of a code-server worker always does: the
    check deletes those of finished runs (at most every ten minutes)."""
    gone = {"socket": "/nonexistent/grpc.sock"}
    finished = started_run(launcher_instance, os.getpid(), gone)
    running = started_run(launcher_instance, os.getpid(), gone)
    me = record_of(os.getpid())
    assert me is not None
    for run in (finished, running):
        write_record(launcher_instance, run.run_id, me)
    launcher_instance.report_run_failed(finished)
    launcher = launcher_instance.run_launcher
    assert launcher.check_run_worker_health(running).status == WorkerStatus.RUNNING
    assert read_record(launcher_instance, finished.run_id) is None
    assert read_record(launcher_instance, running.run_id) == me


def test_workers_it_cannot_see_are_left_running(launcher_instance):
    launcher = launcher_instance.run_launcher
    remote = started_run(launcher_instance, 999_999, {"host": "user-code.internal", "port": 4000})
    result = launcher.check_run_worker_health(remote)
    assert result.status == WorkerStatus.RUNNING and "another host" in (result.msg or "")


@pytest.fixture
def code_server(tmp_path):
    """A real code server (`dagster api grpc`) serving the warm launcher tests' job,
    on a unix socket, in a process group of its own."""
    from dagster._grpc.client import DagsterGrpcClient

    socket_path = str(tmp_path / "grpc.sock")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "api",
            "grpc",
            "-m",
            "fanout_dagster_tests.single_host.warm_jobs",
        ]
        + ["--socket", socket_path],
        start_new_session=True,
    )
    client = DagsterGrpcClient(socket=socket_path)

    def answers() -> bool:
        try:
            client.ping("")
        except Exception:
            return False
        return True

    try:
        wait_for(answers, timeout=180, what="the code server to answer", interval=0.2)
        yield server, client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_a_code_server_worker_is_recorded_while_its_server_runs_it_and_judged_after(
    launcher_instance, tmp_path, code_server
):
    """The DefaultRunLauncher's way, with a real code server and worker: while the
    server lists the run, the check records the worker's identity; once the
    server is gone, the worker is judged by it: alive, then killed."""
    from dagster import reconstructable
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    from fanout_dagster_tests.single_host.warm_jobs import warm_job

    server, client = code_server
    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=GrpcServerCodeLocationOrigin(
                host="localhost", port=None, socket=client.socket, location_name="warm"
            ),
            repository_name="__repository__warm_job",
        ),
        job_name="warm_job",
    )
    out = tmp_path / "out.json"
    run = launcher_instance.create_run_for_job(
        warm_job,
        run_config={"ops": {"report_worker": {"config": {"out": str(out), "sleep_s": 300}}}},
        remote_job_origin=origin,
        job_code_origin=reconstructable(warm_job).get_python_origin(),
    )
    DefaultRunLauncher.launch_run_from_grpc_client(launcher_instance, run, client)
    wait_for(out.exists, timeout=180, what="the worker to run its op")
    pid = json.loads(out.read_text())["pid"]
    run = launcher_instance.get_run_by_id(run.run_id)
    launcher = launcher_instance.run_launcher

    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    record = read_record(launcher_instance, run.run_id)
    assert record is not None and record.pid == pid
    state = process_state(pid)
    assert state is not None and record.start_ticks == state.start_ticks

    os.kill(server.pid, signal.SIGKILL)  # the server alone: its worker lives on
    server.wait()
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (state := process_state(pid)) is None or state.zombie,
        timeout=30,
        what="the killed worker to be gone",
    )
    result = launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.FAILED
    assert f"run worker process {pid} is gone" in (result.msg or ""), result.msg
    launcher_instance.report_run_failed(run)
