"""The run launcher's worker health check, on a real instance with real processes:
the worker's pid comes from the event its run reports, as in a run launched by
the DefaultRunLauncher; e2e/test_faults.py kills real run workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from fanout_dagster.single_host.run_launcher import WorkerCheckingRunLauncher, process_state

LAUNCHER = {
    "module": "fanout_dagster.single_host.run_launcher",
    "class": "WorkerCheckingRunLauncher",
}


@pytest.fixture
def launcher_instance():
    with instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        yield instance


def started_run(instance: DagsterInstance, pid: int, grpc: dict):
    """A run as a code server starts it: its gRPC tag, and the worker's pid event."""
    from dagster import job, op

    @op
    def noop() -> None:
        pass

    @job
    def a_job() -> None:
        noop()

    dagster_run = instance.create_run_for_job(a_job, tags={GRPC_INFO_TAG: json.dumps(grpc)})
    instance.report_engine_event(
        f"Started process for run (pid: {pid}).", dagster_run, EngineEventData.in_process(pid)
    )
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


def test_a_pid_now_used_by_a_younger_process_is_not_the_worker(launcher_instance):
    # This test's own process started long before the (back-dated) report.
    run = started_run(launcher_instance, os.getpid(), {"socket": "/nonexistent/grpc.sock"})
    assert launcher_instance.run_launcher.check_run_worker_health(run).status == (
        WorkerStatus.RUNNING
    )
    younger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        other = started_run(launcher_instance, younger.pid, {"socket": "/nonexistent/grpc.sock"})
        launcher = WorkerCheckingRunLauncher()
        launcher.register_instance(launcher_instance)
        # The worker reported an hour before this process started: not the worker.
        launcher._workers[other.run_id] = (younger.pid, time.time() - 3600)
        result = launcher.check_run_worker_health(other)
        assert result.status == WorkerStatus.FAILED and "started after" in (result.msg or "")
    finally:
        younger.kill()
        younger.wait()


def test_workers_it_cannot_see_are_left_running(launcher_instance):
    launcher = launcher_instance.run_launcher
    remote = started_run(launcher_instance, 999_999, {"host": "user-code.internal", "port": 4000})
    result = launcher.check_run_worker_health(remote)
    assert result.status == WorkerStatus.RUNNING and "another host" in (result.msg or "")
