"""WarmRunLauncher on a real instance: workers forked from its warm process run
real runs, with the launching process's environment, can be terminated, and are
checked by the identity they record themselves (pid and process start ticks),
or by their heartbeat when the checker cannot see them."""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing.forkserver
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, instance_for_test, reconstructable
from dagster._core.launcher import LaunchRunContext, WorkerStatus

from fanout_dagster.single_host import run_worker
from fanout_dagster.single_host.run_launcher import WARM_WORKER_TAG, WarmRunLauncher, warm_launch
from fanout_dagster.single_host.worker_identity import Machine, process_state, read_record
from fanout_dagster_tests.e2e.dagster_processes import wait_for
from fanout_dagster_tests.helpers import free_port
from fanout_dagster_tests.single_host.warm_jobs import warm_job

LAUNCHER = {"module": "fanout_dagster.single_host.run_launcher", "class": "WarmRunLauncher"}


@pytest.fixture(autouse=True)
def no_spark_server(monkeypatch):
    """These runs use no Spark: the check's Spark stop finds no server on this port."""
    monkeypatch.setenv("FANOUT_SPARK_CONNECT_PORT", str(free_port()))


@pytest.fixture
def warm_instance():
    with instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
        yield instance


# Beats every 0.2 s: the heartbeat tests see several beats in a second.
FAST_BEATS = {
    **LAUNCHER,
    "config": {"heartbeat_interval_seconds": 0.2, "heartbeat_timeout_seconds": 30},
}


@pytest.fixture
def beating_instance():
    with instance_for_test(overrides={"run_launcher": FAST_BEATS}) as instance:
        yield instance


def launch(instance: DagsterInstance, out: Path, sleep_s: float = 0.0):
    recon = reconstructable(warm_job)
    run = instance.create_run_for_job(
        warm_job,
        run_config={"ops": {"report_worker": {"config": {"out": str(out), "sleep_s": sleep_s}}}},
        job_code_origin=recon.get_python_origin(),
    )
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return run


def succeeded(instance: DagsterInstance, run_id: str) -> bool:
    return status(instance, run_id) == DagsterRunStatus.SUCCESS


def status(instance: DagsterInstance, run_id: str) -> DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.status


def test_a_forked_worker_runs_the_run_with_the_launching_process_environment(
    warm_instance, tmp_path, monkeypatch
):
    assert isinstance(warm_instance.run_launcher, WarmRunLauncher)
    for marker in ("first", "second"):
        # Set after the warm process started (for the second run): workers still see it.
        monkeypatch.setenv("WARM_TEST_MARKER", marker)
        out = tmp_path / f"{marker}.json"
        run = launch(warm_instance, out)
        wait_for(
            functools.partial(succeeded, warm_instance, run.run_id),
            timeout=120,
            what=f"the {marker} run to succeed",
        )
        seen = json.loads(out.read_text())
        assert seen["marker"] == marker
        assert seen["cwd"] == os.getcwd()
        launched = warm_launch(warm_instance.get_run_by_id(run.run_id))
        assert launched is not None and launched.host == socket.gethostname()
        # A worker removes its record when its run ends.
        assert read_record(warm_instance, run.run_id) is None
        # Forked by the warm process, not by this one.
        assert seen["ppid"] not in (os.getpid(), seen["pid"])
        assert f"Started process for run (pid: {seen['pid']})" in "\n".join(
            e.message for e in warm_instance.all_logs(run.run_id) if e.message
        )


def test_terminating_a_run_interrupts_its_worker_and_cancels_the_run(warm_instance, tmp_path):
    out = tmp_path / "out.json"
    run = launch(warm_instance, out, sleep_s=120)
    wait_for(out.exists, timeout=120, what="the worker to run its op")
    assert warm_instance.run_launcher.terminate(run.run_id)
    wait_for(
        lambda: status(warm_instance, run.run_id) == DagsterRunStatus.CANCELED,
        timeout=60,
        what="the run to be cancelled",
        on_timeout=lambda: str(status(warm_instance, run.run_id)),
    )
    assert not warm_instance.run_launcher.terminate(run.run_id)  # finished: nothing to do


def test_a_killed_worker_is_failed_by_the_health_check(warm_instance, tmp_path):
    out = tmp_path / "out.json"
    run = launch(warm_instance, out, sleep_s=120)
    wait_for(out.exists, timeout=120, what="the worker to run its op")
    launched = warm_instance.get_run_by_id(run.run_id)
    launcher = warm_instance.run_launcher
    assert launcher.check_run_worker_health(launched).status == WorkerStatus.RUNNING
    pid = json.loads(out.read_text())["pid"]
    # The worker recorded itself: its pid and its process's start, as /proc has it.
    record = read_record(warm_instance, run.run_id)
    assert record is not None and record.pid == pid
    state = process_state(pid)
    assert state is not None and record.start_ticks == state.start_ticks
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (state := process_state(pid)) is None or state.zombie,
        timeout=30,
        what="the killed worker to be gone",
    )
    result = launcher.check_run_worker_health(launched)
    assert result.status == WorkerStatus.FAILED
    assert f"run worker process {pid} is gone" in (result.msg or ""), result.msg
    assert "Spark Connect server" in (result.msg or ""), result.msg  # none here: nothing to stop
    assert read_record(warm_instance, run.run_id) is None  # the failed run's record is removed
    # What run monitoring does next (and the instance's teardown waits for).
    warm_instance.report_run_failed(launched)


@pytest.fixture
def cold_forkserver(monkeypatch):
    """The warm process not started yet, and slow to start: it imports a preload
    that takes longer than the old check's slack (slow_preload.py), so the first
    worker is forked seconds after the launcher asked for it."""
    # multiprocessing keeps one forkserver per process: stop the one earlier tests
    # started (with the method CPython's own tests use).
    forkserver: Any = multiprocessing.forkserver._forkserver
    forkserver._stop()
    monkeypatch.setattr(
        run_worker,
        "PRELOAD",
        (*run_worker.PRELOAD, "fanout_dagster_tests.single_host.slow_preload"),
    )
    yield
    forkserver._stop()  # the next tests get a normal one


def test_a_worker_forked_late_by_a_cold_forkserver_is_running(
    warm_instance, tmp_path, cold_forkserver
):
    """The first run of a fresh daemon: its worker is forked only once the warm
    process has imported its preload. Until issue 19, the check compared the
    worker's start with a time taken before the fork plus 2 s, and failed this
    live run ("the pid now belongs to a process started after the worker reported")."""
    out = tmp_path / "out.json"
    asked = time.monotonic()
    run = launch(warm_instance, out, sleep_s=120)
    assert time.monotonic() - asked > 3.0  # the fork really came late
    wait_for(out.exists, timeout=120, what="the worker to run its op")
    launched = warm_instance.get_run_by_id(run.run_id)
    result = warm_instance.run_launcher.check_run_worker_health(launched)
    assert result.status == WorkerStatus.RUNNING, result.msg
    assert warm_instance.run_launcher.terminate(run.run_id)
    wait_for(
        lambda: status(warm_instance, run.run_id) == DagsterRunStatus.CANCELED,
        timeout=60,
        what="the run to be cancelled",
    )


class FakeClock:
    """The checker's monotonic clock, moved by the test: a silence of any length
    is had without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def checker_elsewhere(instance: DagsterInstance) -> tuple[WarmRunLauncher, FakeClock]:
    """The health check of a daemon in a recreated container: another host name
    and pid namespace than the worker's (the pid namespace id is one no process of
    this machine has)."""
    checker = WarmRunLauncher(heartbeat_interval_seconds=0.2, heartbeat_timeout_seconds=30)
    checker.register_instance(instance)
    here = checker._machine
    checker._machine = Machine("recreated-container", here.boot_id, "pid:[1]")
    clock = FakeClock()
    checker._clock = clock
    return checker, clock


def beat_of(instance: DagsterInstance, run_id: str) -> int:
    record = read_record(instance, run_id)
    assert record is not None
    return record.beat


def wait_for_next_beat(instance: DagsterInstance, run_id: str) -> None:
    beat = beat_of(instance, run_id)
    wait_for(
        lambda: beat_of(instance, run_id) > beat, timeout=60, what="the next beat", interval=0.05
    )


def test_a_worker_out_of_sight_is_failed_once_its_heartbeat_stops_and_never_while_it_beats(
    beating_instance, tmp_path
):
    """Issue 20: a recreated container (new host name) left runs STARTED forever:
    a worker of another host was never checked. A checker that cannot see the
    worker's process judges it by its heartbeat, on its own clock: a worker that
    beats stays RUNNING however long it runs; one that stopped beating is failed
    once the limit has passed."""
    out = tmp_path / "out.json"
    run = launch(beating_instance, out, sleep_s=300)
    wait_for(out.exists, timeout=120, what="the worker to run its op")
    launched = beating_instance.get_run_by_id(run.run_id)
    pid = json.loads(out.read_text())["pid"]
    checker, clock = checker_elsewhere(beating_instance)

    for _ in range(3):  # far past the limit each time, but it beat meanwhile
        wait_for_next_beat(beating_instance, run.run_id)
        clock.now += 1000
        result = checker.check_run_worker_health(launched)
        assert result.status == WorkerStatus.RUNNING, result.msg

    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (state := process_state(pid)) is None or state.zombie,
        timeout=30,
        what="the killed worker to be gone",
    )
    # No time has passed on the checker's clock since it last heard a beat.
    assert checker.check_run_worker_health(launched).status == WorkerStatus.RUNNING
    clock.now += 29
    assert checker.check_run_worker_health(launched).status == WorkerStatus.RUNNING
    clock.now += 1
    result = checker.check_run_worker_health(launched)
    assert result.status == WorkerStatus.FAILED, result.msg
    assert "is gone: no heartbeat for 30 s" in (result.msg or "")
    assert socket.gethostname() in (result.msg or "")  # names the host the worker was on
    assert read_record(beating_instance, run.run_id) is None
    beating_instance.report_run_failed(launched)


# A daemon in a container of its own (new pid and UTS namespaces: its own pids
# and host name): it launches one run, then waits to be killed with its container.
OLD_CONTAINER = """
import signal, socket, sys
from pathlib import Path
from dagster import DagsterInstance
from dagster._serdes import deserialize_value
from fanout_dagster_tests.single_host.test_warm_run_launcher import launch

socket.sethostname("old-container")
with DagsterInstance.from_ref(deserialize_value(sys.argv[1])) as instance:
    launch(instance, Path(sys.argv[2]), sleep_s=600)
    signal.pause()
"""


def namespaces_available() -> bool:
    probe = subprocess.run(
        ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


def processes_in(pid_ns: str) -> list[int]:
    """The processes of this machine in a pid namespace (as the root namespace sees them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == pid_ns:
                    found.append(int(entry.name))
    return found


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_the_runs_of_a_lost_container_are_failed_by_its_successor(beating_instance, tmp_path):
    """Issue 20, as it happens: the daemon's container is recreated (new host
    name, new pid namespace) and its runs were left STARTED forever. Here the
    first container is real (unshare: pid and UTS namespaces), its daemon forks
    the worker there; this process is the new container's daemon. While the
    old container lives, its worker beats and is never failed; once the
    container is gone, its run is failed after the heartbeat timeout."""
    if not namespaces_available():
        pytest.skip("cannot create pid and UTS namespaces here (needs CAP_SYS_ADMIN)")
    from dagster._serdes import serialize_value

    out = tmp_path / "out.json"
    container = subprocess.Popen(
        [
            "unshare", "--pid", "--uts", "--mount-proc", "--kill-child",
            sys.executable, "-c", OLD_CONTAINER,
            serialize_value(beating_instance.get_ref()), str(out),
        ],
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(out.exists, timeout=180, what="the old container's worker to run its op")
        [run] = beating_instance.get_runs()
        record = read_record(beating_instance, run.run_id)
        assert record is not None and record.host == "old-container"
        here = beating_instance.run_launcher._machine
        assert record.pid_ns != here.pid_ns and record.boot_id == here.boot_id
        checker = beating_instance.run_launcher
        clock = FakeClock()
        checker._clock = clock
        for _ in range(3):  # far past the limit each time, but it beat meanwhile
            wait_for_next_beat(beating_instance, run.run_id)
            clock.now += 1000
            result = checker.check_run_worker_health(run)
            assert result.status == WorkerStatus.RUNNING, result.msg

        # The container goes, with every process in it.
        os.killpg(container.pid, signal.SIGKILL)
        container.wait()
        wait_for(
            lambda: not processes_in(str(record.pid_ns)),
            timeout=60,
            what="the old container's processes to be gone",
        )
        assert checker.check_run_worker_health(run).status == WorkerStatus.RUNNING
        clock.now += 30
        result = checker.check_run_worker_health(run)
        assert result.status == WorkerStatus.FAILED, result.msg
        assert "on host old-container is gone: no heartbeat for 30 s" in (result.msg or "")
        beating_instance.report_run_failed(run)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(container.pid, signal.SIGKILL)
        container.wait()


def test_a_worker_out_of_sight_is_not_interrupted_from_here(beating_instance, tmp_path):
    out = tmp_path / "out.json"
    run = launch(beating_instance, out, sleep_s=120)
    wait_for(out.exists, timeout=120, what="the worker to run its op")
    checker, _clock = checker_elsewhere(beating_instance)
    assert not checker.terminate(run.run_id)
    assert f"Cannot interrupt the run's worker: it runs on host {socket.gethostname()}" in (
        "\n".join(e.message or "" for e in beating_instance.all_logs(run.run_id))
    )
    # Terminated from its own host, it is.
    assert beating_instance.run_launcher.terminate(run.run_id)
    wait_for(
        lambda: status(beating_instance, run.run_id) == DagsterRunStatus.CANCELED,
        timeout=60,
        what="the run to be cancelled",
    )


def test_a_code_location_on_another_python_is_launched_on_its_code_server(warm_instance):
    """Its run goes the DefaultRunLauncher's way, which needs the workspace's code server."""
    recon = reconstructable(warm_job)
    origin = recon.get_python_origin()
    other = origin._replace(
        repository_origin=origin.repository_origin._replace(executable_path="/opt/other/python")
    )
    run = warm_instance.create_run_for_job(warm_job, job_code_origin=other)
    assert other.repository_origin.executable_path != sys.executable
    with pytest.raises(Exception, match="workspace"):
        warm_instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    assert WARM_WORKER_TAG not in warm_instance.get_run_by_id(run.run_id).tags
