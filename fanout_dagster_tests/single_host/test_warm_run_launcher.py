"""WarmRunLauncher on a real instance: workers forked from its warm process run
real runs, with the launching process's environment, can be terminated, and are
checked by their pid."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, instance_for_test, reconstructable
from dagster._core.launcher import LaunchRunContext, WorkerStatus

from fanout_dagster.single_host.run_launcher import WARM_WORKER_TAG, WarmRunLauncher, warm_worker
from fanout_dagster_tests.e2e.dagster_processes import wait_for
from fanout_dagster_tests.single_host.warm_jobs import warm_job

LAUNCHER = {"module": "fanout_dagster.single_host.run_launcher", "class": "WarmRunLauncher"}


@pytest.fixture
def warm_instance():
    with instance_for_test(overrides={"run_launcher": LAUNCHER}) as instance:
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
        worker = warm_worker(warm_instance.get_run_by_id(run.run_id))
        assert worker is not None and worker.pid == seen["pid"] and worker.on_this_host
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
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: launcher.check_run_worker_health(launched).status == WorkerStatus.FAILED,
        timeout=30,
        what="the killed worker to be reported gone",
    )
    assert f"run worker process {pid} is gone" in (
        launcher.check_run_worker_health(launched).msg or ""
    )
    # What run monitoring does next (and the instance's teardown waits for).
    warm_instance.report_run_failed(launched)


def test_a_worker_on_another_host_is_not_checked(warm_instance):
    run = warm_instance.create_run_for_job(
        warm_job,
        tags={
            WARM_WORKER_TAG: json.dumps(
                {"host": "elsewhere.internal", "pid": 1, "forked_at": time.time()}
            )
        },
    )
    result = warm_instance.run_launcher.check_run_worker_health(run)
    assert result.status == WorkerStatus.RUNNING and "elsewhere.internal" in (result.msg or "")


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
